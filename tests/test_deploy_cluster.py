"""Orchestration at scale: a scheduled Prefect deployment served by `curate deploy` against a real local Prefect
server, and a pipeline run on a real two-node local Ray cluster through its address."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import curate, free_port, stop_group
from test_end_to_end import small_example

BIN = Path(sys.executable).parent


def tiny_pipeline(tmp_path: Path) -> Path:
    path = small_example(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["stages"][0]["load"]["limit"] = 2
    data["stages"][1]["generate"]["models"][0].update(k=2, max_tokens=24)
    data["stages"][2]["judge"]["sampling"]["max_tokens"] = 64
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def find_deployment(name: str, url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        async with get_client() as client:
            for dep in await client.read_deployments():
                if dep.name == name:
                    return dep
    return None


def test_curate_deploy_serves_a_scheduled_deployment_that_runs(tmp_path, prefect_server):
    pipeline = tiny_pipeline(tmp_path)
    runs = tmp_path / "runs"
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([str(BIN / "curate"), "deploy", str(pipeline), "--cron", "0 3 * * *",
                               "--name", "nightly", "--run-root", str(runs)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        dep = None
        while time.time() < deadline and dep is None:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            dep = asyncio.run(find_deployment("nightly", prefect_server))
            time.sleep(1)
        assert dep is not None, "the deployment never appeared on the server"
        assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * *"]
        assert dep.parameters["pipeline_path"] == str(pipeline.resolve())

        triggered = subprocess.run([str(BIN / "prefect"), "deployment", "run", "curate-pipeline/nightly", "--watch"],
                                   capture_output=True, text=True, timeout=400)
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr
        assert "Completed" in triggered.stdout + triggered.stderr
    finally:
        stop_group(server)
        log.close()
    (run_dir,) = list((runs / "mt_bench_pairs").iterdir())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "ok"
    assert all(s["balanced"] for s in manifest["stages"])
    assert (run_dir / "05_export").is_dir()


@pytest.fixture
def ray_cluster(tmp_path, ray_machine):
    """A head and one worker node, each its own set of processes on loopback, 1 CPU each."""
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    ray = str(BIN / "ray")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    head = subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                           f"--temp-dir={temp}", "--disable-usage-stats"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert head.returncode == 0, head.stdout + head.stderr
    try:
        worker = subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1",
                                 "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=120)
        assert worker.returncode == 0, worker.stdout + worker.stderr
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_pipeline_runs_on_a_two_node_ray_cluster(tmp_path, ray_cluster):
    address, env = ray_cluster
    pipeline = tiny_pipeline(tmp_path)
    deadline = time.time() + 90  # the head reports the cluster a few seconds after `ray start` returns
    while True:
        status = subprocess.run([str(BIN / "ray"), "status", f"--address={address}"], env=env,
                                capture_output=True, text=True, timeout=60)
        if "/2.0 CPU" in status.stdout or time.time() > deadline:
            break
        time.sleep(2)
    assert "/2.0 CPU" in status.stdout, status.stdout  # two nodes of one CPU each
    res = curate("run", pipeline, "--run-dir", tmp_path / "run", "--address", address, env={"RAY_AUTH_MODE": "token"})
    assert res.returncode == 0, res.stdout + res.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "ok" and all(s["balanced"] for s in manifest["stages"])
    assert manifest["stages"][1]["model_calls"] + manifest["stages"][1]["cache_hits"] == 4


def test_curate_deploy_runs_on_schedule_with_nothing_configured(tmp_path):
    """A user on a laptop: no PREFECT_API_URL, no server started. `curate deploy --interval 15` starts curate's
    local scheduler server and serves the deployment; finished runs appear under the run root every 15 s, and
    `curate deploy --status` shows the schedule, the next runs and the run directories."""
    import os
    import signal

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Name a colour, {i}."}) + "\n" for i in range(20)))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "dedup_only", "stages": [
        {"load": {"path": str(data)}}, {"dedup": {"method": "exact"}}]}))
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # a machine where nothing runs yet
    log = open(tmp_path / "serve.log", "w")
    served = subprocess.Popen([str(BIN / "curate"), "deploy", str(pipeline), "--interval", "15", "--name", "every15",
                               "--run-root", str(runs)], stdout=log, stderr=subprocess.STDOUT, env=env,
                              start_new_session=True, cwd=tmp_path)
    try:
        deadline = time.time() + 150
        done: list = []
        while time.time() < deadline and len(done) < 2:
            assert served.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            done = [p for p in (runs / "dedup_only").glob("*/manifest.json")
                    if json.loads(p.read_text()).get("status") == "ok"]
            time.sleep(2)
        assert len(done) >= 2, (tmp_path / "serve.log").read_text()[-3000:]
        status = subprocess.run([str(BIN / "curate"), "deploy", str(pipeline), "--name", "every15", "--status",
                                 "--run-root", str(runs)], capture_output=True, text=True, env=env, timeout=120)
        assert status.returncode == 0, status.stderr
        assert "every15" in status.stdout and "active, schedule every 15 s" in status.stdout
        assert "next:" in status.stdout and "run dir:" in status.stdout
    finally:
        os.killpg(served.pid, signal.SIGTERM)
        served.wait(timeout=60)
        state = tmp_path / "prefect-home" / "curate-scheduler" / "server.json"
        if state.exists():  # the scheduler server would stop by itself once idle; the test does not wait
            os.killpg(json.loads(state.read_text())["pid"], signal.SIGTERM)


def test_curate_deploy_warns_when_its_server_runs_no_scheduler(tmp_path):
    """PREFECT_API_URL pointed at a server without Prefect's scheduler (curate's own run server, ephemeral):
    nothing would ever run, and `curate deploy` says so in one line of its own."""
    import os
    import signal

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(5)))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "noop", "stages": [{"load": {"path": str(data)}}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    started = subprocess.run([str(BIN / "curate"), "server", "start"], env=env, capture_output=True, text=True,
                             timeout=180)
    assert started.returncode == 0, started.stderr
    env["PREFECT_API_URL"] = json.loads((tmp_path / "prefect-home" / "curate-server" / "server.json").read_text())["url"]
    log = tmp_path / "serve.log"
    served = subprocess.Popen([str(BIN / "curate"), "deploy", str(pipeline), "--interval", "15", "--name", "lost",
                               "--run-root", str(tmp_path / "runs")], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                              env=env, start_new_session=True)
    want = "scheduled no run of lost in 90 s: it runs no scheduler"
    try:
        deadline = time.time() + 150
        while time.time() < deadline and want not in " ".join(log.read_text().split()) and served.poll() is None:
            time.sleep(2)
    finally:
        os.killpg(served.pid, signal.SIGTERM)
        served.wait(timeout=60)
        subprocess.run([str(BIN / "curate"), "server", "stop"], env=env, capture_output=True, timeout=60)
    assert want in " ".join(log.read_text().split()), log.read_text()[-3000:]


def test_global_dedup_splits_across_both_nodes_and_keeps_what_one_machine_keeps(tmp_path, ray_cluster):
    """MinHash dedup on a two-node cluster: its key step's and its drop step's shards run on both nodes, the
    decision runs on Ray Data there, and the kept rows are those of the same pipeline on one machine."""
    from test_global_dedup import kept, pipeline, write_corpus

    address, env = ray_cluster
    data = tmp_path / "prompts.jsonl"
    write_corpus(data, 4000)
    spec = pipeline(tmp_path, data, "cluster_dedup", 200)
    local = curate("run", spec, "--run-dir", tmp_path / "local", env={"RAY_ADDRESS": None})
    assert local.returncode == 0, local.stdout + local.stderr
    res = curate("run", spec, "--run-dir", tmp_path / "cluster", "--address", address,
                 env={"RAY_AUTH_MODE": "token"})
    assert res.returncode == 0, res.stdout + res.stderr
    dedup = json.loads((tmp_path / "cluster" / "manifest.json").read_text())["stages"][1]
    assert len(dedup["decision"]["nodes"]) == 2, dedup["decision"]  # key shards per node
    assert len(dedup["nodes"]) == 2 and sum(dedup["nodes"].values()) == 20, dedup["nodes"]
    assert kept(tmp_path / "cluster") == kept(tmp_path / "local")
