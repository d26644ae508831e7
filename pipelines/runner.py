"""The runner: a pipeline's stages in order, each planned (which shards are done, which to run), executed
(pipelines/executors.py) and accounted, into a run directory (pipelines/rundir.py).

Shards keep their number through the pipeline (shard 3 of judge is made from shard 3 of generate). A shard is
done when its marker holds the fingerprint of the stage's code, config, engines and input shard
(pipelines/fingerprint.py); a rerun into the same run directory skips done shards. When the last stage is done,
the run's summaries (RUN_SUMMARIES: what the judges did) go into the manifest.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from curate.pipelines import global_stage
from curate.pipelines.config import Pipeline, StageEntry
from curate.pipelines.costs import add_usage, run_cost, stage_cost
from curate.pipelines.executors import execute
from curate.pipelines.fingerprint import (
    code_version,
    fingerprint,
    stage_code_version,
    stage_inputs,
)
from curate.pipelines.global_stage import offsets
from curate.pipelines.rundir import (
    ShardWriter,
    StaleWorker,
    atomic_write_json,
    intact,
    part_name,
    prune_stage,
    read_marker,
    run_dir_lock,
)

#: manifest key -> `module:function(run_dir, manifest) -> dict`, computed when the last stage is done; an empty
#: result leaves the key out
RUN_SUMMARIES = {"judges": "curate.judges.stats:run_summary"}


@dataclass
class StageReport:
    id: str
    stage: str
    shards: int = 0
    shards_skipped: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"in": 0, "out": 0, "rows_out": 0, "dropped": 0,
                                                              "quarantined": 0})
    model_calls: int = 0
    cache_hits: int = 0
    failed_calls: int = 0
    transient_failures: int = 0
    seconds: float = 0.0
    shard_sha256: dict[str, str | None] = field(default_factory=dict)
    #: what the stage measured over its shards (summed), and the figures its spec derives from them
    stats: dict[str, float] = field(default_factory=dict)
    summarize: Any = None
    #: done shards found damaged when the stage was planned, and so redone (one line each)
    damaged: list[str] = field(default_factory=list)
    #: what the workers' response cache reported (a damaged file moved aside, unreadable entries)
    notes: list[str] = field(default_factory=list)
    #: a globally deciding stage's decision step: rows it drops, key shards, key shards per Ray node
    decision: dict[str, Any] = field(default_factory=dict)
    #: shards run per Ray node (a cluster run: how the stage's work spread)
    nodes: dict[str, int] = field(default_factory=dict)
    #: calls, cache hits and tokens per engine (pipelines/costs.py prices them)
    usage: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, marker: dict[str, Any], skipped: bool) -> None:
        self.shards += 1
        self.shards_skipped += int(skipped)
        for k, v in (marker.get("stats") or {}).items():
            self.stats[k] = self.stats.get(k, 0.0) + v
        for k in self.counts:
            self.counts[k] += marker.get(k, 0)
        self.failed_calls += marker.get("failed_calls", 0)
        self.transient_failures += marker.get("transient_failures", 0)
        if not skipped:
            self.model_calls += marker.get("model_calls", 0)
            self.cache_hits += marker.get("cache_hits", 0)
            add_usage(self.usage, marker.get("usage") or {})
        self.shard_sha256[part_name(marker["shard"])] = marker.get("sha256")
        if not skipped:
            self.notes += [n for n in marker.get("notes") or [] if n not in self.notes]
            if marker.get("node"):
                self.nodes[marker["node"]] = self.nodes.get(marker["node"], 0) + 1

    @property
    def balanced(self) -> bool:
        c = self.counts
        return c["in"] == c["out"] + c["dropped"] + c["quarantined"]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "stage": self.stage, **self.counts, "balanced": self.balanced,
                "model_calls": self.model_calls, "cache_hits": self.cache_hits, "seconds": round(self.seconds, 3),
                **({"failed_calls": self.failed_calls, "transient_failures": self.transient_failures}
                   if self.failed_calls else {}),
                "shards": self.shards, "shards_skipped": self.shards_skipped, "shard_sha256": self.shard_sha256,
                **({"stats": self.stats, "summary": self.summarize(self.stats) if self.summarize else {}}
                   if self.stats else {}), **({"damaged_redone": self.damaged} if self.damaged else {}),
                **({"notes": self.notes} if self.notes else {}), **({"decision": self.decision} if self.decision
                                                                      else {}),
                **({"nodes": self.nodes} if self.nodes else {})}


class Progress:
    """What the runner tells the caller as it goes (the CLI draws bars; tests and deployments pass nothing)."""

    def stage_start(self, stage_id: str, total_rows: int | None) -> None: ...
    def shard_done(self, stage_id: str, rows: int) -> None: ...
    def rows_running(self, stage_id: str, rows: int) -> None:
        """Rows done so far in the stage's shards that are still running."""
    def stage_end(self, stage_id: str) -> None: ...


