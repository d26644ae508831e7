"""How much of a served model's throughput does `curate run` keep? The same N one-completion requests, at the same
number in flight, against one local OpenAI-compatible server (benchmarks/latency_server.py: replies after a
seeded lognormal delay per prompt, or at once with --instant), sent by
  (a) a raw client: asyncio + one httpx.AsyncClient with a pool of C connections and a semaphore of C, and
  (b) `curate run` of the README's served-model example (pipelines/examples/served_model.yaml): its engines block
      and generate stage, pointed at this server, concurrency C, k=1, load's default shard size — a user's
      settings, nothing tuned,
  (c) peers, with --peer-python PY (a Python where bespokelabs-curator and distilabel are installed), on the
      same server (benchmarks/served_peers.py).
Runs alternate (raw, curate, raw, curate, ...); medians are compared. Prints wall time, requests/s, the ratio to
the raw client (target >= 0.90), the server's mean requests in flight and the TCP connections it accepted.
curate's wall is the whole command (imports, Ray, Prefect, files); its stage time is shown beside it. With no
PREFECT_API_URL (the README's setting) the command uses curate's local Prefect server; it is started once before
the timed runs, as the first run on a user's machine would have (`curate server start`), and stopped at the end.

    python benchmarks/served_throughput.py [--n 4000] [--concurrency 64] [--modes lognormal,instant] [--repeats 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from _common import CURATE, ROOT, free_port, print_table

HERE = Path(__file__).resolve().parent
MODEL = "bench"


def start_server(mode: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, str(HERE / "latency_server.py"), "--port", str(port)]
    if mode == "instant":
        args.append("--instant")
    proc = subprocess.Popen(args, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(base + "/v1/models", timeout=1)
            return proc, base
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the latency server did not start")


def server(base: str, path: str) -> dict:
    req = urllib.request.Request(base + path, method="POST" if path == "/reset" else "GET")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def prompts(n: int) -> list[str]:
    lines = (ROOT / "pipelines/examples/data/mt_bench_questions.jsonl").read_text().splitlines()
    turns = [json.loads(line)["turns"][0] for line in lines]
    return [f"[{i}] {turns[i % len(turns)]}" for i in range(n)]


async def raw_client(base: str, texts: list[str], concurrency: int, max_tokens: int) -> int:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    ok = 0
    async with httpx.AsyncClient(base_url=base + "/v1", limits=limits, timeout=httpx.Timeout(300, pool=None)) as c:
        async def one(text: str) -> None:
            nonlocal ok
            async with sem:
                r = await c.post("/chat/completions", json={
                    "model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens})
                ok += r.status_code == 200 and bool(r.json()["choices"][0]["message"]["content"])

        await asyncio.gather(*(one(t) for t in texts))
    return ok


def curate_pipeline(folder: Path, base: str, texts: list[str], concurrency: int, max_tokens: int) -> Path:
    """The README's served-model example with only the server, the concurrency, k and the data changed."""
    example = yaml.safe_load((ROOT / "pipelines/examples/served_model.yaml").read_text())
    data = folder / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    engine = {**example["engines"]["default"], "base_url": base + "/v1", "model": MODEL, "concurrency": concurrency}
    engine.pop("grammar_param", None)
    generate = example["stages"][1]["generate"]
    generate["models"][0].update(k=1, max_tokens=max_tokens)
    pipeline = {"name": "served_throughput", "cache_dir": str(folder / "cache"), "engines": {"default": engine},
                "stages": [{"load": {"path": str(data)}}, {"generate": generate}]}
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


