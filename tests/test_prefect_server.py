"""With no PREFECT_API_URL, runs share one local Prefect server: the first run starts it, the next reuses it,
it keeps every flow run, and it stops by itself once idle (or with `curate server stop`)."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import yaml

from conftest import EXAMPLES, curate
from curate.flows.local_server import _alive


def _pipeline(tmp_path: Path) -> Path:
    spec = {"name": "tiny", "stages": [{"load": {"path": str(EXAMPLES / "data" / "mt_bench_questions.jsonl"),
                                                 "turns_field": "turns"}},
                                       {"dedup": {"method": "exact"}}]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _flow_runs(url: str) -> list[dict]:
    req = urllib.request.Request(f"{url}/flow_runs/filter", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_runs_share_one_local_prefect_server_that_stops_when_idle(tmp_path):
    home = tmp_path / "prefect-home"
    env = {"PREFECT_API_URL": None, "PREFECT_HOME": str(home), "CURATE_PREFECT_IDLE_S": "4"}
    pipeline = _pipeline(tmp_path)
    state_file = home / "curate-server" / "server.json"

    try:
        first = curate("run", pipeline, "--run-dir", tmp_path / "r1", env=env)
        assert first.returncode == 0, first.stderr
        assert "curate's local server, started for this run" in (tmp_path / "r1" / "curate.log").read_text()
        state = json.loads(state_file.read_text())
        assert _alive(state["pid"])
        # this test process counts as a client until the second run has connected, so a slow start of that run
        # cannot outlast the 4 s idle time (the layout is flows/local_server.py's)
        me = home / "curate-server" / "clients" / str(os.getpid())
        me.touch()

        second = curate("run", pipeline, "--run-dir", tmp_path / "r2", env=env)
        assert second.returncode == 0, second.stderr
        log = (tmp_path / "r2" / "curate.log").read_text()
        assert f"Prefect server {state['url']} (curate's local server, already running" in log
        # both runs are flow runs on that one server, completed
        runs = _flow_runs(state["url"])
        assert sorted(r["state_type"] for r in runs) == ["COMPLETED", "COMPLETED"]
        assert {r["name"].split("-")[0] for r in runs} == {"tiny"}
        me.unlink()

        # no run uses it now: it exits by itself after CURATE_PREFECT_IDLE_S and gives up its state file
        deadline = time.time() + 30
        while _alive(state["pid"]) and time.time() < deadline:
            time.sleep(0.5)
        assert not _alive(state["pid"]) and not state_file.exists()

        # the next run starts a new one on the same database (the history stays); `curate server stop` stops it
        third = curate("run", pipeline, "--run-dir", tmp_path / "r3", env={**env, "CURATE_PREFECT_IDLE_S": "600"})
        assert third.returncode == 0, third.stderr
        assert "started for this run" in (tmp_path / "r3" / "curate.log").read_text()
        new = json.loads(state_file.read_text())
        assert new["pid"] != state["pid"] and len(_flow_runs(new["url"])) == 3
        status = curate("server", "status", env=env)
        assert f"pid {new['pid']}" in status.stdout and "0 run(s) using it" in status.stdout
        stop = curate("server", "stop", env=env)
        assert stop.returncode == 0 and "stopped" in stop.stdout
        assert not _alive(new["pid"]) and not state_file.exists()
        assert "no curate Prefect server is running" in curate("server", "status", env=env).stdout
    finally:  # a failed test leaves no server behind
        curate("server", "stop", env=env)