class Run:
    """One run of a pipeline into a run directory, stage by stage.

    The plain loop (`run_pipeline`) and the Prefect flow (flows/) drive the same object: `start`, then `stage`
    for each stage (safe to call again after a failure: done shards are skipped), then `finish`. A caller whose
    orchestration takes seconds to come up (the CLI: importing Prefect and opening the flow run, ~3 s) calls
    `run_ahead` after `start`: the stages then start at once, in order, in a thread, and `stage` hands over each
    one's result as the orchestration reaches it, so that start-up overlaps the stages instead of preceding them.
    """

    def __init__(self, pipeline: Pipeline, run_dir: Path, *, address: str | None = None,
                 progress: Progress | None = None):
        self.pipeline = pipeline
        self.run_dir = Path(run_dir).resolve()
        self.address = address
        self.progress = progress or Progress()
        self.reports: dict[str, StageReport] = {}
        self.markers: dict[str, list[dict[str, Any]]] = {}
        self.manifest: dict[str, Any] = {}
        self._lock = contextlib.ExitStack()
        self._ahead: dict[str, concurrent.futures.Future] = {}  # stage id -> its result, from run_ahead's thread
        self._state = threading.Lock()  # a stage's bookkeeping vs finish, which may run in another thread
        self._finished = False
        self._summaries: dict[str, Any] | None = None  # RUN_SUMMARIES, when run_ahead computed them already

    def start(self) -> None:
        """Take the run directory (RunDirBusy when another run holds it) and write the config and manifest."""
        self._lock.enter_context(run_dir_lock(self.run_dir))
        try:
            self._start()
        except BaseException:
            self._lock.close()
            raise

    def _start(self) -> None:
        # every stage's code version now, in this thread: parsing modules (ast) in the run-ahead thread while
        # another thread imports Prefect hit CPython 3.11's "AST constructor recursion depth mismatch"
        for st in self.pipeline.stages:
            stage_code_version(st.name)
        resolved = self.pipeline.to_yaml_dict()
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        self.manifest = {
            "name": self.pipeline.name, "run_dir": str(self.run_dir), "status": "running",
            "code_version": code_version(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": resolved,
            "stages": [],
        }
        self._save()

    def run_ahead(self) -> None:
        """Run every stage now, in order, in a thread, up to the first that fails; `stage` collects the results.
        A failed stage is handed over as its exception, and the stages after it are left to `stage` to run (so a
        Prefect task retry of the failed one runs it again, in the caller's thread, skipping its done shards)."""
        futures = [concurrent.futures.Future() for _ in self.pipeline.stages]
        self._ahead = {st.id: fut for st, fut in zip(self.pipeline.stages, futures, strict=True)}

        def work() -> None:  # reads its own list: `stage` pops from self._ahead meanwhile
            try:
                for st, fut in zip(self.pipeline.stages, futures, strict=True):
                    if self._finished or not fut.set_running_or_notify_cancel():
                        break
                    try:
                        report = self._stage(st)
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller's `stage`
                        fut.set_exception(exc)
                        break
                    if st is self.pipeline.stages[-1]:  # the summaries too, before the caller's `finish`
                        with contextlib.suppress(Exception):  # (else `finish` computes them, and raises what it raises)
                            self._summaries = self._summarize()
                    fut.set_result(report)
            finally:
                for fut in futures:
                    fut.cancel()  # the ones not started: `stage` runs them itself

        threading.Thread(target=work, name="curate-stages", daemon=True).start()

    def wait_ahead(self, st: StageEntry) -> None:
        """Wait until `run_ahead` has run `st` (or stopped before it)."""
        ahead = self._ahead.get(st.id)
        if ahead is not None:
            concurrent.futures.wait([ahead])

    def stage(self, st: StageEntry) -> StageReport:
        ahead = self._ahead.pop(st.id, None)
        if ahead is not None:
            try:
                return ahead.result()
            except concurrent.futures.CancelledError:
                pass  # run_ahead stopped before this stage
        return self._stage(st)

    def _stage(self, st: StageEntry) -> StageReport:
        start = time.perf_counter()
        if st.spec.source is not None:
            report, markers = _run_source(st, self.run_dir, self.progress)
        else:
            upstream = self.markers[self.pipeline.stages[st.index - 1].id]
            report, markers = _run_stage(st, self.pipeline, upstream, self.run_dir, self.progress, self.address)
        report.seconds = time.perf_counter() - start
        with self._state:
            if self._finished:  # the run ended (failed) while this stage ran ahead: it may not write any more
                raise StaleWorker(f"{self.run_dir}: the run ended while stage {st.id} was running")
            prune_stage(self.run_dir, st.id, {m["shard"] for m in markers})
            self.reports[st.id], self.markers[st.id] = report, markers
            self._save()
        return report

    @property
    def finished(self) -> bool:
        return self._finished

    def finish(self, error: BaseException | None = None) -> dict[str, Any]:
        with self._state:
            self._finished = True  # a stage still running ahead (the run failed elsewhere) stops writing
            return self._finish(error)

    def _finish(self, error: BaseException | None) -> dict[str, Any]:
        if error is None:
            self.manifest["status"] = "ok"
            self.manifest["output"] = str(self.run_dir / self.pipeline.stages[-1].id)
            self.manifest["stages"] = self._stages()
            summaries = self._summaries if self._summaries is not None else self._summarize()
            self.manifest.update({k: v for k, v in summaries.items() if v})
        elif stopped_by_budget(error):  # nothing failed: a limit the user set was reached; --resume goes on
            self.manifest["status"] = "stopped"
            self.manifest["stopped"] = "budget"
            self.manifest["error"] = str(error)
        else:
            self.manifest["status"] = "failed"
            self.manifest["error"] = f"{type(error).__name__}: {error}"
        self.manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            self._save()
        except OSError:
            if error is None:
                raise
            # best effort (a full disk): the caller reports the run's own error, not this one; the markers on
            # disk are intact, so --resume continues where the run stopped
        finally:
            self._lock.close()
        return self.manifest

    def _summarize(self) -> dict[str, Any]:
        """Every RUN_SUMMARIES entry over the finished stages."""
        import importlib

        manifest = {**self.manifest, "stages": self._stages()}
        out = {}
        for key, target in RUN_SUMMARIES.items():
            module, _, fn = target.partition(":")
            out[key] = getattr(importlib.import_module(module), fn)(self.run_dir, manifest)
        return out

    def record(self, key: str, value: Any) -> None:
        """Add a run-level result (e.g. where it was published) to the manifest."""
        self.manifest[key] = value
        self._save()

    def _stages(self) -> list[dict[str, Any]]:
        return [r.as_dict() | stage_cost(r.usage, self.pipeline) for r in self.reports.values()]

    def _save(self) -> None:
        self.manifest["stages"] = self._stages()
        if cost := run_cost(self.manifest["stages"]):
            self.manifest["cost"] = cost
        atomic_write_json(self.manifest, self.run_dir / "manifest.json")


def stopped_by_budget(error: BaseException | None) -> bool:
    """The run stopped because its budget was reached (engines.budget.BudgetExhausted, also when a Ray worker
    raised it: Ray's error type then derives from it)."""
    from curate.engines.budget import BudgetExhausted

    return isinstance(error, BudgetExhausted)


def run_pipeline(pipeline: Pipeline, run_dir: Path, *, address: str | None = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Run every stage into `run_dir` (resuming its done shards) and return the manifest, without Prefect."""
    run = Run(pipeline, run_dir, address=address, progress=progress)
    run.start()
    try:
        for st in pipeline.stages:
            run.stage(st)
    except BaseException as exc:
        run.finish(exc)
        raise
    return run.finish()


def _run_source(st: StageEntry, run_dir: Path, progress: Progress):
    """The load stage runs in the driver: reading a file is sequential, and line numbers must be exact."""
    fp = fingerprint(stage_code_version(st.name), st.id, st.config.model_dump(mode="json"),
                     stage_inputs(st))
    stage_marker = run_dir / "_done" / st.id / "stage.json"
    report = StageReport(st.id, st.name, summarize=st.spec.summarize)
    progress.stage_start(st.id, None)
    try:
        done = json.loads(stage_marker.read_text()) if stage_marker.exists() else None
    except (OSError, ValueError):  # a damaged marker: the stage is read again
        done = None
        report.damaged.append(f"{stage_marker} is not readable JSON")
    if done is not None and done.get("fingerprint") == fp:
        # the source is read again whole when any part is not intact (its shards come from one pass)
        report.damaged += [why for m in done["markers"] if (why := intact(m))]
        done = None if report.damaged else done
    if done is not None and done.get("fingerprint") == fp:
        markers = done["markers"]
        for m in markers:
            report.add(m, skipped=True)
    else:
        markers = []
        for shard, result in enumerate(st.spec.source(st.config)):
            writer = ShardWriter(run_dir, st.id, shard, st.name)
            try:
                writer.add(result, result.rows_in or 0)
            except BaseException:
                writer.abort()
                raise
            markers.append(writer.commit(fp, {"model_calls": 0, "cache_hits": 0}))
            report.add(markers[-1], skipped=False)
            progress.shard_done(st.id, markers[-1]["in"])
        atomic_write_json({"fingerprint": fp, "markers": markers}, stage_marker)
    progress.stage_end(st.id)
    return report, markers


@dataclass
class StagePlan:
    """What a stage must do: its shards still to run (with their fingerprints) and the ones already done."""

    todo: list[dict[str, Any]]
    done: list[dict[str, Any]]
    engines: dict[str, dict]
    config: dict[str, Any]
    #: done shards whose files were not intact (why, per file): redone
    damaged: list[str] = field(default_factory=list)


def plan_stage(st: StageEntry, pipeline: Pipeline, upstream: list[dict[str, Any]], run_dir: Path) -> StagePlan:
    """Fingerprint every shard (stage code, config, engines, input hash) and sort them into done and to do."""
    engines = {n: pipeline.engines[n].model_dump(mode="json") for n in st.spec.engines(st.config)}
    cfg_json = st.config.model_dump(mode="json")
    shas = [up["sha256"] for up in upstream]
    code = stage_code_version(st.name)
    inputs = stage_inputs(st)  # side files, by content
    # (a stage that decides globally: every shard's output depends on all of the input)
    fps = [fingerprint(code, st.id, st.name, cfg_json, engines, inputs, shas if st.spec.decides else shas[i])
           for i in range(len(upstream))]
    todo, done, damaged = [], [], []
    markers = [read_marker(run_dir, st.id, up["shard"]) for up in upstream]
    # every done shard's file is checked before it is trusted (hashing runs in threads: hashlib releases the GIL)
    with concurrent.futures.ThreadPoolExecutor() as pool:
        checks = list(pool.map(lambda mf: intact(mf[0]) if mf[0] and mf[0].get("fingerprint") == mf[1] else None,
                               zip(markers, fps, strict=True)))
    for up, fp, marker, why in zip(upstream, fps, markers, checks, strict=True):
        # a shard whose rows failed transiently (timeouts, 5xx after every retry) is redone: its answered calls
        # come from the cache, the failed ones are asked again; so is one whose file is not intact
        if why:
            damaged.append(why)
        if marker and marker.get("fingerprint") == fp and not why and not marker.get("transient_failures"):
            done.append(marker)
        else:
            todo.append({"shard": up["shard"], "input": up["output"], "fingerprint": fp})
    if st.spec.decides:  # each row's position in the stage's input: "earliest" whatever the shard count
        at = dict(zip((up["shard"] for up in upstream), offsets(upstream), strict=True))
        todo = [{**t, "offset": at[t["shard"]]} for t in todo]
    return StagePlan(todo, done, engines, cfg_json, damaged)


def _run_stage(st: StageEntry, pipeline: Pipeline, upstream: list[dict[str, Any]], run_dir: Path,
               progress: Progress, address: str | None = None):
    plan = plan_stage(st, pipeline, upstream, run_dir)
    report = StageReport(st.id, st.name, summarize=st.spec.summarize, damaged=plan.damaged)
    progress.stage_start(st.id, sum(up.get("rows_out", 0) for up in upstream))
    for m in plan.done:
        report.add(m, skipped=True)
        progress.shard_done(st.id, m["in"])
    if st.spec.decides and plan.todo:  # keys, then the decision, before any shard drops its rows
        decision = global_stage.prepare(st, pipeline, plan, upstream, run_dir, progress, address)
        report.decision = {k: decision[k] for k in ("rows", "key_shards", "nodes") if k in decision}
        report.model_calls += decision["model_calls"]  # the key step's (an embedding model's)
        report.cache_hits += decision["cache_hits"]
    fresh: list[dict[str, Any]] = []
    for marker in execute(st, pipeline, plan, run_dir, progress, address) if plan.todo else ():
        fresh.append(marker)
        report.add(marker, skipped=False)
        progress.shard_done(st.id, marker["in"])
        check_error_rate(st, plan.done + fresh, final=False)
    check_error_rate(st, plan.done + fresh, final=True)
    if st.spec.decides:
        global_stage.finish(run_dir, st.id)
    progress.stage_end(st.id)
    return report, sorted(plan.done + fresh, key=lambda m: m["shard"])


class ErrorRateExceeded(RuntimeError):
    """Too many of a stage's model requests failed: the engine or the prompts are broken, not a few rows."""


def check_error_rate(st: StageEntry, markers: list[dict[str, Any]], final: bool) -> None:
    """Fail the stage when its failed requests exceed `max_error_rate` of its requests (from 20 requests on, and
    at the end whatever the count). The shards already written stay: fix the cause and `--resume`."""
    requests = sum(m.get("model_calls", 0) + m.get("cache_hits", 0) for m in markers)
    failed = sum(m.get("failed_calls", 0) for m in markers)
    limit = st.run.max_error_rate
    if not failed or failed <= limit * requests or (requests < 20 and not final):
        return
    first = next((m["first_error"] for m in markers if m.get("first_error")), None)
    raise ErrorRateExceeded(
        f"{st.id}: {failed} of {requests} model requests failed ({failed / requests:.0%}, more than max_error_rate "
        f"{limit:g}); first error: {first}. Fix the engine or the prompts, or raise {st.id}'s max_error_rate, "
        f"then rerun with --resume")
