"""What does a crash cost? Kill `curate run` with SIGKILL at a random point of generation, resume it with
`curate run --resume`, and compare with an uninterrupted run measured in the same session (its own empty cache).

Prints the model calls repeated by the resume (target: at most one shard's worth) and the total time
(killed part + resume) against the uninterrupted run.

    python benchmarks/resume_cost.py [--prompts 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import CURATE, ROOT, example_pipeline, print_table

def cached(cache: Path) -> int:
    from curate.engines.cache import ResponseCache

    return len(ResponseCache(cache))


def calls(run_dir: Path) -> int:
    return sum(s["model_calls"] for s in json.loads((run_dir / "manifest.json").read_text())["stages"])


def run(args: list[str], cache: Path) -> float:
    start = time.perf_counter()
    subprocess.run([CURATE, *args], check=True, capture_output=True, env={**os.environ, "CURATE_CACHE_DIR": str(cache)})
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    k = 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pipeline = example_pipeline(tmp, limit=args.prompts, shard_size=1, k=k, max_tokens=64)
        clean_s = run(["run", str(pipeline), "--run-dir", str(tmp / "clean")], tmp / "cache-clean")
        total_calls = calls(tmp / "clean")
        gen_shards = args.prompts

        # kill at a random number of finished generate shards, mid-way through the next one
        kill_after = rng.randint(1, gen_shards - 1)
        run_dir, cache = tmp / "killed", tmp / "cache-killed"
        markers = run_dir / "_done" / "02_generate"
        start = time.perf_counter()
        proc = subprocess.Popen([CURATE, "run", str(pipeline), "--run-dir", str(run_dir)],
                                env={**os.environ, "CURATE_CACHE_DIR": str(cache)}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        while len(list(markers.glob("part-*.json"))) < kill_after:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 1.5))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_s = time.perf_counter() - start
        done_at_kill = len(list(markers.glob("part-*.json")))
        calls_before = cached(cache)
        resume_s = run(["run", "--resume", str(run_dir)], cache)
        resume_calls = calls(run_dir)
        repeated = calls_before + resume_calls - total_calls
        # a repeated call is one the killed run made but never finished (in flight): no finished call repeats
        per_shard = total_calls / gen_shards
        rows = [
            ["uninterrupted run (baseline)", total_calls, "-", clean_s, 1.0],
            [f"killed after {done_at_kill}/{gen_shards} generate shards", calls_before, "-", killed_s,
             killed_s / clean_s],
            ["resume (--resume RUN_DIR)", resume_calls, repeated, resume_s, resume_s / clean_s],
            ["killed + resume", calls_before + resume_calls, repeated, killed_s + resume_s,
             (killed_s + resume_s) / clean_s],
        ]
    print_table(f"resume cost, {args.prompts} prompts x {k} candidates, shard = 1 prompt",
                ["run", "model calls", "finished calls made again", "seconds", "x baseline"], rows)
    print(f"\nfinished model calls made again after the kill: {repeated}; at most the calls in flight at the kill "
          f"(one per actor) are lost. One shard's worth is {per_shard:.0f} calls: "
          f"{'PASS' if repeated <= per_shard else 'FAIL'}")


if __name__ == "__main__":
    main()
