"""The runner: stage by stage, shard by shard, on Ray Data, into a run directory.

Run directory layout:
    config.yaml                      the resolved pipeline
    manifest.json                    row accounting, timings, content hashes, status
    NN_stage/part-SSSSS.parquet      each stage's output shards (the checkpoint; the export stage's is the dataset)
    _dropped/NN_stage/...            rows a stage filtered, with the reason
    _quarantined/NN_stage/...        rows a stage could not process, with the error
    _done/NN_stage/part-SSSSS.json   shard markers: fingerprint, counts, output sha256

Shards keep their number through the pipeline (shard 3 of judge is made from shard 3 of generate). A shard is
done when its marker holds the fingerprint of (the stage's code version, stage config, engines, input shard
hash); a rerun into the same run directory skips done shards. Writes are temp file + rename, and the marker comes last, so a
killed run never leaves a half-written shard that counts as done.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel

from curate.engines.base import usable_cpus
from curate.pipelines.config import Pipeline, StageEntry

CODE_DIRS = ("stages", "judges", "engines", "schemas")


def code_version() -> str:
    """Hash of all the code and templates that can shape stage outputs (the manifest records it)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for d in CODE_DIRS:
        for p in sorted((root / d).rglob("*")):
            if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(root)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


def module_parts(name: str) -> list[str]:
    """A module name of ours as folders under the repository root (`curate.engines.base` -> engines/base); [] for
    anything else."""
    parts = name.split(".")
    return parts[1:] if parts[0] == "curate" and len(parts) > 1 else []


def stage_module_path(stage_name: str, root: Path) -> Path:
    """The source file of the module that defines the stage's function (`spec.process.__module__`), under `root`;
    an error when it cannot be found, since a fingerprint without the stage's code would keep stale shards."""
    import sys

    from curate.stages import registry

    spec = registry()[stage_name]
    fn = spec.process or spec.source
    module = sys.modules.get(fn.__module__)
    path = root.joinpath(*module_parts(fn.__module__)).with_suffix(".py")
    if module is None or not getattr(module, "__file__", None) or not path.exists():
        raise RuntimeError(f"cannot find the source of stage {stage_name!r} (module {fn.__module__}, looked for "
                           f"{path}) to fingerprint its code")
    return path


def input_files(cfg: Any) -> list[Path]:
    """Every file a stage config points at (its Path fields, and strings that are absolute paths to files, such
    as a user's template resolved when the YAML loads), found by walking the config."""
    from pydantic import BaseModel

    found: list[Path] = []

    def walk(value: Any) -> None:
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, Path):
            found.append(value)
        elif isinstance(value, str) and value.startswith("/") and len(value) < 4096 and Path(value).is_file():
            found.append(Path(value))

    walk(cfg)
    return found


def stage_inputs(st: StageEntry) -> list[Any]:
    """The content fingerprint of every file that shapes this stage's output (StageSpec.inputs, or the files
    its config points at)."""
    return content_fingerprint((st.spec.inputs or input_files)(st.config))


def content_fingerprint(paths: list[Path]) -> list[Any]:
    """[path, sha256] for each input file (a folder: each file under it, by relative name), so editing a
    benchmark, candidates or pool file redoes the stages it shapes, and a touch without an edit does not."""
    out: list[Any] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            out.append([str(path), [[str(f.relative_to(path)), file_sha256(f)]
                                    for f in sorted(path.rglob("*")) if f.is_file()]])
        else:
            out.append([str(path), file_sha256(path) if path.exists() else None])
    return out


