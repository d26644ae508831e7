"""What a `curate run` needs around the runner, and the hand-off of the run to its Prefect flow: the libraries'
output sent to the run's log, the Prefect server found or started (and Ray connected) while the stages already
run, and the flow run opened over a run that started before Prefect was imported."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from curate.pipelines.console import err_console


class libraries_log_to:
    """Send what the libraries print (Prefect's flow and task logs, its temporary server, Ray's C++ warnings, Ray
    and Prefect subprocesses) to the run's log file instead of the console, at the file-descriptor level so that
    child processes follow. curate's own messages keep the real stderr (`err_console` is pointed at it)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def __enter__(self):
        if not self.enabled:
            return self
        sys.stderr.flush()
        real = os.fdopen(os.dup(2), "w", buffering=1)
        self._log = open(self.path, "a", buffering=1)
        os.dup2(self._log.fileno(), 2)
        err_console.file = real
        return self

    def __exit__(self, *exc):
        # fd 2 stays on the log file until the process ends: Prefect stops its temporary server (and logs that)
        # at exit, and Ray's processes may still write as they go; curate's own messages use `err_console`
        sys.stderr.flush()


class Services:
    """Start what a run needs, overlapping what waits: the Prefect server (when no PREFECT_API_URL is configured)
    is found or started in a thread, which also imports Prefect (~2 s of CPU here). With `--address` /
    RAY_ADDRESS that thread starts at once, while this one connects to the cluster; a local run starts it with
    `start_prefect` once its first stage (CPU-bound Python, which the import would only slow down) is done, so that
    the import overlaps the stages that wait on a model. With nothing configured the run reuses this machine's
    curate Prefect server, started by the first run and stopped when idle (flows/local_server.py);
    `CURATE_PREFECT_SERVER=temporary` asks for Prefect's own temporary server instead (started for this run,
    stopped at exit). A local run starts no Ray here: the runner starts it for the first stage that needs more
    than one worker (pipelines.executors.local_run). A configured Prefect server or Ray cluster is used as it is."""

    def __init__(self, address: str | None):
        self.address = address
        self._settings = None
        self._thread = None
        self._server: dict = {}

    def __enter__(self):
        from curate.pipelines.executors import init_ray, local_run

        if not local_run(self.address):
            self.start_prefect()
            try:
                init_ray(self.address)
            except BaseException:
                self._thread.join()
                raise
        return self

    def start_prefect(self) -> None:
        import threading

        if self._thread is not None:
            return
        server = self._server

        def find_server() -> None:
            try:
                if os.environ.get("PREFECT_API_URL"):
                    return
                from prefect.settings import PREFECT_API_URL

                if PREFECT_API_URL.value():
                    return
                if os.environ.get("CURATE_PREFECT_SERVER") == "temporary":
                    from prefect.server.api.server import SubprocessASGIServer

                    srv = SubprocessASGIServer()
                    srv.start()
                    server["url"] = srv.api_url
                else:
                    from curate.flows.local_server import connect

                    server["url"], started = connect()
                    print(f"curate: Prefect server {server['url']} (curate's local server, "
                          f"{'started for this run' if started else 'already running'}; `curate server stop` stops "
                          "it)", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 - then Prefect starts its temporary server in the flow
                server["error"] = exc

        self._thread = threading.Thread(target=find_server, name="prefect-server", daemon=True)
        self._thread.start()

    def prefect(self) -> None:
        """Wait for the Prefect server (starting the search now if `start_prefect` was not called) and point this
        process's Prefect settings at it."""
        self.start_prefect()
        self._thread.join()
        server = self._server
        if server.get("error") is not None:
            print(f"curate: no local Prefect server ({server['error']}); Prefect starts a temporary one",
                  file=sys.stderr)
        if server.get("url") and self._settings is None:
            from prefect.settings import (
                PREFECT_API_URL,
                PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
                temporary_settings,
            )

            updates: dict = {PREFECT_API_URL: server["url"]}
            if not any(os.environ.get(f"PREFECT_{k}_HEARTBEAT_FREQUENCY") for k in ("FLOWS", "RUNNER")):
                # flow-run heartbeats feed a team's zombie-run automations; curate's own server (no UI, no
                # automations) has no one to read them, and ending the flow joins their thread, which sleeps in
                # whole seconds: 0-1 s at the end of every run. A configured server keeps Prefect's default.
                updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
            self._settings = temporary_settings(updates=updates)
            self._settings.__enter__()

    def __exit__(self, *exc):
        if self._thread is not None:
            self._thread.join()
        if self._settings is not None:
            self._settings.__exit__(*exc)


def flow_run(p, pipeline: Path, run_dir: Path, limit: int | None, address: str | None, progress,
             services: Services) -> dict:
    """The run, as a Prefect flow run whose stages started before Prefect was up: the run starts its stages at
    once (`Run.run_ahead`); once the first is done this thread looks for the Prefect server, imports the flow
    (Prefect's import alone is ~2 s of CPU here) and opens the flow run, whose stage tasks take over the stages'
    results, while the later stages run."""
    from curate.pipelines.runner import Run

    run = Run(p, run_dir, address=address, progress=progress)
    run.start()
    try:
        run.run_ahead()
        run.wait_ahead(p.stages[0])  # see Services: Prefect's import would slow the first stage down
        services.prefect()  # starts looking for the server (unless --address did already), then waits
        from curate.flows.pipeline_flow import hand_off, pipeline_flow

        return pipeline_flow(str(pipeline), run_dir=str(run_dir), limit=limit, address=address,
                             handoff=hand_off(run))
    except BaseException as exc:
        if not run.finished:  # it failed before the flow run took the run over (no server, no flow run)
            run.finish(exc)
        raise
