"""Engines register like stages: one module per engine exporting `ENGINE`, listed once in `engines.registry()`;
`engines/config.py` builds the YAML union, checks and builds from it. The cache identities of the built-in
engines are pinned here: changing one makes every user's response cache miss."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from curate.engines import registry
from curate.engines.config import ENGINES, build_engine, parse_engine, shard_driver
from curate.engines.spec import CAPABILITIES, EngineBlock, EngineSpec

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent


def test_every_engine_module_registers_its_own_config_class():
    specs = registry()
    assert list(specs) == ["llama_cpp", "openai_http", "openai_batch", "anthropic_batch", "vllm", "transformers",
                           "ray_llm"]
    for kind, spec in specs.items():
        assert isinstance(spec, EngineSpec) and spec.kind == kind
        assert issubclass(spec.config, EngineBlock)
        assert sys.modules[spec.config.__module__].ENGINE is spec  # the config class lives beside its ENGINE
        assert spec.capabilities <= set(CAPABILITIES)
    assert ENGINES == specs


def test_config_names_no_engine_module():
    """Adding an engine touches its module and the registry, not engines/config.py."""
    text = (ROOT / "engines" / "config.py").read_text()
    assert not re.search(r"import .*\b(llama_cpp|openai_http|vllm_offline|transformers_engine|ray_llm)\b", text)
    for spec in registry().values():
        assert spec.config.__name__ not in text  # no branch per engine


@pytest.mark.parametrize("block", [
    {}, {"kind": "llama_cpp", "mmproj": "/m.gguf"},
    {"kind": "openai_http", "base_url": "http://x/v1", "model": "m", "grammar_param": "grammar", "images": True},
    {"kind": "vllm", "model": "m", "images": True}, {"kind": "vllm", "model": "m", "grammar": False},
    {"kind": "transformers", "model": "m"}, {"kind": "ray_llm", "model": "m"},
])
def test_a_block_claims_no_capability_its_kind_does_not_declare(block):
    cfg = parse_engine(block)
    assert cfg.capabilities() <= ENGINES[cfg.kind].capabilities
    assert (shard_driver(cfg) is not None) == ("gathered" in cfg.capabilities())


def test_a_spec_that_contradicts_its_config_is_refused():
    llama = ENGINES["llama_cpp"]
    with pytest.raises(ValueError, match="kind: Literal"):
        EngineSpec(kind="other", config=llama.config, build=llama.build, check=llama.check)
    with pytest.raises(ValueError, match="unknown capabilities"):
        EngineSpec(kind="llama_cpp", config=llama.config, build=llama.build, check=llama.check, capabilities={"fly"})
    with pytest.raises(ValueError, match="shard_driver"):
        EngineSpec(kind="llama_cpp", config=llama.config, build=llama.build, check=llama.check,
                   capabilities={"gathered"})


def test_cache_identities_do_not_change(tmp_path):
    folder = tmp_path / "Qwen"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model.safetensors").write_bytes(b"0" * 10)
    model = "Qwen@4e0c92993215"  # sha256(config.json + repr([(name, size) of *.safetensors]))[:12]

    def identity(block):
        return build_engine(parse_engine(block), None).identity

    assert identity({"kind": "openai_http", "base_url": "http://h:8000/v1/", "model": "m", "concurrency": 3}) == {
        "kind": "openai_http", "base_url": "http://h:8000/v1", "model": "m"}
    vllm = {"kind": "vllm", "model": model, "dtype": "auto", "grammar": True}
    assert identity({"kind": "vllm", "model": str(folder), "max_batch": 8}) == vllm
    assert identity({"kind": "ray_llm", "model": str(folder), "concurrency": 4}) == vllm
    assert identity({"kind": "vllm", "model": "org/id", "grammar": False}) == {
        "kind": "vllm", "model": "org/id", "dtype": "auto", "grammar": False}
    assert identity({"kind": "transformers", "model": str(folder), "dtype": "bfloat16", "batch_size": 2}) == {
        "kind": "transformers", "model": model, "dtype": "bfloat16"}
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"1" * 7)
    engine = build_engine(parse_engine({"model_path": str(gguf), "n_ctx": 512}), None)
    assert engine.identity == {"kind": "llama_cpp", "model": "tiny.gguf", "bytes": 7}
    assert engine.model_name == "tiny"


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def test_the_documented_echo_engine_is_one_module_and_one_registry_line(tmp_path):
    """docs/engines.md's example, registered in a fresh interpreter: parsed from YAML, validated, built, asked."""
    module = _python_blocks((ROOT / "docs" / "engines.md").read_text())[0]
    assert "ENGINE = EngineSpec(" in module
    (tmp_path / "echo.py").write_text(module)
    probe = f"""
import importlib.util, sys
import curate.engines as engines
spec = importlib.util.spec_from_file_location("curate.engines.echo", {str(tmp_path / "echo.py")!r})
echo = importlib.util.module_from_spec(spec)
sys.modules["curate.engines.echo"] = echo
spec.loader.exec_module(echo)
builtin = engines.registry
engines.registry = lambda: {{**builtin(), "echo": echo.ENGINE}}   # the one line in the registry

from curate.engines.base import Request, Sampling
from curate.engines.config import build_engine, check_engine, parse_engine
from curate.pipelines.config import ConfigError, Pipeline, parse_pipeline

cfg = parse_engine({{"kind": "echo", "shout": True}})
check_engine(cfg)
engine = build_engine(cfg, None)
assert engine.capabilities == {{"streams"}} and engine.window == 4, (engine.capabilities, engine.window)
out = engine.complete([Request([{{"role": "user", "content": "abc"}}]),
                       Request([{{"role": "user", "content": "abcdef"}}], Sampling(max_tokens=2))])
assert [(c.text, c.finish_reason) for c in out] == [("CBA", "stop"), ("FE", "length")], out
assert engine.identity == {{"kind": "echo", "shout": True}}
pipeline = Pipeline.model_validate({{"name": "x", "stages": [], "engines": {{"e": {{"kind": "echo"}}}}}})
assert isinstance(pipeline.engines["e"], echo.EchoConfig)
for bad, want in [({{"kind": "echo", "shuot": 1}}, "engines.default.echo.shuot: unknown key 'shuot'"),
                  ({{"kind": "echo", "token": "abc"}}, "token: looks like a credential"),
                  ({{"kind": "ecko"}}, "'ecko' found using _kind() does not match any of the expected tags: "
                                       "'llama_cpp', 'openai_http', 'openai_batch', 'anthropic_batch', 'vllm', 'transformers', "
                                           "'ray_llm', 'echo'")]:
    try:
        parse_pipeline({{"name": "x", "engines": {{"default": bad}}, "stages": [{{"load": {{"path": "p.jsonl"}}}}]}},
                       base_dir=".")
    except ConfigError as exc:
        assert want in str(exc), str(exc)
    else:
        raise AssertionError(bad)
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
