"""Does memory stay flat as data grows? Peak RSS of a filter -> dedup (MinHash on chosen) -> export pipeline
over 100k and 1M pair rows (Parquet shards of 10k rows), run in one process through the same shard worker the
Ray actors run. Baseline: 100k rows. Target: <= 1.2x growth at 10x the rows.

Dedup's decision step holds the key columns of every row (polars' streaming group-by over the shards' key
files) and the duplicate links it finds; its per-shard steps stream.

    python benchmarks/memory_scaling.py [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ROOT, print_table

SHARD = 10_000


def write_pairs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.schemas.records import PAIR_ROW

    words = np.array(sorted({w.strip(".,!?;:()\"'").lower() for line in
                             open(ROOT / "pipelines/examples/data/mt_bench_questions.jsonl")
                             for w in json.loads(line)["turns"][0].split()} - {""}))
    rng = np.random.default_rng(seed)
    paths = []
    for s, lo in enumerate(range(0, n, SHARD)):
        m = min(SHARD, n - lo)

        def texts(lo_w, hi_w):
            lens = rng.integers(lo_w, hi_w, size=m)
            idx = rng.integers(0, len(words), size=int(lens.sum()))
            cuts = np.cumsum(lens)[:-1]
            return [" ".join(part) for part in np.split(words[idx], cuts)]

        cs = rng.integers(1, 11, size=m).astype(float)
        rs = np.maximum(cs - rng.integers(0, 5, size=m), 1).astype(float)
        prompts = texts(8, 20)
        table = pa.table({
            "prompt_id": [f"p{lo + i}" for i in range(m)], "prompt": prompts,
            "messages": [[{"role": "user", "content": p}] for p in prompts],
            "chosen": texts(20, 60), "rejected": texts(20, 60),
            "chosen_score": cs, "rejected_score": rs, "margin": cs - rs, "agreement": np.ones(m),
        })
        table = pa.table({f.name: table[f.name] if f.name in table.column_names else pa.nulls(m, f.type)
                          for f in PAIR_ROW}, schema=PAIR_ROW)
        path = folder / f"part-{s:05d}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    return paths


PIPELINES = {
    "filter -> dedup -> export": [("filter", {"min_margin": 1, "max_longer_share": 0.55}),
                                  ("dedup", {"method": "minhash", "field": "chosen", "id_field": "prompt_id"}),
                                  ("export", {})],
    "filter -> export (no dedup)": [("filter", {"min_margin": 1, "max_longer_share": 0.55}), ("export", {})],
}


def child(folder: Path, name: str) -> None:
    import pyarrow.parquet as pq

    from curate.pipelines.rundir import work_folder
    from curate.pipelines.worker import ShardWorker
    from curate.stages.dupsets import Keys

    stages = PIPELINES[name]
    inputs = sorted(folder.glob("part-*.parquet"))
    run_dir = folder / f"run-{len(stages)}"
    start = time.perf_counter()
    rows = {}
    for i, (name, cfg) in enumerate(stages):
        sid = f"{i + 2:02d}_{name}"
        worker = ShardWorker(name, sid, cfg, {}, None, str(run_dir), batch_size=4096)
        offsets = np.cumsum([0] + [pq.ParquetFile(p).metadata.num_rows for p in inputs])
        if worker.spec.decides:  # global dedup's first steps, as the runner takes them: keys, then the decision
            key_files = [json.loads(worker.run_shard(shard, str(path), "bench", offset=int(offsets[shard]),
                                                     phase="keys")["marker"])["keys"]
                         for shard, path in enumerate(inputs)]
            decisions = worker.spec.decides.decide(Keys(files=key_files), worker.config, False)
            pq.write_table(decisions, work_folder(run_dir, sid) / "decisions.parquet")
        outputs = []
        for shard, path in enumerate(inputs):
            offset = int(offsets[shard]) if worker.spec.decides else None
            marker = json.loads(worker.run_shard(shard, str(path), "bench", offset=offset)["marker"])
            outputs.append(Path(marker["output"]))
            rows[name] = rows.get(name, 0) + marker["rows_out"]
        inputs = outputs
    print(json.dumps({"seconds": time.perf_counter() - start, "rows_out": rows,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--child", type=Path)
    ap.add_argument("--pipeline", default=next(iter(PIPELINES)))
    args = ap.parse_args()
    if args.child:
        child(args.child, args.pipeline)
        return
    rows, base = [], {}
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            write_pairs(Path(tmp), n)
            for name in PIPELINES:
                out = subprocess.run([sys.executable, __file__, "--child", tmp, "--pipeline", name], check=True,
                                     capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                base.setdefault(name, r["peak_rss_mb"])
                rows.append([name, f"{n:,}", r["rows_out"]["export"], r["seconds"], r["peak_rss_mb"],
                             r["peak_rss_mb"] / base[name]])
    print_table("peak RSS, one process, shards of 10k rows (baseline: the same pipeline on the smallest size)",
                ["pipeline", "rows in", "rows out", "seconds", "peak RSS MB", "x baseline"], rows)
    growth = rows[-2][5]
    print(f"\nRSS growth of filter -> dedup -> export at {args.sizes[-1] // args.sizes[0]}x the rows: {growth:.2f}x "
          f"(target <= 1.2x): {'PASS' if growth <= 1.2 else 'FAIL'}; without dedup's index: {rows[-1][5]:.2f}x")


if __name__ == "__main__":
    main()