def curate_env(folder: Path) -> dict:
    env = {**os.environ, "CURATE_CACHE_DIR": str(folder / "cache"), "PREFECT_HOME": str(folder / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    return env


def run_curate(folder: Path, pipeline: Path, n: int) -> tuple[float, float]:
    run_dir = folder / f"run-{time.time_ns()}"
    env = curate_env(folder)
    start = time.perf_counter()
    res = subprocess.run([CURATE, "run", str(pipeline), "--run-dir",
                          str(run_dir)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if res.returncode:
        raise SystemExit(f"curate run failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    gen = manifest["stages"][1]
    assert gen["out"] == n and gen["model_calls"] == n, gen
    # a fresh cache for the next run, so it makes every call again
    import shutil

    shutil.rmtree(folder / "cache", ignore_errors=True)
    return wall, gen["seconds"]


def run_peer(peer: str, python: str, base: str, prompts_file: Path, concurrency: int, max_tokens: int) -> dict | None:
    """A peer in its own Python (benchmarks/served_peers.py); None where it does not run here."""
    res = subprocess.run([python, str(HERE / "served_peers.py"), peer, "--base-url", base + "/v1", "--prompts",
                          str(prompts_file), "--concurrency", str(concurrency), "--max-tokens", str(max_tokens)],
                         capture_output=True, text=True, timeout=1800)
    if res.returncode:
        print(f"{peer} did not run: {res.stderr.strip().splitlines()[-1:] or res.returncode}", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--modes", default="lognormal,instant")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--peer-python", help="a Python with bespokelabs-curator and/or distilabel installed "
                    "(e.g. a venv of its own); peers run there on the same server")
    ap.add_argument("--peers", default="curator,distilabel", help="which peers to run with --peer-python")
    args = ap.parse_args()
    texts = prompts(args.n)
    rows = []
    for mode in args.modes.split(","):
        proc, base = start_server(mode)
        try:
            with tempfile.TemporaryDirectory(prefix="served-") as tmp:
                folder = Path(tmp)
                pipeline = curate_pipeline(folder, base, texts, args.concurrency, args.max_tokens)
                subprocess.run([CURATE, "server", "start"], check=True, capture_output=True, env=curate_env(folder))
                raw_walls, cur_walls, stage_walls = [], [], []
                raw_stats, cur_stats = {}, {}
                for _ in range(args.repeats):
                    server(base, "/reset")
                    start = time.perf_counter()
                    ok = asyncio.run(raw_client(base, texts, args.concurrency, args.max_tokens))
                    raw_walls.append(time.perf_counter() - start)
                    raw_stats = server(base, "/stats")
                    assert ok == args.n, ok
                    server(base, "/reset")
                    wall, stage = run_curate(folder, pipeline, args.n)
                    cur_walls.append(wall)
                    stage_walls.append(stage)
                    cur_stats = server(base, "/stats")
                raw = statistics.median(raw_walls)
                cur = statistics.median(cur_walls)
                stage = statistics.median(stage_walls)
                rows.append([mode, "raw httpx client", raw, args.n / raw, 1.0, raw_stats["mean_in_flight"],
                             raw_stats["connections"]])
                rows.append([mode, "curate run (whole command)", cur, args.n / cur, raw / cur,
                             cur_stats["mean_in_flight"], cur_stats["connections"]])
                rows.append([mode, "curate: generate stage alone", stage, args.n / stage, raw / stage, "", ""])
                subprocess.run([CURATE, "server", "stop"], capture_output=True, env=curate_env(folder))
                for peer in args.peers.split(",") if args.peer_python else ():
                    server(base, "/reset")
                    got = run_peer(peer, args.peer_python, base, folder / "prompts.jsonl", args.concurrency,
                                   args.max_tokens)
                    if got is not None:
                        st = server(base, "/stats")
                        rows.append([mode, peer, got["seconds"], args.n / got["seconds"], raw / got["seconds"],
                                     st["mean_in_flight"], st["connections"]])
        finally:
            proc.terminate()
            proc.wait()
    print_table(f"{args.n} requests, {args.concurrency} in flight wanted, median of {args.repeats} alternating runs",
                ["server", "client", "wall s", "req/s", "ratio to raw", "mean in flight", "connections"], rows)


if __name__ == "__main__":
    main()
