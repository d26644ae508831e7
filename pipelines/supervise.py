"""`curate run` in a child process, so that a native crash is a failed run with a reason, not a silent death.

A model engine that runs in the run's own process (llama.cpp, transformers, vLLM offline) can take the process
down with a signal: a segfault in a native kernel, an illegal instruction from a wheel built for another CPU, the
OOM killer. Python cannot report that from inside. The `curate` command therefore starts `curate run` as a child
and watches it: the child tells it, over a pipe, its run directory and each stage as it starts (with the engines
that stage uses); if the child dies by a signal, this process writes `failed` with the reason into the run's
manifest, prints one line naming the stage, the engines and the signal, and exits with 128 + the signal number.
The child's Python stack at the crash is in RUN_DIR/curate.log (faulthandler).

The child dies with its parent (PR_SET_PDEATHSIG), so killing the `curate` process still stops the run, and the
terminal's Ctrl-C reaches the child directly (this process ignores it and waits for the child to finish up).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: set in the child's environment: the file descriptor of the pipe to its supervisor
REPORT_FD = "CURATE_REPORT_FD"


def tell(kind: str, value: object) -> None:
    """One line to the supervising `curate` process (nothing when this process is not supervised)."""
    fd = os.environ.get(REPORT_FD)
    if fd is None:
        return
    try:
        os.write(int(fd), (json.dumps([kind, value]) + "\n").encode())
    except OSError:  # the supervisor is gone: the run carries on (PR_SET_PDEATHSIG ends it if it must)
        pass


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the supervising process dies (Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_supervised(argv: list[str]) -> int:
    """Run `curate <argv>` (a `run` command) in a child; return the exit code for this process."""
    read, write = os.pipe()
    env = {**os.environ, REPORT_FD: str(write)}
    # the terminal sends Ctrl-C to the whole process group: the child handles it, this process waits for it
    signal.signal(signal.SIGINT, lambda *_: None)
    child = subprocess.Popen([sys.executable, "-m", "curate.pipelines.cli", *argv], env=env, pass_fds=(write,),
                             preexec_fn=_die_with_parent)
    os.close(write)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # a `kill PID` of this process reaches the run
        signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    state: dict = {"stages": {}}
    with os.fdopen(read, "rb") as pipe:
        for line in pipe:  # until the child exits (its end of the pipe closes)
            try:
                kind, value = json.loads(line)
            except ValueError:
                continue
            state[kind] = value
    code = child.wait()
    if code >= 0:
        return code
    sig = signal.Signals(-code).name
    reason = crash_reason(state, sig)
    run_dir = state.get("run_dir")
    if run_dir:
        mark_failed(Path(run_dir), reason)
    print(f"run failed: {reason}", file=sys.stderr, flush=True)
    if run_dir:
        print(f"partial results and manifest: {run_dir}; Python stack at the crash: {run_dir}/curate.log",
              file=sys.stderr, flush=True)
    return 128 - code


def crash_reason(state: dict, sig: str) -> str:
    """One line: which stage died, on which engines, by which signal."""
    stage = state.get("stage")
    if stage is None:
        return f"the run's process died with {sig} before its first stage"
    engines = state["stages"].get(stage) or []
    where = f"in engine {', '.join(engines)}" if engines else "(no model engine: a native library)"
    hint = " (a native crash)" if sig in ("SIGSEGV", "SIGILL", "SIGBUS", "SIGFPE", "SIGABRT") else (
        " (killed: out of memory?)" if sig == "SIGKILL" else "")
    return f"stage {stage} died with {sig} {where}{hint}"


def mark_failed(run_dir: Path, reason: str) -> None:
    """Record the crash in the manifest the child left (status `running`), as the run itself records a failure."""
    path = run_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if manifest.get("status") != "running":
        return
    from curate.pipelines.rundir import atomic_write_json  # loaded on a crash only: the supervisor stays light

    manifest.update(status="failed", error=reason, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write_json(manifest, path)


def main() -> None:
    """The `curate` command: `curate run` is supervised (see above); every other command runs here."""
    argv = sys.argv[1:]
    if argv[:1] == ["run"] and REPORT_FD not in os.environ and not {"--help", "-h"} & set(argv):
        sys.exit(run_supervised(argv))
    from curate.pipelines.cli import main as cli_main

    cli_main()
