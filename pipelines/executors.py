"""Where a stage's shards run: in this process (a small local stage; a stage on a provider's batch API), on a pool
of Ray actors (model stages: engines load once per actor), as Ray tasks (pure stages on a cluster), or by an
engine that drives the shards itself (ray_llm). One function picks the strategy; each strategy yields shard
markers as shards finish."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from curate.engines.base import usable_cpus
from curate.pipelines.rundir import run_token
from curate.pipelines.worker import ShardWorker, streams

if TYPE_CHECKING:
    from curate.pipelines.runner import Progress, StagePlan
from curate.pipelines.config import Pipeline, StageEntry

#: shards of a stage on a batch engine that wait on the provider at once (their requests share provider batches)
BATCH_SHARDS = 8


def local_run(address: str | None) -> bool:
    """No Ray cluster was asked for (no --address, no RAY_ADDRESS) and none is running in this process."""
    import sys

    ray = sys.modules.get("ray")
    return not (address or os.environ.get("RAY_ADDRESS") or (ray is not None and ray.is_initialized()))


def _pure_shards(batch: pa.Table, **worker_kwargs) -> pa.Table:
    return ShardWorker(**worker_kwargs)(batch)


def _driver_shards(todo: list[dict], worker_kwargs: dict, at_once: int, running_rows=lambda rows: None):
    """Run shards in this process on one worker, `at_once` at a time (threads, for streaming engines); yields
    each shard's marker as it completes. The threads are daemons: a failed stage does not wait for a shard still
    running before the run can end (what it wrote is temp files, and its marker never comes)."""
    import queue
    import threading

    worker = ShardWorker(**worker_kwargs)
    results: queue.Queue = queue.Queue()
    pending = list(todo)
    running = 0

    def run(item: dict) -> None:
        try:
            results.put((True, worker.run_shard(**item)))
        except BaseException as exc:  # handed to the driver loop, which raises it
            results.put((False, exc))

    def start() -> None:
        nonlocal running
        threading.Thread(target=run, args=(pending.pop(0),), daemon=True, name="curate-shard").start()
        running += 1

    while pending and running < at_once:
        start()
    while running:
        try:
            ok, value = results.get(timeout=1.0)
        except queue.Empty:
            running_rows(sum(worker.progress().values()))
            continue
        running -= 1
        if not ok:
            raise value
        yield json.loads(value["marker"])
        if pending:
            start()


def _actor_shards(todo: list[dict], worker_kwargs: dict, actors: int, shards_per_actor: int, num_cpus: float,
                  running_rows=lambda rows: None):
    """Run shards on a pool of long-lived Ray actors (engines and stage state load once per actor), handing each
    actor its next shard as soon as one of its own finishes; yields each shard's marker as it completes. With
    `shards_per_actor` > 1 the actors run shards in threads (streaming engines keep one window across shards).
    About once a second the actors are asked how many rows of their running shards are done (`running_rows`),
    so progress moves within large shards; the actors have one thread more than shards for that question."""
    from collections import deque

    import ray

    worker = ray.remote(ShardWorker).options(num_cpus=num_cpus, max_concurrency=shards_per_actor + 1)
    pool = [worker.remote(**worker_kwargs) for _ in range(actors)]
    queue = deque(todo)
    pending: dict[Any, Any] = {}

    def submit(actor) -> None:
        pending[actor.run_shard.remote(**queue.popleft())] = actor

    try:
        for actor in pool:
            for _ in range(shards_per_actor):
                if queue:
                    submit(actor)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                actor = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the shard's own error, not Ray's wrapping of it
                    cause = getattr(exc, "cause", None)
                    raise (cause if isinstance(cause, BaseException) else exc) from None
                except ray.exceptions.RayActorError as exc:  # the actor's process died (a signal, OOM, a node)
                    raise WorkerDied.of(worker_kwargs, exc) from None
                yield json.loads(result["marker"])
                if queue:
                    submit(actor)
            if not ready and pending:
                running_rows(sum(sum(d.values()) for d in ray.get([a.progress.remote() for a in pool])))
    finally:
        for actor in pool:
            ray.kill(actor)


class WorkerDied(RuntimeError):
    """A stage's worker process died under it (a native crash in an engine, the OOM killer, a lost node)."""

    @classmethod
    def of(cls, worker_kwargs: dict, exc: BaseException) -> "WorkerDied":
        engines = ", ".join(f"{n} ({c.get('kind', 'llama_cpp')})" for n, c in worker_kwargs["engines"].items())
        detail = " ".join(str(exc).split())  # Ray's message spans lines; its first sentences say what it knows
        where = f"running engine {engines}" if engines else "(no model engine)"
        return cls(f"stage {worker_kwargs['stage_id']}: its Ray worker process {where} died: {detail[:300]}")


