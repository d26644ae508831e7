"""Shared fixtures. Tests use the real parts: local Ray, the embedded llama.cpp model, real Parquet files."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA = ROOT / "tests" / "data"
EXAMPLES = ROOT / "pipelines" / "examples"


def pytest_configure(config):
    """Under pytest-xdist (`./scripts/test` runs two workers) each worker gets its own share of the CPUs, and
    everything it starts inherits it: llama.cpp and Ray size themselves by the affinity mask
    (`engines.base.usable_cpus`), so two model tests side by side never put two spinning threads on one core."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= count:
            os.sched_setaffinity(0, cpus[int(worker.removeprefix("gw")) % count::count])


@contextlib.contextmanager
def machine_lock(tmp_path_factory, name: str):
    """Held by one pytest-xdist worker at a time; yields this session's folder, which both workers share (each
    worker's temp dir is a folder inside it; without xdist it is the temp dir itself, never the parent
    /tmp/pytest-of-<user> that earlier sessions share)."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    session = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with open(session / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield session


@pytest.fixture
def ray_machine(tmp_path_factory):
    """For the tests that start Ray: one at a time on the machine, since the two-node cluster test's
    `ray stop --force` stops every Ray process here, the other worker's too."""
    with machine_lock(tmp_path_factory, "ray"):
        yield


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    """Keep caches, Prefect's home and Ray's temp files out of the user's home."""
    base = tmp_path_factory.mktemp("env")
    os.environ["CURATE_CACHE_DIR"] = str(base / "cache")
    os.environ["PREFECT_HOME"] = str(base / "prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    yield


@pytest.fixture(scope="session")
def hf_model(tmp_path_factory) -> Path:
    """The embedded SmolLM2-135M converted to a Hugging Face folder (benchmarks/gguf_to_hf.py), once per session:
    the transformers engine and the TRL trainers load it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gguf_to_hf import convert

    with machine_lock(tmp_path_factory, "hf_model") as shared:  # once for both workers (convert skips a done one)
        return convert(shared / "smollm2-hf")


@pytest.fixture
def repo_data() -> Path:
    """The real upstream files under tests/data (see its README for sources and licences)."""
    return TEST_DATA


@pytest.fixture
def copy_data(tmp_path, repo_data):
    """Copy a file from tests/data (or, for `examples/...`, pipelines/examples/data) into the test's folder, so a
    test never writes next to the repository's data."""

    def copy(rel: str) -> Path:
        src = EXAMPLES / "data" / rel.removeprefix("examples/") if rel.startswith("examples/") else repo_data / rel
        dst = tmp_path / Path(rel).name
        shutil.copy(src, dst)
        return dst

    return copy


def curate(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run the `curate` CLI as a user would, in a subprocess. `env` values of None unset a variable."""
    exe = Path(sys.executable).parent / "curate"
    full = {**os.environ, **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full)


def serve_local(handler_class) -> tuple:
    """A real threaded HTTP server on a free local port with this handler: (server, base URL ending in /v1)."""
    import threading
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler_class)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def send_json(handler, data: bytes, status: int = 200) -> None:
    """Answer an HTTP request with a JSON body."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def local_prefect_server(_isolated_env):
    """The tests' runs go as a user's do with nothing configured: through curate's local Prefect server
    (flows/local_server.py), started here once for the session (this process is its client until the end, so it
    never stops for being idle) and stopped after the last test."""
    from curate.flows.local_server import connect, stop

    os.environ.pop("PREFECT_API_URL", None)
    url, _ = connect()
    yield url
    stop()


@pytest.fixture(scope="session")
def full_prefect_server(_isolated_env, tmp_path_factory):
    """A real `prefect server start` (UI, scheduler and the other services) for the tests that need a team's
    server, such as a served deployment's scheduled runs; started on first use."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("prefect-server") / "server.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        pytest.fail("the local Prefect server did not answer /api/health in 90 s")
    yield url
    stop_group(proc)
    log.close()


@pytest.fixture
def prefect_server(full_prefect_server, monkeypatch):
    """PREFECT_API_URL points at the full server for this test (and the processes it starts)."""
    monkeypatch.setenv("PREFECT_API_URL", full_prefect_server)
    return full_prefect_server


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a process started with start_new_session=True, and everything it started."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def example_pipeline(tmp_path: Path, name: str, *edits: tuple[str, str]) -> Path:
    """An example pipeline with its data in a temp folder, its own response cache, and optional text edits."""
    shutil.copytree(EXAMPLES / "data", tmp_path / "data", dirs_exist_ok=True)
    text = (EXAMPLES / f"{name}.yaml").read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(text.replace(f"name: {name}\n", f"name: {name}\ncache_dir: {tmp_path / 'cache'}\n", 1))
    return spec


def accounted(run: Path) -> dict:
    """A finished run's manifest, checked: status ok, and every stage's rows add up."""
    import json

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "ok", manifest.get("error")
    for s in manifest["stages"]:
        assert s["in"] == s["out"] + s["dropped"] + s["quarantined"], s
    return manifest


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """The embedded model behind llama-cpp-python's OpenAI-compatible server (a real served model)."""
    from curate.engines.llama_cpp import embedded_model_path

    port = free_port()
    log = open(tmp_path_factory.mktemp("llama-server") / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "curate.engines.llama_server", "--model", str(embedded_model_path()),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/models", timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    else:
        stop_group(proc)
        pytest.fail("llama_cpp.server did not start")
    yield url
    stop_group(proc)
    log.close()