@functools.lru_cache(maxsize=None)
def stage_code_version(stage_name: str, root: Path | None = None) -> str:
    """Hash of the code one stage's output depends on: its module and every module of ours it imports,
    transitively (read from the source, imports inside functions too, so lazily imported engines count), plus
    the judge templates when it uses them. An edit elsewhere leaves the stage's done shards done."""
    import ast

    root = root or Path(__file__).resolve().parent.parent
    seen: set[Path] = set()
    todo = [stage_module_path(stage_name, root)]
    while todo:
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                parts = module_parts(name)
                if parts and parts[0] in CODE_DIRS:
                    todo += [root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")]
    if root / "judges" / "templates.py" in seen:
        seen |= set((root / "judges" / "templates").glob("*.yaml"))
    h = hashlib.sha256()
    for p in sorted(seen):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_json(data: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, path)
    except BaseException:  # a full disk: no half-written temp file stays behind
        tmp.unlink(missing_ok=True)
        raise


def run_token(run_dir: Path) -> str | None:
    """The token of the run that holds the run directory now. A worker checks it before it commits a shard: a
    worker left over from a killed run (a Ray actor outliving its driver for a moment) sees another run's token
    and stops instead of writing into the directory the new run owns."""
    try:
        parts = (Path(run_dir) / ".lock").read_text().split()
    except OSError:
        return None
    return parts[1] if len(parts) > 1 else None


class StaleWorker(RuntimeError):
    """This worker's run is over (killed, or another run took the directory): it must not write."""


class RunDirBusy(RuntimeError):
    """Another curate process is writing into this run directory."""


_held_locks: dict[Path, list] = {}  # run dir -> [open lock file, holders in this process]


@contextlib.contextmanager
def run_dir_lock(run_dir: Path):
    """One writer per run directory: an exclusive `flock` on RUN_DIR/.lock for as long as the run lasts (the OS
    drops it when the process dies, so a killed run never leaves the directory locked). Reentrant within a process:
    the CLI takes it before anything starts, the run takes it again."""
    import fcntl

    run_dir = Path(run_dir).resolve()
    held = _held_locks.get(run_dir)
    if held is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = open(run_dir / ".lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = (fh.read().split() or ["unknown"])[0]
            fh.close()
            raise RunDirBusy(f"{run_dir} is in use by another curate run (pid {holder}): wait for it to finish, or "
                             "give this run its own --run-dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()} {uuid.uuid4().hex}\n")  # the holder, and this run's token (see run_token)
        fh.flush()
        held = _held_locks[run_dir] = [fh, 0]
    held[1] += 1
    try:
        yield
    finally:
        held[1] -= 1
        if held[1] == 0:
            del _held_locks[run_dir]
            held[0].close()  # closing the file releases the lock


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    return Path(root) / name / time.strftime("%Y%m%d-%H%M%S")


def part_name(shard: int) -> str:
    return f"part-{shard:05d}"


@dataclass
class ShardWriter:
    """Streams one shard's three outputs to temp files, then renames them into place."""

    run_dir: Path
    stage_id: str
    shard: int
    counts: dict[str, int] = field(default_factory=lambda: {"in": 0, "out": 0, "rows_out": 0, "dropped": 0,
                                                              "quarantined": 0})
    stats: dict[str, float] = field(default_factory=dict)
    _writers: dict[str, tuple[pq.ParquetWriter, Path, Path]] = field(default_factory=dict)

    def _target(self, kind: str) -> Path:
        folder = stage_folder(self.run_dir, self.stage_id, kind)
        return folder / f"{part_name(self.shard)}.parquet"

    def abort(self) -> None:
        """The shard failed: close and remove its temp files (the last run's files, if any, stay as they were)."""
        for writer, tmp, _ in self._writers.values():
            with contextlib.suppress(Exception):
                writer.close()
            tmp.unlink(missing_ok=True)
        self._writers.clear()

    def write(self, kind: str, table: pa.Table) -> None:
        if kind not in self._writers:
            if table.num_rows == 0 and kind != "out":
                return
            target = self._target(kind)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            try:
                self._writers[kind] = (pq.ParquetWriter(tmp, table.schema), tmp, target)
            except BaseException:  # the file was created, its header not written (a full disk)
                tmp.unlink(missing_ok=True)
                raise
        writer = self._writers[kind][0]
        if table.num_rows:
            writer.write_table(table.cast(writer.schema))

    def add(self, result, rows_in: int) -> None:
        self.write("out", result.out)
        self.write("dropped", result.dropped)
        self.write("quarantined", result.quarantined)
        self.counts["in"] += rows_in
        self.counts["out"] += result.n_out
        self.counts["rows_out"] += result.out.num_rows
        self.counts["dropped"] += result.n_dropped
        self.counts["quarantined"] += result.quarantined.num_rows
        for k, v in (result.stats or {}).items():
            self.stats[k] = self.stats.get(k, 0.0) + v

    def commit(self, fingerprint: str, extra: dict[str, Any]) -> dict[str, Any]:
        hashes = {}
        try:
            for writer, _, _ in self._writers.values():
                writer.close()  # the last row group reaches the disk here: a full disk fails here
        except BaseException:
            self.abort()
            raise
        for kind, (_, tmp, target) in self._writers.items():
            os.replace(tmp, target)
            hashes[kind] = file_sha256(target)
        for kind in ("dropped", "quarantined"):  # a redone shard with none leaves no older run's file behind
            if kind not in self._writers:
                self._target(kind).unlink(missing_ok=True)
        marker = {"shard": self.shard, "fingerprint": fingerprint, **self.counts, **extra, "stats": self.stats,
                  "sha256": hashes.get("out"), "output": str(self._target("out"))}
        _atomic_write_json(marker, self.run_dir / "_done" / self.stage_id / f"{part_name(self.shard)}.json")
        return marker


def prune_stage(run_dir: Path, stage_id: str, shards: set[int]) -> None:
    """The run directory is the truth: remove a stage's parts, side files and markers that no current shard owns
    (a rerun into the same directory with fewer rows, or a stage whose shards were cut anew), so readers that
    list the folder see exactly what the manifest lists."""
    for folder in [stage_folder(run_dir, stage_id, kind) for kind in ("out", "dropped", "quarantined", "done")]:
        for f in folder.glob("part-*"):
            number = f.name.removeprefix("part-").split(".")[0]
            if number.isdigit() and int(number) not in shards:
                f.unlink()


class StaleRunDir(RuntimeError):
    """A run directory's files no longer match its manifest."""


def stage_folder(run_dir: Path, stage_id: str, kind: str = "out") -> Path:
    """Where a stage's parts of one kind live: its output (`out`), or the `dropped` / `quarantined` side files."""
    return Path(run_dir) / stage_id if kind == "out" else Path(run_dir) / f"_{kind}" / stage_id


def side_parts(run_dir: Path, manifest: dict, stage_id: str, kind: str) -> list[Path]:
    """A stage's dropped or quarantined files for exactly the shards the manifest lists (a shard with nothing
    dropped has no file; a stale file of an older run is never read)."""
    stage = next((s for s in manifest["stages"] if s["id"] == stage_id), None)
    names = sorted((stage or {}).get("shard_sha256", {}))
    return [f for f in (stage_folder(run_dir, stage_id, kind) / f"{n}.parquet" for n in names) if f.exists()]


def manifest_parts(run_dir: Path, manifest: dict, stage_id: str, *, verify: bool = True) -> list[Path]:
    """A stage's output parts exactly as the manifest lists them (readers never glob the folder); with `verify`,
    each checked against its recorded sha256, so what is exported or published is what the run made."""
    stage = next((s for s in manifest["stages"] if s["id"] == stage_id), None)
    if stage is None:
        raise StaleRunDir(f"{run_dir}: the manifest has no stage {stage_id}")
    parts = []
    for name, sha in sorted(stage.get("shard_sha256", {}).items()):
        path = stage_folder(run_dir, stage_id) / f"{name}.parquet"
        if not path.exists() or (verify and sha is not None and file_sha256(path) != sha):
            raise StaleRunDir(f"{path} is missing or was changed after the run (its sha256 differs from the "
                              "manifest's): rerun with --resume to rebuild it")
        parts.append(path)
    return parts


def read_marker(run_dir: Path, stage_id: str, shard: int) -> dict[str, Any] | None:
    path = run_dir / "_done" / stage_id / f"{part_name(shard)}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class ShardWorker:
    """One per actor (or task), so engines load once per worker and serve many shards.

    On engines that stream (HTTP), a shard's batches run in threads, `batches_in_flight` at a time, all feeding
    the engine's one window of requests, so the engine never waits for the slowest request of a batch; a worker
    may also run several shards at once (the runner makes it a threaded actor). Outputs are written in batch
    order either way. Other engines (llama.cpp, vLLM offline, transformers) take one batch at a time."""

    def __init__(self, stage_name: str, stage_id: str, config: dict, engines: dict[str, dict], cache_dir: str | None,
                 run_dir: str, batch_size: int, token: str | None = None):
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
        cache = ResponseCache(cache_dir) if engines else None
        self.engines = {n: build_engine(parse_engine(c), cache) for n, c in engines.items()}
        self.ctx = StageContext(self.engines)
        self.batches_in_flight = batches_in_flight(self.engines.values(), batch_size, self.spec.stateful)
        #: input rows done so far of each shard this worker is running (the driver polls it for progress)
        self.rows_done: dict[int, int] = {}

    def progress(self) -> dict[int, int]:
        return dict(self.rows_done)

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = [self.run_shard(**row) for row in batch.to_pylist()]
        return pa.Table.from_pylist(results)

    def _counts(self):
        """What this thread's requests through all engines came to so far (engines.cache.CallCounts)."""
        from curate.engines.cache import CallCounts

        return sum((e.thread_counts() for e in self.engines.values()), CallCounts())

    def _process(self, table: pa.Table):
        """One batch through the stage, with what its requests came to (counted in its thread)."""
        before = self._counts()
        result = self.spec.process(table, self.config, self.ctx)
        return result, self._counts() - before

    def run_shard(self, shard: int, input: str, fingerprint: str) -> dict[str, Any]:
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        from curate.engines.cache import CallCounts

        start = time.perf_counter()
        writer = ShardWriter(self.run_dir, self.stage_id, shard)
        counts = CallCounts()
        src = pq.ParquetFile(input)
        tables = (pa.Table.from_batches([b]) for b in src.iter_batches(batch_size=self.batch_size))
        if src.metadata.num_rows == 0:
            tables = iter([src.schema_arrow.empty_table()])
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
                counts += c
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
        marker = writer.commit(fingerprint, {
            "model_calls": counts.calls,
            "cache_hits": counts.hits,
            # failed requests (model or cache), the transient ones among them (the shard is redone by the next
            # run), and the first error, for the message when a stage fails on its error rate
            "failed_calls": counts.failed,
            "transient_failures": counts.transient,
            "first_error": counts.first_error,
            "seconds": round(time.perf_counter() - start, 3),
        })
        return {"shard": shard, "marker": json.dumps(marker)}


def streams(capability_sets) -> bool:
    """Every engine of the stage takes calls from many threads into one window (engines/config.py)."""
    sets = list(capability_sets)
    return bool(sets) and all("streams" in caps for caps in sets)


def batches_in_flight(engines, batch_size: int, stateful: bool) -> int:
    """Batches of a shard to run at once: enough rows to fill the engines' windows (each row makes at least one
    request) plus one, so a batch's slow tail overlaps the next; 1 for engines that take one call at a time."""
    engines = list(engines)
    if stateful or not streams(e.capabilities for e in engines):
        return 1
    want = max(e.window for e in engines)
    return min(128, 1 + -(-want // batch_size))


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
        self.shard_sha256[part_name(marker["shard"])] = marker.get("sha256")

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
                   if self.stats else {})}


class Progress(BaseModel):
    """What the runner tells the caller as it goes (the CLI draws bars; tests and deployments pass nothing).

    A pydantic model without fields so that it can be a parameter of the Prefect flow: Prefect records it as `{}`
    while the caller's live object (its state in private attributes) reaches the run."""

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
        self._judges: dict[str, Any] | None = None  # the judge summary, when run_ahead computed it already

    def start(self) -> None:
        """Take the run directory (RunDirBusy when another run holds it) and write the config and manifest."""
        self._lock.enter_context(run_dir_lock(self.run_dir))
        try:
            self._start()
        except BaseException:
            self._lock.close()
            raise

    def _start(self) -> None:
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
                    if st is self.pipeline.stages[-1]:  # the judge summary too, before the caller's `finish`
                        with contextlib.suppress(Exception):  # (else `finish` computes it, and raises what it raises)
                            self._judges = self._judge_summary()
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
            judges = self._judges if self._judges is not None else self._judge_summary()
            if judges:
                self.manifest["judges"] = judges
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

    def _judge_summary(self) -> dict[str, Any]:
        """What the judges of the last stage with candidates did (agreement, position consistency, ...); {} when
        no stage has candidates."""
        judged = last_output_with(self.run_dir, {"stages": self._stages()}, {"candidates"})
        if judged is None or not any(judgment_count(part) for part in judged):
            return {}  # candidates nobody judged (a generate-only pipeline): nothing for polars to summarize
        from curate.judges.stats import summary

        return summary(judged)

    def record(self, key: str, value: Any) -> None:
        """Add a run-level result (e.g. where it was published) to the manifest."""
        self.manifest[key] = value
        self._save()

    def _stages(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.reports.values()]

    def _save(self) -> None:
        self.manifest["stages"] = self._stages()
        _atomic_write_json(self.manifest, self.run_dir / "manifest.json")


def judgment_count(part: Path) -> int:
    """How many judgments the candidates of one output part carry."""
    import pyarrow.compute as pc

    candidates = pc.list_flatten(pq.read_table(part, columns=["candidates"]).column("candidates"))
    return pc.sum(pc.list_value_length(pc.struct_field(candidates, "judgments"))).as_py() or 0


def last_output_with(run_dir: Path, manifest: dict, columns: set[str]) -> list[Path] | None:
    """The output parts (as the manifest lists them) of the last stage whose output has all of `columns`."""
    for stage in reversed(manifest["stages"]):
        files = manifest_parts(run_dir, manifest, stage["id"], verify=False)
        if files and columns <= set(pq.read_schema(files[0]).names):
            return files
    return None


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
    if stage_marker.exists() and json.loads(stage_marker.read_text()).get("fingerprint") == fp:
        markers = json.loads(stage_marker.read_text())["markers"]
        for m in markers:
            report.add(m, skipped=True)
    else:
        markers = []
        for shard, result in enumerate(st.spec.source(st.config)):
            writer = ShardWriter(run_dir, st.id, shard)
            try:
                writer.add(result, result.rows_in or 0)
            except BaseException:
                writer.abort()
                raise
            markers.append(writer.commit(fp, {"model_calls": 0, "cache_hits": 0}))
            report.add(markers[-1], skipped=False)
            progress.shard_done(st.id, markers[-1]["in"])
        _atomic_write_json({"fingerprint": fp, "markers": markers}, stage_marker)
    progress.stage_end(st.id)
    return report, markers


@dataclass
class StagePlan:
    """What a stage must do: its shards still to run (with their fingerprints) and the ones already done."""

    todo: list[dict[str, Any]]
    done: list[dict[str, Any]]
    engines: dict[str, dict]
    config: dict[str, Any]
    #: input rows of the shards to do (from the upstream markers)
    todo_rows: int = 0


def plan_stage(st: StageEntry, pipeline: Pipeline, upstream: list[dict[str, Any]], run_dir: Path) -> StagePlan:
    """Fingerprint every shard (stage code, config, engines, input hash) and sort them into done and to do."""
    engines = {n: pipeline.engines[n].model_dump(mode="json") for n in st.spec.engines(st.config)}
    cfg_json = st.config.model_dump(mode="json")
    # a stateful stage's shard depends on every shard before it, so its fingerprint covers them all
    shas = [up["sha256"] for up in upstream]
    code = stage_code_version(st.name)
    inputs = stage_inputs(st)  # side files, by content
    fps = [fingerprint(code, st.id, st.name, cfg_json, engines, inputs,
                       shas[: i + 1] if st.spec.stateful else shas[i]) for i in range(len(upstream))]
    todo, done = [], []
    for up, fp in zip(upstream, fps, strict=True):
        marker = read_marker(run_dir, st.id, up["shard"])
        # a shard whose rows failed transiently (timeouts, 5xx after every retry) is redone: its answered calls
        # come from the cache, the failed ones are asked again
        if (marker and marker.get("fingerprint") == fp and Path(marker["output"]).exists()
                and not marker.get("transient_failures")):
            done.append(marker)
        else:
            todo.append({"shard": up["shard"], "input": up["output"], "fingerprint": fp})
    if st.spec.stateful and todo:  # its state is rebuilt from the first shard on
        todo = [{"shard": up["shard"], "input": up["output"], "fingerprint": fp} for up, fp in zip(upstream, fps)]
        done = []
    rows = {up["shard"]: up.get("rows_out", 0) for up in upstream}
    return StagePlan(todo, done, engines, cfg_json, sum(rows[t["shard"]] for t in todo))


def _run_stage(st: StageEntry, pipeline: Pipeline, upstream: list[dict[str, Any]], run_dir: Path,
               progress: Progress, address: str | None = None):
    plan = plan_stage(st, pipeline, upstream, run_dir)
    report = StageReport(st.id, st.name, summarize=st.spec.summarize)
    progress.stage_start(st.id, sum(up.get("rows_out", 0) for up in upstream))
    for m in plan.done:
        report.add(m, skipped=True)
        progress.shard_done(st.id, m["in"])
    fresh: list[dict[str, Any]] = []
    for marker in _execute(st, pipeline, plan, run_dir, progress, address) if plan.todo else ():
        fresh.append(marker)
        report.add(marker, skipped=False)
        progress.shard_done(st.id, marker["in"])
        check_error_rate(st, plan.done + fresh, final=False)
    check_error_rate(st, plan.done + fresh, final=True)
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


#: a local run's pure stage with at most this many input rows runs in the driver (columnar work this size takes
#: well under Ray's own start: a worker pool only pays off beyond it)
DRIVER_ROWS = 50_000


def local_run(address: str | None) -> bool:
    """No Ray cluster was asked for (no --address, no RAY_ADDRESS) and none is running in this process."""
    import sys

    ray = sys.modules.get("ray")
    return not (address or os.environ.get("RAY_ADDRESS") or (ray is not None and ray.is_initialized()))


def _execute(st: StageEntry, pipeline: Pipeline, plan: StagePlan, run_dir: Path, progress: Progress,
             address: str | None = None):
    """Run the plan's shards where the stage's engines want them; yields each shard's marker as it completes.

    On a local run a stage whose work fits one worker (a model stage on one engine instance, the default; a
    stateful stage; a pure stage on a few thousand rows) runs in this process: Ray starts only when a stage
    needs more than one worker, so a small pipeline pays for no cluster it does not use. With --address (or
    RAY_ADDRESS) every stage runs on the cluster."""
    from curate.engines.config import parse_engine, shard_driver

    todo = plan.todo
    engine_cfgs = [parse_engine(c) for c in plan.engines.values()]
    model_stage = bool(engine_cfgs) or st.spec.keeps_model
    local = local_run(address)
    if local:
        cpus = usable_cpus()
    else:
        init_ray(address)
        import ray

        cpus = max(1, int(ray.available_resources().get("CPU", usable_cpus())))
    size = st.run.concurrency or (1 if model_stage else max(1, min(len(todo), cpus)))
    size = 1 if st.spec.stateful else min(size, len(todo))
    worker_kwargs = dict(
        stage_name=st.name, stage_id=st.id, config=plan.config, engines=plan.engines,
        cache_dir=str(pipeline.cache_dir) if pipeline.cache_dir else None, run_dir=str(run_dir),
        batch_size=st.run.batch_size, token=run_token(run_dir),
    )
    drivers = {shard_driver(c) for c in engine_cfgs} - {None}
    streaming = streams(c.capabilities() for c in engine_cfgs)
    if drivers:  # an engine that runs the stage's shards itself (ray_llm: shards in driver threads)
        init_ray(address)
        (driver,) = drivers
        return driver(todo, ShardWorker(**worker_kwargs), 1 if st.spec.stateful else st.run.concurrency)
    per_actor = 2 if streaming and not st.spec.stateful else 1  # the next shard starts under the tail
    running_rows = functools.partial(progress.rows_running, st.id)
    if local and (size == 1 or (not model_stage and plan.todo_rows <= DRIVER_ROWS)):
        return _driver_shards(todo, worker_kwargs, per_actor, running_rows)
    init_ray(address)
    import ray

    if model_stage or st.spec.stateful:  # an actor pool: engines (or state) live as long as the actor
        return _actor_shards(todo, worker_kwargs, size, per_actor, st.run.num_cpus, running_rows)
    # pure stages run as plain tasks on Ray's already-started workers
    ray.data.DataContext.get_current().execution_options.preserve_order = False
    ds = ray.data.from_items(todo, override_num_blocks=len(todo))
    ds = ds.map_batches(_pure_shards, fn_kwargs=worker_kwargs, batch_size=1, batch_format="pyarrow",
                        compute=ray.data.TaskPoolStrategy(size=size), num_cpus=st.run.num_cpus)
    return (json.loads(row["marker"]) for row in ds.iter_rows())
