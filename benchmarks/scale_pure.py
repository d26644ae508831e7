"""Do curate's pure stages keep up with a dataframe engine at corpus scale, with default settings?

The real CLI (`curate run`: Ray, Prefect, Parquet) over N synthetic preference pairs in TRL's layout (prompt ~60
words, answers ~200 words, of MT-Bench's vocabulary; 5% exact duplicates up to case and punctuation, 3% near
duplicates (a word appended), 1% contaminated with an MT-Bench prompt, 1% with a too-short chosen answer):

    load (layout: trl) -> pairs -> filter (length bounds) -> dedup exact -> dedup minhash -> decontaminate
    (13-grams of MT-Bench) -> export (trl)

Beside it, in the same run, the limit: a polars script doing the exact dedup + filter + Parquet write of the
same file (read, normalize, unique, write). Prints wall, rows/s, MB/s of input, peak RSS of every process (the
CLI, the run process, each Ray worker, sampled), files written, per-stage seconds, and the targets: curate's
wall within 3x of polars' for the exact-dedup + filter + export part (the stages load, pairs, filter, dedup exact,
export), the largest size's wall <= 1.1 x (size ratio) x the smallest's, peak RSS <= 1.5x.

MinHash against datasketch at equal recall is benchmarks/dedup_minhash.py (run it beside this one).

    python benchmarks/scale_pure.py [--sizes 100000 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from _common import CURATE, ROOT, print_table

BENCH = ROOT / "pipelines/examples/data/mt_bench_questions.jsonl"


def write_pairs(path: Path, n: int, seed: int = 0) -> dict[str, int]:
    """n pairs in TRL's layout with planted duplicates, contamination and short answers; returns the counts."""
    turns = [json.loads(line)["turns"][0] for line in BENCH.read_text().splitlines()]
    words = np.array(sorted({w.strip(".,!?;:()\"'").lower() for t in turns for w in t.split()} - {""}))
    rng = np.random.default_rng(seed)

    def texts(count: int, lo: int, hi: int) -> list[str]:
        lens = rng.integers(lo, hi, size=count)
        idx = rng.integers(0, len(words), size=int(lens.sum()))
        return [" ".join(part) for part in np.split(words[idx], np.cumsum(lens)[:-1])]

    planted = {"exact": n // 20, "near": 3 * n // 100, "contaminated": n // 100, "short": n // 100}
    with open(path, "w") as fh:
        chunk = 100_000
        prompts: list[str] = []
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            p, c, r = texts(m, 40, 80), texts(m, 150, 250), texts(m, 150, 250)
            prompts += p
            for i in range(m):
                fh.write(json.dumps({"prompt": p[i], "chosen": c[i], "rejected": r[i]}) + "\n")
    # plant by rewriting chosen rows: duplicates copy an earlier row's prompt (the plan first, then one streaming
    # pass over the file, so memory holds the prompts, not every row)
    picks = rng.permutation(np.arange(1000, n))
    plan: dict[int, tuple[str, str]] = {}
    at = 0
    for kind, count in planted.items():
        for i in picks[at: at + count]:
            src = prompts[int(rng.integers(0, i))]
            if kind == "exact":
                plan[int(i)] = (kind, src.upper() + "!")
            elif kind == "near":
                plan[int(i)] = (kind, src + " " + str(words[int(rng.integers(0, len(words)))]))
            elif kind == "contaminated":
                plan[int(i)] = (kind, turns[int(rng.integers(0, len(turns)))])
            else:
                plan[int(i)] = (kind, "Too short.")
        at += count
    del prompts
    tmp = path.with_suffix(".tmp")
    with open(path) as fin, open(tmp, "w") as fout:
        for i, line in enumerate(fin):
            if i in plan:
                kind, text = plan[i]
                rec = json.loads(line)
                if kind in ("exact", "near"):
                    rec["prompt"] = text
                elif kind == "contaminated":
                    rec["prompt"] = rec["prompt"] + " " + text
                else:
                    rec["chosen"] = text
                line = json.dumps(rec) + "\n"
            fout.write(line)
    tmp.replace(path)
    return planted


FILTER = {"min_length": 200, "max_length": 4000}


def pipeline(folder: Path, data: Path) -> Path:
    spec = {"name": "scale_pure", "stages": [
        {"load": {"path": str(data), "layout": "trl"}},
        {"pairs": {}},
        {"filter": FILTER},
        {"dedup": {"method": "exact"}},
        {"dedup": {"method": "minhash"}},
        {"decontaminate": {"benchmarks": [{"name": "mt-bench", "path": str(BENCH), "field": "turns"}]}},
        {"export": {"format": "trl"}},
    ]}
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tree_rss(pid: int) -> dict[int, int]:
    """RSS (bytes) of a process and of every descendant, by pid (Ray workers start under the run's raylet)."""
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
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resume of an earlier one
    env = {**os.environ, "CURATE_CACHE_DIR": str(folder / "cache")}
    peak: dict[int, int] = {}
    start = time.perf_counter()
    proc = subprocess.Popen([CURATE, "run", str(spec), "--run-dir", str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
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
    return {"wall": wall, "files": files, "peak_rss_mb": max(peak.values()) / 2**20 if peak else 0.0,
            "stages": {s["id"]: s for s in manifest["stages"]}, "out": manifest["stages"][-1]["out"]}


def polars_baseline(data: Path, out: Path) -> tuple[float, int]:
    """The same filter + exact prompt dedup + Parquet write, written directly in polars (the limit)."""
    import polars as pl

    start = time.perf_counter()
    df = pl.read_ndjson(data)
    norm = (pl.col("prompt").str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}\s]+", " ")
            .str.replace_all(r"\s+", " ").str.strip_chars())
    ok = pl.all_horizontal([pl.col(c).str.len_chars().is_between(FILTER["min_length"], FILTER["max_length"])
                            for c in ("chosen", "rejected")])
    kept = df.filter(ok).with_columns(norm.alias("_n")).unique(subset="_n", keep="first", maintain_order=True)
    kept.drop("_n").write_parquet(out)
    return time.perf_counter() - start, kept.height


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--keep", type=Path, help="write data and runs here (default: a temp folder, removed)")
    args = ap.parse_args()
    part = ["01_load", "02_pairs", "03_filter", "04_dedup", "07_export"]
    rows, stage_rows, results = [], [], {}
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        base = args.keep or Path(tmp)
        for n in args.sizes:
            folder = base / f"n{n}"
            folder.mkdir(parents=True, exist_ok=True)
            data = folder / "pairs.jsonl"
            if not data.exists():
                write_pairs(data, n)
            mb = data.stat().st_size / 2**20
            base_s, base_kept = polars_baseline(data, folder / "polars.parquet")
            rows.append([n, "polars: filter + exact dedup + write", base_s, n / base_s, mb / base_s, "", "",
                         base_kept])
            r = run(folder, pipeline(folder, data), str(n))
            results[n] = r | {"polars": base_s}
            rows.append([n, "curate run (7 stages, defaults)", r["wall"], n / r["wall"], mb / r["wall"],
                         r["files"], round(r["peak_rss_mb"]), r["out"]])
            for sid, s in r["stages"].items():
                stage_rows.append([n, sid, s["in"], s["out"], s["dropped"], s["seconds"], s["shards"]])
    print_table(f"{' -> '.join(s.split('_', 1)[1] for s in ['01_load', '02_pairs', '03_filter', '04_dedup', '05_dedup', '06_decontaminate', '07_export'])}, the real CLI",
                ["pairs", "run", "wall s", "rows/s", "MB/s", "files", "peak RSS MiB (largest process)",
                 "rows out"], rows)
    print_table("per stage", ["pairs", "stage", "in", "out", "dropped", "seconds", "shards"], stage_rows)
    for n, r in results.items():
        exact_part = sum(r["stages"][s]["seconds"] for s in part)
        print(f"{n:,}: exact-dedup + filter + export part {exact_part:.1f} s = {exact_part / r['polars']:.2f}x "
              f"polars' {r['polars']:.1f} s (target <= 3)")
    sizes = sorted(results)
    for small, big in zip(sizes, sizes[1:]):
        a, b = results[small], results[big]
        print(f"{big:,} vs {small:,}: wall {b['wall'] / a['wall']:.2f}x (target <= {1.1 * big / small:.1f}), "
              f"peak RSS {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x (target <= 1.5)")


if __name__ == "__main__":
    main()
