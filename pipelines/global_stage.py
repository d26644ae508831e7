"""The two first steps of a stage that decides over its whole input (stages/base.GlobalDecision: global dedup),
before its shards run as any stage's do: every shard's key rows (in parallel, where the stage's shards run), then
the decision over all of them (polars on one machine, Ray Data on a cluster).

Each step is a checkpoint in the stage's work folder (`_work/NN_stage/`): a key file per shard with its marker,
then the decision with its marker. A killed run resumes at the step it was in: key files whose marker holds the
shard's key fingerprint (stage code, config, the shard's input hash and offset) are kept; the decision is kept
when its fingerprint (the stage's, which covers every input shard) matches; the shards already dropped by it
are kept too. The result does not depend on where the kill came: every step is a function of the input.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from curate.pipelines.fingerprint import file_sha256, fingerprint, stage_code_version
from curate.pipelines.rundir import atomic_write_json, part_name, work_folder

if TYPE_CHECKING:
    from curate.pipelines.config import Pipeline, StageEntry
    from curate.pipelines.runner import Progress, StagePlan


def offsets(upstream: list[dict[str, Any]]) -> list[int]:
    """Each input shard's first row's position in the stage's input (its rows come in shard order)."""
    out, at = [], 0
    for up in upstream:
        out.append(at)
        at += up.get("rows_out", 0)
    return out


def _kept(marker_path: Path, fp: str, data_key: str) -> dict[str, Any] | None:
    """A step's marker when it holds `fp` and the file it names is whole (same sha256), else None."""
    try:
        marker = json.loads(marker_path.read_text())
    except (OSError, ValueError):
        return None
    path = Path(marker.get(data_key, ""))
    if marker.get("fingerprint") != fp or not path.is_file() or file_sha256(path) != marker.get("sha256"):
        return None
    return marker


def prepare(st: StageEntry, pipeline: Pipeline, plan: StagePlan, upstream: list[dict[str, Any]], run_dir: Path,
            progress: Progress, address: str | None) -> dict[str, Any]:
    """Make sure the stage's decision exists for this input (keys, then decide); returns the decision's marker
    with the per-node shard counts of the key step (`nodes`) when it ran on Ray."""
    from curate.pipelines.executors import execute, local_run

    folder = work_folder(run_dir, st.id)
    decision_fp = plan.todo[0]["fingerprint"]  # the stage's fingerprint: every input shard's hash
    kept = _kept(folder / "decision.json", decision_fp, "decisions")
    if kept is not None:  # made by an earlier run: its model calls are not this run's
        return {**kept, "model_calls": 0, "cache_hits": 0}
    code = stage_code_version(st.name)
    items, markers, fresh = [], [], []
    for up, offset in zip(upstream, offsets(upstream), strict=True):
        fp = fingerprint(code, st.id, "keys", plan.config, up["sha256"], offset)
        marker = _kept(folder / "keys" / f"{part_name(up['shard'])}.json", fp, "keys")
        if marker is not None:
            markers.append(marker)
        else:
            items.append({"shard": up["shard"], "input": up["output"], "fingerprint": fp, "offset": offset,
                          "phase": "keys"})
    if items:
        from curate.pipelines.runner import StagePlan

        keys_plan = StagePlan(items, [], plan.engines, plan.config)
        fresh = list(execute(st, pipeline, keys_plan, run_dir, progress, address))
        markers += fresh
    from curate.stages.dupsets import Keys

    markers.sort(key=lambda m: m["shard"])
    config = st.spec.config.model_validate(plan.config)
    decisions = st.spec.decides.decide(Keys(files=[m["keys"] for m in markers]), config, not local_run(address))
    target = folder / "decisions.parquet"
    tmp = target.with_name(f".{target.name}.tmp")
    pq.write_table(decisions, tmp, row_group_size=65_536)
    tmp.replace(target)
    nodes: dict[str, int] = {}
    for m in markers:
        if m.get("node"):
            nodes[m["node"]] = nodes.get(m["node"], 0) + 1
    marker = {"fingerprint": decision_fp, "decisions": str(target), "sha256": file_sha256(target),
              "rows": decisions.num_rows, "key_shards": len(markers), **({"nodes": nodes} if nodes else {}),
              "model_calls": sum(m.get("model_calls", 0) for m in fresh),
              "cache_hits": sum(m.get("cache_hits", 0) for m in fresh)}
    atomic_write_json(marker, folder / "decision.json")
    return marker


def finish(run_dir: Path, stage_id: str) -> None:
    """Every shard is done: the key files are no longer needed (the decision stays, for a shard redone later)."""
    shutil.rmtree(work_folder(run_dir, stage_id) / "keys", ignore_errors=True)
