"""Do pure stages scale with default settings? The real CLI (`curate run`: Ray, Prefect, Parquet files) on
load -> dedup (exact) -> decontaminate (13-gram against MT-Bench) over N synthetic prompts (MT-Bench words, 5%
exact duplicates up to case and punctuation, 1% carrying a benchmark prompt), with load's default shard size and
with the shard sizes given, plus one in-process polars baseline doing the same exact dedup.

Prints wall time, rows/s, files written, peak RSS of every process of the run (the CLI and each Ray worker,
sampled), and: the default shard size's wall over the best shard size's (target <= 1.2 at 100k), and 1M's wall
over 100k's (target <= 11) and peak RSS ratio (target <= 1.2).

(filter and export work on pair rows, which need judged candidates, so this pure pipeline stops at
decontaminate.)

    python benchmarks/scale_pure.py [--sizes 100000 1000000] [--shard-sizes 1024 10000 25000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from _common import CURATE, ROOT, print_table

BENCH = ROOT / "pipelines/examples/data/mt_bench_questions.jsonl"


def write_prompts(path: Path, n: int, seed: int = 0) -> None:
    turns = [json.loads(line)["turns"][0] for line in BENCH.read_text().splitlines()]
    words = sorted({w.strip(".,!?;:()\"'").lower() for t in turns for w in t.split()} - {""})
    words = np.array(words)
    rng = np.random.default_rng(seed)
    lens = rng.integers(8, 40, size=n)
    idx = rng.integers(0, len(words), size=int(lens.sum()))
    texts = [" ".join(part) for part in np.split(words[idx], np.cumsum(lens)[:-1])]
    for i in rng.choice(n, size=n // 20, replace=False):  # exact duplicates, up to case and punctuation
        texts[i] = texts[int(rng.integers(0, n))].upper() + "!"
    for i in rng.choice(n, size=n // 100, replace=False):  # contaminated: carries a benchmark prompt
        texts[i] = texts[i] + " " + turns[int(rng.integers(0, len(turns)))]
    with open(path, "w") as fh:
        for t in texts:
            fh.write(json.dumps({"prompt": t}) + "\n")


def pipeline(folder: Path, data: Path, shard_size: int | None) -> Path:
    load = {"path": str(data)}
    if shard_size:
        load["shard_size"] = shard_size
    spec = {"name": "scale_pure", "stages": [
        {"load": load},
        {"dedup": {"method": "exact"}},
        {"decontaminate": {"benchmarks": [{"name": "mt-bench", "path": str(BENCH), "field": "turns"}]}},
    ]}
    path = folder / f"pipeline-{shard_size or 'default'}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tree_rss(pid: int) -> dict[int, int]:
    """RSS (bytes) of a process and of every descendant, by pid (ray workers included: they start under the
    CLI's raylet)."""
    import psutil

    out = {}
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                out[p.pid] = p.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return out


def run(folder: Path, spec: Path, label: str) -> dict:
    run_dir = folder / f"run-{label}"
    env = {**os.environ, "CURATE_CACHE_DIR": str(folder / "cache")}
    peak: dict[int, int] = {}
    start = time.perf_counter()
    proc = subprocess.Popen([CURATE, "run", str(spec), "--run-dir",
                             str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            for pid, rss in tree_rss(proc.pid).items():
                peak[pid] = max(peak.get(pid, 0), rss)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out = proc.communicate()[0]
    wall = time.perf_counter() - start
    stop.set()
    t.join()
    if proc.returncode:
        raise SystemExit(f"curate run failed:\n{out[-4000:]}")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    files = sum(1 for p in run_dir.rglob("*") if p.is_file())
    stages = {s["id"]: s for s in manifest["stages"]}
    return {"wall": wall, "files": files, "peak_rss_mb": max(peak.values()) / 2**20 if peak else 0.0,
            "stage_s": sum(s["seconds"] for s in stages.values()), "out": manifest["stages"][-1]["out"]}


def polars_baseline(data: Path) -> tuple[float, int]:
    import polars as pl

    start = time.perf_counter()
    df = pl.read_ndjson(data)
    norm = (pl.col("prompt").str.to_lowercase().str.replace_all(r"[^\w\s]", "").str.replace_all(r"\s+", " ")
            .str.strip_chars())
    kept = df.with_columns(norm.alias("_n")).unique(subset="_n", keep="first", maintain_order=True)
    return time.perf_counter() - start, kept.height


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--shard-sizes", type=int, nargs="*", default=[1024, 10_000, 25_000],
                    help="shard sizes tried beside the default, at the smallest size only")
    args = ap.parse_args()
    from curate.stages.load import Config as LoadConfig

    default = LoadConfig.model_fields["shard_size"].default
    rows, by_size = [], {}
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        folder = Path(tmp)
        for n in args.sizes:
            data = folder / f"prompts-{n}.jsonl"
            write_prompts(data, n)
            base_s, base_kept = polars_baseline(data)
            rows.append([n, "polars in-process exact dedup", base_s, n / base_s, "", "", base_kept])
            tries = [None] + (args.shard_sizes if n == min(args.sizes) else [])
            for shard in tries:
                r = run(folder, pipeline(folder, data, shard), f"{n}-{shard}")
                label = f"curate run, shard_size {shard or f'{default} (default)'}"
                rows.append([n, label, r["wall"], n / r["wall"], r["files"], r["peak_rss_mb"], r["out"]])
                by_size.setdefault(n, {})[shard] = r
    print_table("load -> dedup (exact) -> decontaminate, the real CLI", ["prompts", "run", "wall s", "rows/s",
                "files", "peak RSS MiB (largest process)", "rows out"], rows)
    small = min(args.sizes)
    best = min(r["wall"] for r in by_size[small].values())
    print(f"\ndefault shard size vs the best tried at {small:,}: {by_size[small][None]['wall'] / best:.2f}x "
          "(target <= 1.2)")
    if len(args.sizes) > 1:
        big = max(args.sizes)
        a, b = by_size[small][None], by_size[big][None]
        print(f"{big:,} vs {small:,} prompts, default settings: wall {b['wall'] / a['wall']:.2f}x (target <= "
              f"{1.1 * big / small:.0f}), peak RSS {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x (target <= 1.2)")


if __name__ == "__main__":
    main()
