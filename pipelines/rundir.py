"""The run directory: one writer (a lock), shard writers (temp file + rename, the marker last), markers, and the
readers that report, publish and review use to find a run's parts through its manifest.

    config.yaml                      the resolved pipeline
    manifest.json                    row accounting, timings, content hashes, status
    NN_stage/part-SSSSS.parquet      each stage's output shards (the checkpoint; the export stage's is the dataset)
    _dropped/NN_stage/...            rows a stage filtered, with the reason
    _quarantined/NN_stage/...        rows a stage could not process, with the error
    _done/NN_stage/part-SSSSS.json   shard markers: fingerprint, counts, output sha256
    _work/NN_stage/                  a global stage's intermediate steps (key rows, the decision)

Writes are temp file + rename, and the marker comes last, so a killed run never leaves a half-written shard that
counts as done.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.pipelines.fingerprint import file_sha256
from curate.schemas.validate import with_stage


def atomic_write_json(data: Any, path: Path) -> None:
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
    #: the stage's name, filled into the dropped/quarantined rows' `stage` column (stage functions leave it empty)
    stage_name: str | None = None
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
        self.write("dropped", with_stage(result.dropped, self.stage_name or self.stage_id))
        self.write("quarantined", with_stage(result.quarantined, self.stage_name or self.stage_id))
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
                  "sha256": hashes.get("out"), "output": str(self._target("out")),
                  "bytes": self._target("out").stat().st_size}
        atomic_write_json(marker, self.run_dir / "_done" / self.stage_id / f"{part_name(self.shard)}.json")
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


def work_folder(run_dir: Path, stage_id: str) -> Path:
    """A stage's intermediate files (a global dedup's key rows and decision), under `_work/`: the resume
    checkpoints of its steps, not part of the dataset."""
    return Path(run_dir) / "_work" / stage_id


def budget_ledger(run_dir: Path) -> Path:
    """The run's spending ledger (engines/budget.py): what its model calls cost and reserved, by stage."""
    return Path(run_dir) / "_work" / "spend.sqlite"


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
        if part_problem(path, sha if verify else None):
            raise StaleRunDir(f"{path} is missing, damaged or was changed after the run (its sha256 differs from "
                              "the manifest's): rerun with --resume to rebuild it")
        parts.append(path)
    return parts


def intact(marker: dict[str, Any]) -> str | None:
    """Why a done shard's output cannot be trusted (missing, another size than the marker recorded, no readable
    Parquet footer, another row count, another sha256), or None when it is intact. A resume checks every done
    shard this way before trusting it: the sha256 is what catches a flipped byte inside a page, which leaves
    the size and the footer as they were (its cost: about 1-2 s per GB of shards on a 2-core machine)."""
    import pyarrow.parquet as pq

    path = Path(marker["output"])
    try:
        size = path.stat().st_size
    except OSError:
        return f"{path} is missing"
    if marker.get("bytes") is not None and size != marker["bytes"]:
        return f"{path} has {size} bytes, its marker recorded {marker['bytes']}"
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as exc:  # noqa: BLE001 - any unreadable footer (ArrowInvalid, OSError, ...) is damage
        return f"{path} is not a readable Parquet file ({type(exc).__name__}: {exc})"
    if rows != marker.get("rows_out", rows):
        return f"{path} has {rows} rows, its marker recorded {marker['rows_out']}"
    if marker.get("sha256") and file_sha256(path) != marker["sha256"]:
        return f"{path} is damaged (its sha256 differs from its marker's)"
    return None


def verify(run_dir: Path, manifest: dict) -> list[str]:
    """Every file the manifest lists (each stage's parts), hashed against its recorded sha256; one line per
    problem. What `curate show --verify` prints and `curate publish` refuses."""
    problems = []
    for stage in manifest.get("stages", []):
        for name, sha in sorted((stage.get("shard_sha256") or {}).items()):
            path = stage_folder(run_dir, stage["id"]) / f"{name}.parquet"
            if why := part_problem(path, sha):
                problems.append(f"{path}: {why}")
    return problems


def part_problem(path: Path, sha: str | None) -> str | None:
    """Why a part the manifest lists does not match it (missing; another sha256, when one is given), or None."""
    if not path.exists():
        return "missing"
    if sha is not None and file_sha256(path) != sha:
        return "damaged or changed (its sha256 differs from the manifest's)"
    return None


def read_marker(run_dir: Path, stage_id: str, shard: int) -> dict[str, Any] | None:
    path = run_dir / "_done" / stage_id / f"{part_name(shard)}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def last_output_with(run_dir: Path, manifest: dict, columns: set[str]) -> list[Path] | None:
    """The output parts (as the manifest lists them) of the last stage whose output has all of `columns`."""
    for stage in reversed(manifest["stages"]):
        files = manifest_parts(run_dir, manifest, stage["id"], verify=False)
        if files and columns <= set(pq.read_schema(files[0]).names):
            return files
    return None
