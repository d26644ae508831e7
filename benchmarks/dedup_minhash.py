"""Is curate's MinHash near-duplicate detection faster than datasketch's MinHashLSH, at the same recall?

One generated corpus of short texts (real English words, 12-40 per text) with planted near-duplicates (a copy
with one word substituted or one word appended), deduplicated by both at Jaccard threshold 0.8, 128
permutations, word 3-grams. Each method runs in its own process, so peak RSS is its own. datasketch is the
baseline. Target: >= 2x faster at recall within 1 point.

    python benchmarks/dedup_minhash.py            # 1M texts
    python benchmarks/dedup_minhash.py --quick    # 100k texts
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time

from _common import ROOT, print_table

THRESHOLD, NUM_PERM, NGRAM = 0.8, 128, 3


def corpus(n: int, seed: int = 0) -> tuple[list[str], set[int]]:
    """n texts, about 10% of them planted near-duplicates of an earlier text; returns (texts, planted ids)."""
    words = sorted({w.strip(".,!?;:()\"'").lower() for line in open(ROOT / "pipelines/examples/data/mt_bench_questions.jsonl")
                    for w in json.loads(line)["turns"][0].split()} - {""})
    rng = random.Random(seed)
    texts: list[str] = []
    planted: set[int] = set()
    for i in range(n):
        if i > 100 and rng.random() < 0.1:
            src = texts[rng.randrange(i)].split()
            if rng.random() < 0.5:
                src[rng.randrange(len(src))] = rng.choice(words)
            else:
                src.append(rng.choice(words))
            planted.add(i)
            texts.append(" ".join(src))
        else:
            texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(12, 40))))
    return texts, planted


def run_curate(texts: list[str]) -> set[int]:
    """curate's dedup stage's own steps in one process: key rows (signatures, band keys) in batches of a shard's
    size, then the decision over all of them (band buckets, verified links, connected components)."""
    import numpy as np
    import pyarrow as pa

    from curate.stages.base import StageContext
    from curate.stages.dedup import Config, decide, keys
    from curate.stages.dupsets import Keys

    cfg = Config(method="minhash", threshold=THRESHOLD, num_perm=NUM_PERM, ngram=NGRAM, id_field="id")
    parts, batch = [], 4096
    for lo in range(0, len(texts), batch):
        chunk = texts[lo:lo + batch]
        table = pa.table({"prompt": chunk, "id": [str(lo + j) for j in range(len(chunk))],
                          "_order": np.arange(lo, lo + len(chunk), dtype=np.int64)})
        parts.append(keys(table, cfg, StageContext()))
    drops = decide(Keys(table=pa.concat_tables(parts)), cfg, False)
    return set(drops["_order"].to_pylist())


def run_datasketch(texts: list[str]) -> set[int]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    found: set[int] = set()
    for i, text in enumerate(texts):
        toks = text.lower().split()
        grams = [" ".join(toks[j:j + NGRAM]).encode() for j in range(max(1, len(toks) - NGRAM + 1))]
        m = MinHash(num_perm=NUM_PERM)
        m.update_batch(grams)
        if lsh.query(m):
            found.add(i)
        else:
            lsh.insert(str(i), m)
    return found


def child(method: str, n: int) -> None:
    texts, planted = corpus(n)
    start = time.perf_counter()
    found = run_curate(texts) if method == "curate" else run_datasketch(texts)
    seconds = time.perf_counter() - start
    hit = len(found & planted)
    print(json.dumps({"seconds": seconds, "recall": hit / len(planted), "precision": hit / max(len(found), 1),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "planted": len(planted)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="100k texts instead of 1M")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--child", choices=["curate", "datasketch"])
    args = ap.parse_args()
    n = args.n or (100_000 if args.quick else 1_000_000)
    if args.child:
        child(args.child, n)
        return
    results = {}
    for method in ("datasketch", "curate"):
        out = subprocess.run([sys.executable, __file__, "--child", method, "--n", str(n)], check=True,
                             capture_output=True, text=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
    base = results["datasketch"]
    rows = [[m, r["seconds"], base["seconds"] / r["seconds"], r["recall"], r["precision"], r["peak_rss_mb"]]
            for m, r in results.items()]
    print_table(f"MinHash near-dup, {n:,} texts, {base['planted']:,} planted, threshold {THRESHOLD}, "
                f"{NUM_PERM} perms, word {NGRAM}-grams (baseline: datasketch MinHashLSH)",
                ["method", "seconds", "speed-up", "recall", "precision", "peak RSS MB"], rows)
    c = results["curate"]
    ok = base["seconds"] / c["seconds"] >= 2 and c["recall"] >= base["recall"] - 0.01
    print(f"\nspeed-up {base['seconds'] / c['seconds']:.1f}x, recall {c['recall']:.3f} vs {base['recall']:.3f}: "
          f"{'PASS' if ok else 'FAIL'} (target >= 2x, recall within 1 point)")


if __name__ == "__main__":
    main()
