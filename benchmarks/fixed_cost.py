"""How much of a small `curate run` is spent outside its stages? (target <= 5 s on a warm machine)

The pipeline is load -> dedup -> decontaminate on 200 MT-Bench-style prompts (stages take well under a second),
so the wall time is almost all fixed cost: interpreter and imports, Prefect (its temporary server, or a
configured one), Ray when a stage needs it, writing the manifest, teardown. Measured three ways, median of
`--repeats` runs each, beside the baseline of the bare interpreter importing curate's CLI in the same run:

  nothing configured, first run   a new PREFECT_HOME each time: the run starts curate's local Prefect server
                                  (flows/local_server.py) and migrates a new database
  nothing configured, warm        later runs on the machine: they reuse that server (what a user who sets
                                  nothing gets from the second run on)
  Prefect's temporary server      CURATE_PREFECT_SERVER=temporary: Prefect starts and stops one per run (what
                                  every run paid before the local server)
  configured Prefect server       PREFECT_API_URL pointing at a running `prefect server start` (a team's setup)
  4 pure shards, 2 workers        the same on 200k rows in 4 shards, so the runner starts local Ray for the workers
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from _common import CURATE, ROOT, free_port, print_table

def pipeline(folder: Path, rows: int, shard_size: int) -> Path:
    src = (ROOT / "pipelines" / "examples" / "data" / "mt_bench_questions.jsonl").read_text().splitlines()
    with open(folder / "prompts.jsonl", "w") as fh:
        for i in range(rows):
            rec = json.loads(src[i % len(src)])
            fh.write(json.dumps({"prompt": f"{rec['turns'][0]} (variant {i})"}) + "\n")
    spec = {"name": "fixed_cost", "stages": [
        {"load": {"path": str(folder / "prompts.jsonl"), "shard_size": shard_size}},
        {"dedup": {"method": "exact"}},
        {"decontaminate": {"benchmarks": [{"name": "mt_bench", "field": "turns", "path": str(
            ROOT / "pipelines" / "examples" / "data" / "mt_bench_questions.jsonl")}]}}]}
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def one_run(spec: Path, run_dir: Path, env: dict, fresh_home: bool = False) -> tuple[float, float]:
    """(wall seconds, seconds inside stages) of one `curate run` (with `fresh_home`, in a PREFECT_HOME of its own,
    whose local server is stopped afterwards)."""
    if fresh_home:
        env = {**env, "PREFECT_HOME": str(run_dir) + "-prefect-home"}
    start = time.perf_counter()
    subprocess.run([CURATE, "run", str(spec), "--run-dir", str(run_dir)], check=True, capture_output=True, env=env)
    wall = time.perf_counter() - start
    stages = sum(s["seconds"] for s in json.loads((run_dir / "manifest.json").read_text())["stages"])
    if fresh_home:
        subprocess.run([CURATE, "server", "stop"], check=True, capture_output=True, env=env)
    return wall, stages


def start_prefect(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home)}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("prefect server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = pipeline(tmp, 200, 4096)
        (tmp / "big").mkdir()
        big = pipeline(tmp / "big", 200_000, 50_000)
        base_env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"), "CURATE_CACHE_DIR": str(tmp / "cache"),
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        base_env.pop("PREFECT_API_URL", None)
        base_env.pop("RAY_ADDRESS", None)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import curate.pipelines.cli"], check=True, cwd=ROOT)
            times.append(time.perf_counter() - start)
        baseline = statistics.median(times)
        rows = [["python -c 'import curate.pipelines.cli' (baseline)", baseline, 0.0, baseline]]
        server, url = start_prefect(tmp / "prefect-server-home")
        try:
            # the warm case's server is started by a run before the timed ones
            one_run(small, tmp / "warm-up", base_env)
            cases = [("nothing configured, first run", small, base_env, True),
                     ("nothing configured, warm (local server reused)", small, base_env, False),
                     ("Prefect's temporary server", small, {**base_env, "CURATE_PREFECT_SERVER": "temporary"}, False),
                     ("configured Prefect server", small, {**base_env, "PREFECT_API_URL": url}, False),
                     ("4 pure shards of 50k rows (local Ray)", big, {**base_env, "PREFECT_API_URL": url}, False)]
            for name, spec, env, fresh in cases:
                walls, inside = [], []
                for i in range(args.repeats):
                    w, s = one_run(spec, tmp / f"run-{len(rows)}-{i}", env, fresh)
                    walls.append(w)
                    inside.append(s)
                w, s = statistics.median(walls), statistics.median(inside)
                rows.append([name, w, s, w - s])
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait()
            subprocess.run([CURATE, "server", "stop"], capture_output=True, env=base_env)
    print_table(f"curate run fixed cost, median of {args.repeats} runs",
                ["case", "wall s", "in stages s", "outside stages s"], rows)
    for name, _, _, outside in rows[2:3] + rows[4:5]:
        print(f"{name}: {outside:.1f} s outside the stages (target <= 5 s): {'PASS' if outside <= 5 else 'FAIL'}")


if __name__ == "__main__":
    main()