def init_ray(address: str | None) -> None:
    import logging

    import ray

    if ray.is_initialized():
        return
    # "local": a run without --address (or RAY_ADDRESS) starts its own Ray, never joins whatever cluster a
    # `ray start` on this machine left in /tmp/ray (Ray's default for an address of None)
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = dict(ignore_reinit_error=True, log_to_driver=False, logging_level=logging.ERROR)
    if address == "local":
        kwargs |= dict(include_dashboard=False, num_cpus=usable_cpus())
    ray.init(address=address, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def execute(st: StageEntry, pipeline: Pipeline, plan: StagePlan, run_dir: Path, progress: Progress,
             address: str | None = None):
    """Run the plan's shards where the stage's engines want them; yields each shard's marker as it completes.

    On a local run a stage whose work fits one worker (a model stage on one engine instance, the default; a
    pure stage on a few thousand rows) runs in this process: Ray starts only when a stage
    needs more than one worker, so a small pipeline pays for no cluster it does not use. With --address (or
    RAY_ADDRESS) every stage runs on the cluster."""
    from curate.engines.config import parse_engine, shard_driver
    from curate.pipelines.costs import worker_budget

    todo = plan.todo
    engine_cfgs = [parse_engine(c) for c in plan.engines.values()]
    model_stage = bool(engine_cfgs) or st.spec.uses_model(st.config)
    local = local_run(address)
    if local:
        cpus = usable_cpus()
    else:
        init_ray(address)
        import ray

        cpus = max(1, int(ray.available_resources().get("CPU", usable_cpus())))
    size = st.run.concurrency or (1 if model_stage else max(1, min(len(todo), cpus)))
    size = min(size, len(todo))
    worker_kwargs = dict(
        stage_name=st.name, stage_id=st.id, config=plan.config, engines=plan.engines,
        cache_dir=str(pipeline.cache_dir) if pipeline.cache_dir else None, run_dir=str(run_dir),
        batch_size=st.run.batch_size or st.spec.batch_rows(st.config) or (64 if model_stage else 1 << 20),
        token=run_token(run_dir),
        budget=worker_budget(st, pipeline, list(plan.engines)),
    )
    drivers = {shard_driver(c) for c in engine_cfgs} - {None}
    streaming = streams(c.capabilities() for c in engine_cfgs)
    running_rows = functools.partial(progress.rows_running, st.id)
    if any("batch" in c.capabilities() for c in engine_cfgs):
        # a provider's batch API answers in minutes to hours: the shards wait in threads of this process, where
        # one engine per block gathers their requests into provider batches and keeps the run's batch journal
        return _driver_shards(todo, worker_kwargs, st.run.concurrency or BATCH_SHARDS, running_rows)
    if drivers:  # an engine that runs the stage's shards itself (ray_llm: shards in driver threads)
        init_ray(address)
        (driver,) = drivers
        return driver(todo, ShardWorker(**worker_kwargs), st.run.concurrency)
    per_actor = 2 if streaming else 1  # the next shard starts under the tail
    # A local pure stage runs in this process, a thread per CPU: its work is columnar (Arrow, polars, numpy
    # release the GIL), and Ray Data's tasks cost more than they buy on one machine (scale_pure.py at 100k rows:
    # 85 s through Ray tasks, 45 s in the driver). A pure stage whose `concurrency` the user set gets that many
    # Ray workers, whatever its size.
    if local and not model_stage and st.run.concurrency is None:
        return _driver_shards(todo, worker_kwargs, cpus, running_rows)
    if local and size == 1:
        return _driver_shards(todo, worker_kwargs, per_actor, running_rows)
    init_ray(address)
    import ray

    if model_stage:  # an actor pool: engines live as long as the actor
        return _actor_shards(todo, worker_kwargs, size, per_actor, st.run.num_cpus, running_rows)
    # pure stages run as plain tasks on Ray's already-started workers
    ray.data.DataContext.get_current().execution_options.preserve_order = False
    ds = ray.data.from_items(todo, override_num_blocks=len(todo))
    ds = ds.map_batches(_pure_shards, fn_kwargs=worker_kwargs, batch_size=1, batch_format="pyarrow",
                        compute=ray.data.TaskPoolStrategy(size=size), num_cpus=st.run.num_cpus)
    return (json.loads(row["marker"]) for row in ds.iter_rows())
