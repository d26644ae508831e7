"""Does a CPU-bound stage scale with Ray workers? Generation (llama.cpp, one thread per engine) on 1 vs 2 actors,
same prompts, same seeds, empty cache each time; baseline: 1 actor. Target: >= 1.7x on 2 workers.

    python benchmarks/ray_scaling.py [--prompts 8] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from _common import example_pipeline, print_table


RAW = """
import sys
from curate.engines.llama_cpp import LlamaCppEngine
from curate.engines.base import Request, Sampling
e = LlamaCppEngine(n_threads=1)
for i in range(int(sys.argv[1]), int(sys.argv[2])):
    e.complete([Request([{"role": "user", "content": f"Tell me a long story about dragon number {i}."}],
                        Sampling(max_tokens=int(sys.argv[3]), seed=i, temperature=0.8))])
"""


def raw_ceiling(prompts: int, max_tokens: int) -> float:
    """The machine's own speed-up: the same model in 1 vs 2 plain processes, no Ray (what 2 cores can give)."""
    import subprocess
    import sys
    import time

    def wall(n: int) -> float:
        step = prompts // n
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", RAW, str(i * step), str((i + 1) * step), str(max_tokens)])
                 for i in range(n)]
        for p in procs:
            assert p.wait() == 0
        return time.perf_counter() - start

    return wall(1) / wall(2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    workers = [1, 2]
    from curate.pipelines.config import load_pipeline
    from curate.pipelines.runner import run_pipeline

    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for n in workers:
            folder = Path(tmp) / f"w{n}"
            path = example_pipeline(folder, limit=args.prompts, shard_size=1, k=1, max_tokens=args.max_tokens,
                                    generate_extra={"concurrency": n}, engine={"n_threads": 1})
            data = yaml.safe_load(path.read_text())
            data["stages"] = data["stages"][:2]  # load + generate: the CPU-bound stage alone
            data["cache_dir"] = str(folder / "cache")  # an empty cache: every call runs
            path.write_text(yaml.safe_dump(data))
            manifest = run_pipeline(load_pipeline(path), folder / "run")
            gen = manifest["stages"][1]
            assert gen["model_calls"] == args.prompts, gen
            base = base or gen["seconds"]
            rows.append([n, gen["model_calls"], gen["seconds"], base / gen["seconds"]])
    ceiling = raw_ceiling(args.prompts, args.max_tokens)
    rows.append(["2 plain processes, no Ray (the machine's ceiling)", "-", "-", ceiling])
    print_table(f"generate stage, {args.prompts} prompts x {args.max_tokens} tokens, llama.cpp 1 thread/actor",
                ["ray workers", "model calls", "seconds", "speed-up vs 1"], rows)
    print(f"\nspeed-up on 2 workers: {rows[1][3]:.2f}x (target >= 1.7x): {'PASS' if rows[1][3] >= 1.7 else 'FAIL'}; "
          f"the same model in 2 plain processes gets {ceiling:.2f}x here")


if __name__ == "__main__":
    main()
