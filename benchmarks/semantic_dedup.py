"""How fast is semantic dedup with the packaged model on a CPU, and how many planted paraphrases does it find?

The real CLI (`curate run`: load -> dedup {method: semantic}, defaults: the packaged all-MiniLM-L6-v2, cosine
0.9, k-means over about sqrt(n) clusters) over N prompts, with an empty response cache (every prompt embedded).
Each prompt is an instruction frame ("Explain ...", "Write a short story about ...") over a topic of 10-18 words
of MT-Bench's vocabulary; 3% of the rows are planted paraphrases of an earlier row, a third of each kind:

    reframed   the same topic under a synonymous frame ("Explain" -> "Could you help me understand")
    reordered  the frame reworded and the topic's two halves swapped
    edited     the frame reworded and a fifth of the topic's words replaced (a harder case: new content words)

Prints wall, rows/s, the dedup stage's seconds and rows/s, recall per kind (a planted row dropped as a duplicate
of its source or of another copy of it) and the rows dropped that were not planted, with their similarity.

    python benchmarks/semantic_dedup.py [--n 100000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from _common import CURATE, ROOT, print_table

#: synonymous instruction frames: a planted paraphrase swaps a frame for another of its group
FRAMES = [
    ["Explain {t}.", "Could you help me understand {t}?", "I would like an explanation of {t}.",
     "Please explain {t} to me."],
    ["Write a short story about {t}.", "Compose a brief story on {t}.", "Tell me a short tale involving {t}.",
     "Please write a little story about {t}."],
    ["Summarize {t} in three sentences.", "Give me a three-sentence summary of {t}.",
     "In three sentences, sum up {t}.", "Briefly summarize {t} using three sentences."],
    ["List the pros and cons of {t}.", "What are the advantages and disadvantages of {t}?",
     "Give the benefits and drawbacks of {t}.", "Weigh the upsides and downsides of {t}."],
    ["Write a poem about {t}.", "Compose a poem on {t}.", "Create some verses about {t}.",
     "Please write me a poem about {t}."],
    ["How would you teach {t} to a child?", "Explain {t} so that a child could understand it.",
     "Describe {t} in terms a kid would follow.", "What is the simplest way to teach a child {t}?"],
]


def corpus(n: int, seed: int = 0) -> tuple[list[str], dict[int, tuple[str, int]]]:
    """n prompts and the planted ones: row -> (kind, the row it paraphrases)."""
    rows = [json.loads(line) for line in (ROOT / "pipelines/examples/data/mt_bench_questions.jsonl").read_text().splitlines()]
    words = sorted({w.strip(".,!?;:()\"'").lower() for r in rows for w in r["turns"][0].split()} - {""})
    rng = random.Random(seed)
    topics: list[list[str]] = []
    frames: list[tuple[int, int]] = []
    texts: list[str] = []
    planted: dict[int, tuple[str, int]] = {}
    kinds = ["reframed", "reordered", "edited"]
    for i in range(n):
        if i > 1000 and rng.random() < 0.03:
            src = rng.randrange(i)
            kind = kinds[len(planted) % 3]
            topic = list(topics[src])
            group, old = frames[src]
            frame = rng.choice([f for f in range(len(FRAMES[group])) if f != old])
            if kind == "reordered":
                half = len(topic) // 2
                topic = topic[half:] + topic[:half]
            elif kind == "edited":
                for at in rng.sample(range(len(topic)), max(1, len(topic) // 5)):
                    topic[at] = rng.choice(words)
            planted[i] = (kind, src)
        else:
            topic = [rng.choice(words) for _ in range(rng.randint(10, 18))]
            group, frame = rng.randrange(len(FRAMES)), rng.randrange(4)
        topics.append(topic)
        frames.append((group, frame))
        texts.append(FRAMES[group][frame].format(t=" ".join(topic)))
    return texts, planted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--keep", type=Path, help="write data and the run here (default: a temp folder, removed)")
    args = ap.parse_args()
    texts, planted = corpus(args.n)
    with tempfile.TemporaryDirectory(prefix="semdedup-") as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        data = base / "prompts.jsonl"
        data.write_text("".join(json.dumps({"id": str(i), "prompt": t}) + "\n" for i, t in enumerate(texts)))
        spec = base / "pipeline.yaml"
        spec.write_text(yaml.safe_dump({"name": "semantic_dedup", "stages": [
            {"load": {"path": str(data), "id_field": "id"}}, {"dedup": {"method": "semantic"}}]}, sort_keys=False))
        run_dir = base / "run"
        env = {**os.environ, "CURATE_CACHE_DIR": str(base / "cache")}  # empty: every prompt is embedded
        start = time.perf_counter()
        proc = subprocess.run([CURATE, "run", str(spec), "--run-dir", str(run_dir)], capture_output=True, text=True,
                              env=env)
        wall = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"curate run failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
        manifest = json.loads((run_dir / "manifest.json").read_text())
        dedup = manifest["stages"][1]
        dropped = pq.read_table(run_dir / "_dropped" / dedup["id"], columns=["record", "reason"]).to_pylist()
    drops = {int(json.loads(d["record"])["source_id"]): d["reason"] for d in dropped}
    # a planted row counts as found when it is dropped; its twin may be its source or another copy of it
    rows = []
    for kind in ("reframed", "reordered", "edited"):
        mine = [i for i, (k, _) in planted.items() if k == kind]
        found = sum(i in drops for i in mine)
        rows.append([kind, len(mine), found, found / len(mine) if mine else 0.0])
    extra = sorted(set(drops) - set(planted))
    print_table(f"semantic dedup of {args.n:,} prompts, `curate run` with defaults", ["planted", "rows", "dropped",
                                                                                      "recall"], rows)
    total = sum(r[2] for r in rows) / max(1, len(planted))
    print(f"wall {wall:.1f} s ({args.n / wall:,.0f} rows/s); dedup stage {dedup['seconds']:.1f} s "
          f"({args.n / dedup['seconds']:,.0f} rows/s), {dedup['model_calls']:,} embeddings computed; "
          f"recall of planted paraphrases {total:.3f}; {len(extra):,} rows dropped that were not planted "
          f"({len(extra) / args.n:.4f} of the rows)")
    for i in extra[:5]:
        print(f"  not planted: {texts[i]!r}: {drops[i]}")


if __name__ == "__main__":
    main()
