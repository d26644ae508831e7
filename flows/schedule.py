"""Schedules: where a deployment lives (PREFECT_API_URL, else curate's local scheduler server), a watch that
says when its server schedules nothing, and a deployment's next and last runs (`curate deploy --status`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.markup import escape

from curate.pipelines.console import console, err_console


def watch_schedule(name: str, url: str, every_s: float) -> None:
    """Warn, in one line, when the server schedules no run of the deployment within a few of its periods: a server
    without a scheduler (an ephemeral one, a `prefect server start --no-services`), or a paused deployment."""
    import asyncio
    import threading
    import time

    def watch() -> None:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from curate.flows.pipeline_flow import deployment_runs

        wait = max(90.0, 3 * every_s) if every_s < 3600 else 90.0
        time.sleep(wait)
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                info = asyncio.run(deployment_runs(name))
        except Exception:  # noqa: BLE001 - the deployment is not registered yet, or the server is gone
            return
        if info["paused"]:
            err_console.print(f"[yellow]warning:[/] deployment {name} is paused: no scheduled run will start "
                              f"(`prefect deployment resume 'curate-pipeline/{name}'`)", soft_wrap=True)
        elif not info["scheduled"] and not info["last"]:
            err_console.print(f"[yellow]warning:[/] {url} scheduled no run of {name} in {wait:.0f} s: it runs no "
                              "scheduler (an ephemeral server?). Unset PREFECT_API_URL to use curate's local "
                              "scheduler server, or run `prefect server start`", soft_wrap=True)

    threading.Thread(target=watch, name="schedule-watch", daemon=True).start()


def scheduler_url(start: bool) -> str | None:
    """The Prefect API a deployment lives on: PREFECT_API_URL (env or profile) when configured, else curate's local
    scheduler server (started when `start`; None when it is not running). Sets it for this process."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return PREFECT_API_URL.value()
    from curate.flows import local_server

    if start:
        url, _ = local_server.connect(scheduler=True)
    else:
        state = local_server.status(scheduler=True)
        url = state["url"] if state else None
    if url:
        os.environ["PREFECT_API_URL"] = url
    return url


def deploy_status(name: str, pipeline_name: str, run_root: Path) -> None:
    """A deployment's schedule, its next scheduled runs and its last runs (with their run directories)."""
    url = scheduler_url(start=False)
    if url is None:
        err_console.print("[bold red]error:[/] no deployment server is running (no PREFECT_API_URL, and curate's "
                          "local scheduler server is not up): start one with `curate deploy PIPELINE ...`")
        raise typer.Exit(1)
    import asyncio

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from curate.flows.pipeline_flow import deployment_runs

    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            info = asyncio.run(deployment_runs(name))
    except Exception as exc:  # noqa: BLE001 - an unknown deployment, an unreachable server
        err_console.print(f"[bold red]error:[/] deployment {name!r} on {url}: {type(exc).__name__}: {escape(str(exc))}",
                          soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"[bold]{name}[/] on {url}: {'paused' if info['paused'] else 'active'}, schedule "
                  f"{info['schedule'] or '-'}")
    for run in info["scheduled"]:
        console.print(f"  next: {run['expected']}  {run['name']}")
    for run in info["last"]:
        console.print(f"  last: {run['start'] or '-'}  {run['state']:<10} {run['name']}")
    dirs = sorted((p for p in (run_root / pipeline_name).glob("*") if (p / "manifest.json").exists()), reverse=True)[:5]
    for d in dirs:
        manifest = json.loads((d / "manifest.json").read_text())
        console.print(f"  run dir: {d}  {manifest.get('status')}")
    if info["paused"]:
        err_console.print("[yellow]warning:[/] the deployment is paused: no run will start until it is resumed "
                          f"(`prefect deployment resume 'curate-pipeline/{name}'`)")


