"""A local Prefect server that outlives one run, so the next `curate run` on the machine does not start another.

With no PREFECT_API_URL, Prefect starts a temporary server for every run and stops it at exit: about 10 s of a
small run's wall time here (importing and starting Prefect's API, then migrating its SQLite database). curate
instead starts the same server (Prefect's API app, as Prefect's temporary server runs it, on the same database
under PREFECT_HOME) as a process of its own, and later runs reuse it; it exits by itself once no curate process
has used it for `CURATE_PREFECT_IDLE_S` seconds (default 30 minutes), the way a build tool's daemon does.
`CURATE_PREFECT_SERVER=temporary` keeps Prefect's own per-run server; a configured PREFECT_API_URL is used as it
is (nothing here runs then).

The state lives in PREFECT_HOME/curate-server/: `server.json` (pid, url), `clients/<pid>` (the curate processes
using it; the server stays up while one of them is alive) and `server.log`. One lock file orders the client that
checks and registers against the server that decides to exit, so a run never connects to a server on its way out.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

IDLE_S = float(os.environ.get("CURATE_PREFECT_IDLE_S", 1800))


def state_dir(scheduler: bool = False) -> Path:
    """PREFECT_HOME (env or Prefect's default) / curate-server, without importing Prefect (that takes seconds).

    `scheduler`: the server `curate deploy` uses (curate-scheduler/): Prefect's API with its background
    services, the scheduler among them, on a database of its own (the runs' server skips the services: they cost
    every `curate run` a slower start, and a run schedules nothing)."""
    home = os.environ.get("PREFECT_HOME") or str(Path.home() / ".prefect")
    return Path(home).expanduser() / ("curate-scheduler" if scheduler else "curate-server")


@contextlib.contextmanager
def _locked(folder: Path):
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    """The process runs (a zombie left unreaped by a container's init counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def _read_state(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "server.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _prefect_version() -> str:
    """The installed Prefect's version: from the module a run has imported already, else from the package
    metadata (a lookup over site-packages, ~50 ms, that `curate server start` pays without importing Prefect)."""
    if "prefect" in sys.modules:
        return sys.modules["prefect"].__version__
    from importlib.metadata import version

    return version("prefect")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(startup_timeout: float = 120.0, scheduler: bool = False) -> tuple[str, bool]:
    """(API URL, whether this call started it) of this machine's curate Prefect server, started when none
    answers; this process is registered as a client until it exits (the server stays up while it lives: a
    `curate deploy` serving a schedule keeps its scheduler up). `scheduler`: the server with Prefect's scheduler."""
    folder = state_dir(scheduler)
    with _locked(folder):
        state = _read_state(folder)
        # a server of another Prefect install (another venv sharing PREFECT_HOME) is left to itself: it stops when
        # idle, and this install starts its own
        started = not (state and state.get("prefect") == _prefect_version() and _alive(state["pid"])
                       and _healthy(state["url"]))
        if started:
            state = _start(folder, startup_timeout, scheduler)
        clients = folder / "clients"
        clients.mkdir(exist_ok=True)
        (clients / str(os.getpid())).touch()
    import atexit

    atexit.register(lambda: (clients / str(os.getpid())).unlink(missing_ok=True))
    return state["url"], started


def _start(folder: Path, timeout: float, scheduler: bool = False) -> dict:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = open(folder / "server.log", "a")
    env = {**os.environ, "PREFECT_UI_ENABLED": "0"}
    if scheduler:  # its own database, and the scheduler looking every few seconds (Prefect's default is 60 s)
        env |= {"PREFECT_HOME": str(folder), "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
                "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "5"}
    else:
        env["PREFECT__SERVER_EPHEMERAL"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "curate.flows.local_server", str(port)] + (["--scheduler"] * scheduler),
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=str(Path(__file__).resolve().parent.parent), env=env)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the local Prefect server exited with code {proc.returncode} while starting; see "
                               f"{folder / 'server.log'}")
        if _healthy(url, timeout=1.0):
            state = {"pid": proc.pid, "url": url, "idle_s": IDLE_S, "prefect": _prefect_version(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "scheduler": scheduler}
            (folder / "server.json").write_text(json.dumps(state))
            return state
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the local Prefect server did not answer {url}/health in {timeout:.0f} s; see "
                       f"{folder / 'server.log'}")


def status(scheduler: bool = False) -> dict | None:
    """The running server's state (pid, url, clients alive), or None."""
    folder = state_dir(scheduler)
    state = _read_state(folder)
    if not (state and _alive(state["pid"])):
        return None
    state["clients"] = _live_clients(folder)
    return state


def stop(timeout: float = 15.0, scheduler: bool = False) -> bool:
    """Stop the running server (SIGTERM, as Prefect stops its temporary one); True when one was running."""
    import signal

    folder = state_dir(scheduler)
    with _locked(folder):
        state = _read_state(folder)
        (folder / "server.json").unlink(missing_ok=True)
    if not (state and _alive(state["pid"])):
        return False
    os.killpg(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(state["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(state["pid"]):
        os.killpg(state["pid"], signal.SIGKILL)
    return True


def _live_clients(folder: Path) -> list[int]:
    """The pids of the curate processes registered as clients that still run (the entries of dead ones, a run
    that was killed, are removed)."""
    live = []
    for p in (folder / "clients").glob("*"):
        if p.name.isdigit() and _alive(int(p.name)):
            live.append(int(p.name))
        else:
            p.unlink(missing_ok=True)
    return live


def _idle(folder: Path, last_request: list[float]) -> bool:
    """No live client and no request for IDLE_S; then the server gives up its state file under the lock (a
    client that comes after starts a new server)."""
    if _live_clients(folder):
        last_request[0] = time.monotonic()
        return False
    if time.monotonic() - last_request[0] < IDLE_S:
        return False
    with _locked(folder):  # a client may have registered since: it holds this lock while it does
        if _live_clients(folder):
            return False
        state = _read_state(folder)
        if state and state.get("pid") == os.getpid():
            (folder / "server.json").unlink(missing_ok=True)
    return True


def main(port: int, scheduler: bool = False) -> None:
    """Serve Prefect's API app (as its temporary server does; with its services when `scheduler`) until idle."""
    import uvicorn
    from prefect.server.api.server import create_app

    folder = Path(os.environ["PREFECT_HOME"]) if scheduler else state_dir()
    app = create_app(ephemeral=not scheduler)
    last_request = [time.monotonic()]

    async def tracked(scope, receive, send):  # every request counts as activity
        if scope["type"] == "http":
            last_request[0] = time.monotonic()
        await app(scope, receive, send)

    server = uvicorn.Server(uvicorn.Config(tracked, host="127.0.0.1", port=port, log_level="error", lifespan="on"))

    def watch() -> None:
        while not server.should_exit:
            time.sleep(min(5.0, max(0.5, IDLE_S / 4)))
            if _idle(folder, last_request):
                server.should_exit = True

    threading.Thread(target=watch, daemon=True, name="idle-watch").start()
    server.run()


if __name__ == "__main__":
    main(int(sys.argv[1]), scheduler="--scheduler" in sys.argv[2:])
