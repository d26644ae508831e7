"""Engine configuration (the `engines:` block of a pipeline YAML) and the factory that builds engines."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from engines.base import Sampling
from engines.cache import CachedEngine, ResponseCache


class LlamaCppConfig(BaseModel):
    """llama.cpp on the CPU. With no `model_path`, the embedded SmolLM2-135M-Instruct."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["llama_cpp"] = "llama_cpp"
    model_path: Path | None = None
    n_ctx: int = Field(4096, ge=256)
    n_threads: int | None = Field(None, ge=1)


# A discriminated union on `kind` as more engines arrive (vllm, openai_http, transformers).
EngineConfig = LlamaCppConfig


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
    """Fail fast (EngineUnavailable) when the engine cannot run here; loads no model."""
    from engines import llama_cpp

    llama_cpp.check_available(cfg.model_path)


def build_engine(cfg: EngineConfig, cache: ResponseCache | None) -> CachedEngine:
    from engines import llama_cpp

    return CachedEngine(
        lambda: llama_cpp.LlamaCppEngine(cfg.model_path, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads),
        identity=llama_cpp.identity(cfg.model_path),
        model_name=llama_cpp.model_name(cfg.model_path),
        cache=cache,
    )
