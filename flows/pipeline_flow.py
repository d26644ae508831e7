"""The Prefect flow around the runner: one flow run per pipeline run, one task per stage.

Tasks pass nothing heavy between them: the run object holds shard markers (paths and hashes), the data stays in
Parquet in the run directory. A task retry re-enters `Run.stage`, which skips the shards already done. The
accounting table lands as a Prefect table artifact on the flow run.
"""

# no `from __future__ import annotations`: a served deployment validates the flow's parameters against these
# annotations, where string forward references cannot be resolved

import re
import time
from pathlib import Path
from typing import Any

from curate.pipelines.config import load_pipeline
from curate.pipelines.rundir import default_run_dir
from curate.pipelines.runner import Run
from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    return f"{Path(params.get('pipeline_path', 'pipeline')).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


@task(cache_policy=NONE, log_prints=False)
def run_stage(run: Run, index: int) -> dict[str, Any]:
    report = run.stage(run.pipeline.stages[index])
    return {k: v for k, v in report.as_dict().items() if k != "shard_sha256"}


@task(cache_policy=NONE, log_prints=False, retries=2, retry_delay_seconds=30)
def publish_run(run_dir: str, spec: dict[str, Any]) -> dict[str, Any]:
    from curate.pipelines.publish import publish

    return publish(Path(run_dir), spec["repo"], private=spec["private"], revision=spec["revision"],
                   config_name=spec["config_name"], license=spec["license"])


#: runs the calling process started and hands to its flow run by key (`handoff`): a live run is no flow
#: parameter (Prefect records and validates those), so it waits here, in this process, for the flow to take it
LIVE: dict[str, Run] = {}


def hand_off(run: Run) -> str:
    """The key under which `pipeline_flow(handoff=...)` finds `run`."""
    import uuid

    key = uuid.uuid4().hex
    LIVE[key] = run
    return key


@flow(name="curate-pipeline", flow_run_name=_run_name, validate_parameters=True)
def pipeline_flow(pipeline_path: str, run_dir: str | None = None, limit: int | None = None,
                  address: str | None = None, run_root: str = "runs", handoff: str | None = None) -> dict[str, Any]:
    """Run a pipeline YAML into a run directory; returns the manifest. `handoff`: the key of a run the caller
    (`curate run`) already started and set running ahead (`hand_off`), with its progress bars: its stages began
    while Prefect was being imported and this flow run opened; each stage's task then takes over that stage's
    result, or runs it when the run ahead stopped before it. A deployment's runs start their own."""
    run = LIVE.pop(handoff, None) if handoff else None
    if run is not None:
        pipeline = run.pipeline
    else:
        pipeline = load_pipeline(pipeline_path).with_limit(limit)
        run = Run(pipeline, Path(run_dir) if run_dir else default_run_dir(pipeline.name, run_root), address=address)
        run.start()
    try:
        for st in pipeline.stages:
            stage_task = run_stage.with_options(name=f"stage-{st.name}", task_run_name=st.id, retries=st.run.retries,
                                                retry_delay_seconds=st.run.retry_delay_s)
            stage_task(run, st.index)
    except BaseException as exc:
        run.finish(exc)
        _publish_accounting(run.manifest)
        raise
    manifest = run.finish()
    _publish_accounting(manifest)
    if pipeline.publish is not None:  # a failed push fails the flow run (after the task's retries)
        run.record("published", publish_run(str(run.run_dir), pipeline.publish.model_dump()))
    return run.manifest


def _publish_accounting(manifest: dict[str, Any]) -> None:
    rows = [{k: s[k] for k in ("id", "in", "out", "dropped", "quarantined", "rows_out", "model_calls", "cache_hits",
                               "balanced", "seconds")} for s in manifest["stages"]]
    key = re.sub(r"[^a-z0-9-]+", "-", f"curate-{manifest['name']}-accounting".lower())
    create_table_artifact(table=rows, key=key,
                          description=f"Row accounting of {manifest['run_dir']} ({manifest['status']})")


def serve(pipeline_path: Path, name: str, *, cron: str | None, interval: float | None, run_root: Path,
          limit: int | None = None, address: str | None = None) -> None:
    """Register a scheduled deployment of `pipeline_flow` and run its scheduled runs from this process."""
    from prefect.deployments.runner import EntrypointType

    params: dict[str, Any] = {"pipeline_path": str(pipeline_path), "run_root": str(run_root)}
    if limit is not None:
        params["limit"] = limit
    if address is not None:
        params["address"] = address
    pipeline_flow.serve(name=name, cron=cron, interval=interval, parameters=params,
                        description=f"curate pipeline {pipeline_path}", tags=["curate"],
                        entrypoint_type=EntrypointType.MODULE_PATH)


async def deployment_runs(name: str, n: int = 5) -> dict[str, Any]:
    """A deployment of `pipeline_flow`: paused or not, its schedule, its next scheduled runs and its last runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState
    from prefect.client.schemas.filters import FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        dep = await client.read_deployment_by_name(f"curate-pipeline/{name}")
        by_dep = DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
        scheduled = await client.read_flow_runs(
            deployment_filter=by_dep, sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=n,
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
        last = await client.read_flow_runs(
            deployment_filter=by_dep, sort=FlowRunSort.START_TIME_DESC, limit=n,
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=[StateType.SCHEDULED]))))
    schedules = [s.schedule for s in (dep.schedules or [])]
    return {
        "paused": bool(dep.paused),
        "schedule": ", ".join(getattr(s, "cron", None) or f"every {s.interval.total_seconds():g} s" for s in schedules
                              if getattr(s, "cron", None) or getattr(s, "interval", None)),
        "scheduled": [{"name": r.name, "expected": str(r.expected_start_time)} for r in scheduled],
        "last": [{"name": r.name, "state": r.state_name or "-", "start": str(r.start_time) if r.start_time else None}
                 for r in last],
    }
