"""The shard worker: runs one stage's function over shards of a run directory, with the stage's engines built
once per worker (a thread, a Ray actor or task) and every answer cached as it arrives."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.pipelines.fingerprint import file_sha256
from curate.pipelines.rundir import (
    ShardWriter,
    StaleWorker,
    atomic_write_json,
    budget_ledger,
    part_name,
    run_token,
    work_folder,
)


def node() -> str | None:
    """The Ray node this worker runs on (None outside Ray): markers record it, so a cluster run shows how a
    stage's shards spread over its nodes."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


def total(counts: dict[str, Any]):
    """One CallCounts of a dict of them (every engine's)."""
    from curate.engines.cache import CallCounts

    return sum(counts.values(), CallCounts())


def streams(capability_sets) -> bool:
    """Every engine of the stage takes calls from many threads into one window (engines/config.py)."""
    sets = list(capability_sets)
    return bool(sets) and all("streams" in caps for caps in sets)


def batches_in_flight(engines, batch_size: int) -> int:
    """Batches of a shard to run at once: enough rows to fill the engines' windows (each row makes at least one
    request) plus one, so a batch's slow tail overlaps the next; 1 for engines that take one call at a time."""
    engines = list(engines)
    if not streams(e.capabilities for e in engines):
        return 1
    want = max(e.window for e in engines)
    return min(128, 1 + -(-want // batch_size))


class ShardWorker:
    """One per actor (or task), so engines load once per worker and serve many shards.

    On engines that stream (HTTP), a shard's batches run in threads, `batches_in_flight` at a time, all feeding
    the engine's one window of requests, so the engine never waits for the slowest request of a batch; a worker
    may also run several shards at once (the runner makes it a threaded actor). Outputs are written in batch
    order either way. Other engines (llama.cpp, vLLM offline, transformers) take one batch at a time."""

    def __init__(self, stage_name: str, stage_id: str, config: dict, engines: dict[str, dict], cache_dir: str | None,
                 run_dir: str, batch_size: int, token: str | None = None, budget: dict | None = None):
        from curate.engines.cache import ResponseCache
        from curate.engines.config import build_engine, parse_engine
        from curate.stages import registry
        from curate.stages.base import StageContext

        self.spec = registry()[stage_name]
        self.config = self.spec.config.model_validate(config)
        self.stage_id = stage_id
        self.run_dir = Path(run_dir)
        self.batch_size = batch_size
        self.token = token
        cache = ResponseCache(cache_dir) if engines or self.spec.uses_model(self.config) else None
        self.engines = {n: build_engine(parse_engine(c), cache) for n, c in engines.items()}
        for engine in self.engines.values():
            engine.run_dir = self.run_dir
        if budget:  # {"limits": [[None | stage id, usd], ...], "prices": {engine: Price as a dict}}
            from curate.engines.budget import Budget, Ledger
            from curate.engines.prices import Price

            ledger = Ledger(budget_ledger(self.run_dir))
            for n, price in budget["prices"].items():
                self.engines[n].budget = Budget(ledger, stage_id, dict(map(tuple, budget["limits"])), Price(**price),
                                                "batch" in self.engines[n].capabilities)
        self.ctx = StageContext(self.engines, cache)
        self.batches_in_flight = batches_in_flight(self.engines.values(), batch_size)
        #: input rows done so far of each shard this worker is running (the driver polls it for progress)
        self.rows_done: dict[int, int] = {}

    def progress(self) -> dict[int, int]:
        return dict(self.rows_done)

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = [self.run_shard(**row) for row in batch.to_pylist()]
        return pa.Table.from_pylist(results)

    def _new_notes(self) -> list[str]:
        cache = self.ctx.calls.cache
        notes = cache.notes if cache is not None else []
        new, self._noted = notes[getattr(self, "_noted", 0):], len(notes)
        return list(new)

    def _counts(self) -> dict[str, Any]:
        """What this thread's requests came to so far, per engine name ("" for reward and embedding models'
        calls), as engines.cache.CallCounts snapshots."""
        return {**{n: e.thread_counts().snapshot() for n, e in self.engines.items()},
                "": self.ctx.calls.counts.snapshot()}

    def _since(self, before: dict[str, Any]) -> dict[str, Any]:
        now = self._counts()
        return {n: now[n] - before[n] for n in now}

    def _process(self, table: pa.Table):
        """One batch through the stage, with what its requests came to per engine (counted in its thread)."""
        before = self._counts()
        result = self.spec.process(table, self.config, self.ctx)
        return result, self._since(before)

    def _batches(self, input: str, offset: int | None):
        """The shard's batches; for a stage that decides globally, each row with `_order`, its position in the
        stage's input (the shard's `offset` + its row number)."""
        src = pq.ParquetFile(input)
        tables = (pa.Table.from_batches([b]) for b in src.iter_batches(batch_size=self.batch_size))
        if src.metadata.num_rows == 0:
            tables = iter([src.schema_arrow.empty_table()])
        for table in tables:
            if offset is not None:
                order = pa.array(np.arange(offset, offset + table.num_rows, dtype=np.int64))
                table, offset = table.append_column("_order", order), offset + table.num_rows
            yield table

    def run_keys(self, shard: int, input: str, fingerprint: str, offset: int) -> dict[str, Any]:
        """A globally deciding stage's first step on one shard: its key rows, to a file of the stage's work
        folder (temp file + rename, then its marker)."""
        start = time.perf_counter()
        folder = work_folder(self.run_dir, self.stage_id) / "keys"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{part_name(shard)}.parquet"
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        writer, rows = None, 0
        before = self._counts()
        try:
            for table in self._batches(input, offset):
                keys = self.spec.decides.keys(table, self.config, self.ctx)
                writer = writer or pq.ParquetWriter(tmp, keys.schema)
                writer.write_table(keys)
                rows += table.num_rows
            if writer is None:  # an empty shard with no batch at all
                raise AssertionError("a shard always yields at least one (possibly empty) batch")
            writer.close()
            os.replace(tmp, target)
        except BaseException:
            if writer is not None:
                writer.close()
            tmp.unlink(missing_ok=True)
            raise
        counts = total(self._since(before))  # an embedding model's calls (semantic dedup), answered or cached
        marker = {"shard": shard, "fingerprint": fingerprint, "rows": rows, "keys": str(target),
                  "sha256": file_sha256(target), "seconds": round(time.perf_counter() - start, 3), "node": node(),
                  "model_calls": counts.calls, "cache_hits": counts.hits}
        atomic_write_json(marker, folder / f"{part_name(shard)}.json")
        return {"shard": shard, "marker": json.dumps(marker)}

    def run_shard(self, shard: int, input: str, fingerprint: str, offset: int | None = None,
                  phase: str = "rows") -> dict[str, Any]:
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        from curate.engines.cache import CallCounts

        if phase == "keys":
            return self.run_keys(shard, input, fingerprint, offset or 0)
        start = time.perf_counter()
        writer = ShardWriter(self.run_dir, self.stage_id, shard, self.spec.name)
        counts: dict[str, CallCounts] = {}
        if self.spec.decides is not None:
            self.ctx.state.setdefault("decisions_path", str(work_folder(self.run_dir, self.stage_id)
                                                            / "decisions.parquet"))
        tables = self._batches(input, offset if self.spec.decides is not None else None)
        # Batches run `batches_in_flight` at a time and a new one starts as soon as any finishes (a straggler in
        # one batch does not hold the others back); outputs are written in batch order, and finished batches
        # wait for an earlier straggler at most 4 windows deep, so memory stays bounded.
        running: dict[Any, int] = {}  # future -> batch number
        finished: dict[int, tuple] = {}  # batch number -> (result, call counts)
        rows_of: dict[int, int] = {}
        next_out = 0

        def collect(futures) -> None:
            nonlocal next_out, counts
            for future in futures:
                finished[running.pop(future)] = future.result()
            while next_out in finished:
                (result, c), rows = finished.pop(next_out), rows_of.pop(next_out)
                writer.add(result, rows)
                counts = {n: counts.get(n, CallCounts()) + c[n] for n in c}
                self.rows_done[shard] = self.rows_done.get(shard, 0) + rows
                next_out += 1

        try:
            with ThreadPoolExecutor(self.batches_in_flight, thread_name_prefix=f"shard{shard}") as pool:
                for n, table in enumerate(tables):
                    rows_of[n] = table.num_rows
                    running[pool.submit(self._process, table)] = n
                    window = self.batches_in_flight
                    while len(running) >= window or (running and len(finished) >= 4 * window):
                        collect(wait(running, return_when=FIRST_COMPLETED)[0])
                collect(wait(running)[0])
        except BaseException:
            for future in running:
                future.cancel()
            writer.abort()
            raise
        finally:
            self.rows_done.pop(shard, None)
        if self.token is not None and run_token(self.run_dir) != self.token:
            writer.abort()
            raise StaleWorker(f"{self.run_dir} is no longer held by the run that started shard {shard}")
        usage = {n: c.usage() for n, c in counts.items() if n and (c.calls or c.hits)}
        counts = total(counts)
        marker = writer.commit(fingerprint, {
            "model_calls": counts.calls,
            "cache_hits": counts.hits,
            # failed requests (model or cache), the transient ones among them (the shard is redone by the next
            # run), and the first error, for the message when a stage fails on its error rate
            "failed_calls": counts.failed,
            "transient_failures": counts.transient,
            "first_error": counts.first_error,
            # calls, cache hits and tokens per engine (what the manifest prices)
            **({"usage": usage} if usage else {}),
            "seconds": round(time.perf_counter() - start, 3),
            "node": node(),
            # what the response cache had to say (moved aside as damaged, an unreadable entry), once per worker
            **({"notes": notes} if (notes := self._new_notes()) else {}),
        })
        return {"shard": shard, "marker": json.dumps(marker)}
