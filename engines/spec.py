"""What every engine shares, and the contract an engine module fulfils (`EngineSpec`); imports no engine.

An engine is one module of `curate.engines` that defines its config class (a subclass of `EngineBlock`, the
block of the pipeline YAML's `engines:` that names it by `kind`) and exports `ENGINE = EngineSpec(...)`; the
registry (`curate.engines.registry`) lists the modules, and `engines/config.py` builds everything else from it:
the YAML union, `check_engine`, `build_engine`, `shard_driver`. See docs/engines.md.

This module stays light: an engine module imports it at its top, and `curate validate` imports every engine
module, so neither may import a backend (llama_cpp, vllm, torch, transformers, ray, httpx) outside a function.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.engines.base import Sampling

if TYPE_CHECKING:
    from curate.engines.cache import CachedEngine, ResponseCache

#: key names that hold credentials, wherever they sit in an engine block (extra_body, headers, engine_args, ...)
SECRET_KEY = re.compile(r"^(key|authorization|bearer|credentials?)$|(^|[-_])(api[-_]?key|token|secret|password|passwd)$",
                        re.I)
#: values that look like credentials whatever their key (OpenAI, Anthropic, HF, GitHub tokens; bearer headers)
SECRET_VALUE = re.compile(r"^(sk-|sk_|hf_|ghp_|gho_|xox[bp]-|AKIA)|^bearer\s", re.I)
#: user:password@ in a URL
URL_USERINFO = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@]+@", re.I)


def secret_paths(data: Any, path: str = "") -> list[str]:
    """Where a block of YAML data holds something that looks like a credential (the paths, never the values)."""
    found: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            here = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and SECRET_KEY.search(k) and v not in (None, ""):
                found.append(here)
            else:
                found += secret_paths(v, here)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found += secret_paths(v, f"{path}[{i}]")
    elif isinstance(data, str) and (SECRET_VALUE.match(data.strip()) or URL_USERINFO.match(data.strip())):
        found.append(path or "(value)")
    return found


class EngineBlock(BaseModel):
    """What every engine config shares: no credentials in the YAML (it is copied into every run directory)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_secrets_in_yaml(cls, data: Any) -> Any:
        found = secret_paths(data)
        if found:
            raise ValueError(f"{', '.join(found)}: looks like a credential. API keys and passwords never go in the "
                             "pipeline YAML (it is copied into the run directory): put the key in an environment "
                             "variable and name it with api_key_env (or headers_env for a header)")
        return data

    def capabilities(self) -> frozenset[str]:
        """What this block's engine can do, as configured (names from CAPABILITIES); none unless overridden."""
        return frozenset()


#: what an engine can do, asked by the runner and `curate validate` (never by engine kind):
#:   streams   many threads share one window of requests in flight: a worker runs shards and batches at once
#:   gathered  calls of many shards are sent together (Ray Data LLM processors): the runner runs shards in threads
#:   grammar   constrained decoding of a judge's output grammar
#:   logprobs  scores a response's log-probability (reference_margin)
#:   images    reads images in the messages (OpenAI-style image_url content parts: caption, image judges)
#:   batch     sends calls through a provider's batch API: priced at the batch price (engines/prices.py)
CAPABILITIES = ("streams", "gathered", "grammar", "logprobs", "images", "batch")


def window(cfg) -> int:
    """Requests the engine wants outstanding to stay full."""
    return cfg.window() if hasattr(cfg, "window") else 1


class SamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    seed: int = 0

    def sampling(self, **overrides) -> Sampling:
        own = self.model_dump(include=set(SamplingConfig.model_fields))
        return Sampling(**{**own, **overrides})


def model_identity(model: str) -> str:
    """A local model folder is named by its folder and a hash of its config and weights' sizes (two folders of
    the same name do not share cache entries); anything else by its id."""
    import hashlib

    path = Path(model).expanduser()
    if not (path / "config.json").exists():
        return model
    sizes = sorted((p.name, p.stat().st_size) for p in path.glob("*.safetensors"))
    digest = hashlib.sha256((path / "config.json").read_bytes() + repr(sizes).encode()).hexdigest()[:12]
    return f"{path.name}@{digest}"


#: the runner's shard driver for "gathered" engines: (shards to run, the worker, wave size) -> each shard's marker
ShardDriver = Callable[..., Iterator[dict]]


@dataclass(frozen=True)
class EngineSpec:
    """One engine kind, as its module exports it (`ENGINE = EngineSpec(...)`).

    kind          the `kind:` of its YAML block; its config class's `kind` field defaults to it
    config        the config class (an EngineBlock with `kind: Literal["<kind>"] = "<kind>"`); its
                  `capabilities()` says what a block can do as configured, and an optional `window()` how many
                  requests it wants outstanding (1 without)
    build         (config, response cache or None) -> CachedEngine; loads no model (CachedEngine makes the engine
                  on the first cache miss). Its `identity` dict keys the response cache: change it and every
                  cached answer of the kind misses
    check         (config) -> None, raising EngineUnavailable (with the install line) when the engine cannot run
                  here; loads no model, calls no server (`curate validate`)
    capabilities  every capability the kind can offer under some config (a subset of CAPABILITIES); a block's
                  `capabilities()` never claims more
    shard_driver  for a kind that can be "gathered": the runner's driver that runs a stage's shards together
    """

    kind: str
    config: type[EngineBlock]
    build: Callable[[Any, ResponseCache | None], CachedEngine]
    check: Callable[[Any], None]
    capabilities: frozenset[str] = frozenset()
    shard_driver: ShardDriver | None = None

    def __post_init__(self) -> None:
        field = self.config.model_fields.get("kind")
        if field is None or field.default != self.kind:
            raise ValueError(f"engine {self.kind!r}: {self.config.__name__} needs the field "
                             f"kind: Literal[{self.kind!r}] = {self.kind!r}")
        object.__setattr__(self, "capabilities", frozenset(self.capabilities))
        unknown = sorted(self.capabilities - set(CAPABILITIES))
        if unknown:
            raise ValueError(f"engine {self.kind!r}: unknown capabilities {unknown}; known: {', '.join(CAPABILITIES)}")
        if ("gathered" in self.capabilities) != (self.shard_driver is not None):
            raise ValueError(f"engine {self.kind!r}: a 'gathered' engine needs a shard_driver, and only it has one")
