"""Human review round-trip: a stratified sample of a run's pairs goes out as Label Studio tasks; the annotations
come back, are compared with the judges (agreement, Cohen's kappa, per judge), recorded in the manifest (and so
the dataset card), and override the judges' labels for the reviewed pairs.

Export: pairs are stratified by source and by margin tercile (low, mid, high) and sampled in proportion (seeded),
so a sample of 50 covers the hard and the easy pairs. Each task shows the two responses as A and B in a seeded
random order (the annotator cannot tell which one the judges chose); which is which stays in the task's data.
Import reads Label Studio's JSON export (Choices "A" / "B" / "tie", or the Pairwise tag's left/right) and writes
`review/human_labels.parquet` and `review/reviewed_export/` (the export with each reviewed pair as the human
decided: swapped when the human preferred the judges' rejected response, dropped on a human tie).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

LABEL_CONFIG = """<View>
  <Header value="Which response answers the prompt better?"/>
  <Text name="prompt" value="$prompt"/>
  <Text name="response_a" value="$response_a"/>
  <Text name="response_b" value="$response_b"/>
  <Choices name="preference" toName="prompt" choice="single" showInLine="true">
    <Choice value="A"/><Choice value="B"/><Choice value="tie"/>
  </Choices>
</View>
"""


def _last_output(run_dir: Path, columns: set[str]) -> list[Path] | None:
    from curate.pipelines.rundir import last_output_with

    manifest = json.loads((run_dir / "manifest.json").read_text())
    return last_output_with(run_dir, manifest, columns)


def _pair_parts(run_dir: Path) -> list[Path]:
    """The parts of the run's last stage output that has pairs."""
    parts = _last_output(run_dir, {"chosen", "rejected", "chosen_id", "rejected_id"})
    if parts is None:
        raise ValueError(f"{run_dir} has no stage output with pairs (chosen, rejected, chosen_id, rejected_id)")
    return parts


def _coin(seed: int, key: str) -> bool:
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) % 2 == 0


def export_tasks(run_dir: Path, n: int, out: Path, seed: int = 0, disputed: bool = False) -> dict[str, Any]:
    """`disputed`: only the pairs some judge behind them ranks the other way (`agreement` < 1: a jury whose members,
    a source's own label among them, split), the ones a person should settle (the Skywork-V2 loop)."""
    parts = _pair_parts(run_dir)
    cols = ["prompt_id", "prompt", "chosen", "rejected", "chosen_id", "rejected_id", "source", "margin", "judge"]
    scan = pl.scan_parquet([str(p) for p in parts])
    if disputed:
        if "agreement" not in scan.collect_schema().names():
            raise ValueError(f"{parts[0].parent} has no `agreement` column: no judges' votes to find disputes in")
        scan = scan.filter(pl.col("agreement") < 1)
    df = scan.select(cols).collect()
    if df.is_empty():
        raise ValueError(f"{parts[0].parent} has no {'disputed ' if disputed else ''}pairs to review")
    margins = df["margin"].drop_nulls()
    low, high = (margins.quantile(1 / 3), margins.quantile(2 / 3)) if len(margins) else (None, None)

    def bucket(m: float | None) -> str:
        if m is None or low is None:
            return "unscored"
        return "low" if m <= low else "high" if m > high else "mid"

    strata: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in df.iter_rows(named=True):
        strata[(row["source"] or "", bucket(row["margin"]))].append(row)
    rng = random.Random(seed)
    total = df.height
    picked: list[dict] = []
    for key in sorted(strata):  # proportional allocation, at least one from each stratum while n allows
        rows = strata[key]
        take = min(len(rows), max(1, round(n * len(rows) / total)))
        picked += rng.sample(rows, take)
    rng.shuffle(picked)
    picked = picked[:n]
    tasks = []
    for i, row in enumerate(picked):
        chosen_first = _coin(seed, f"{row['prompt_id']}:{row['chosen_id']}:{row['rejected_id']}")
        a, b = (row["chosen"], row["rejected"]) if chosen_first else (row["rejected"], row["chosen"])
        tasks.append({"id": i + 1, "data": {
            "prompt": row["prompt"], "response_a": a, "response_b": b, "prompt_id": row["prompt_id"],
            "chosen_id": row["chosen_id"], "rejected_id": row["rejected_id"],
            "judges_chose": "A" if chosen_first else "B", "stratum": "/".join(s for s in (row["source"], bucket(row["margin"])) if s),
        }})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks, indent=1, ensure_ascii=False))
    config = out.with_name(out.stem + ".label_config.xml")
    config.write_text(LABEL_CONFIG)
    return {"tasks": len(tasks), "file": str(out), "label_config": str(config), "pairs": total,
            "strata": dict(Counter(t["data"]["stratum"] for t in tasks))}


def _human_choice(task: dict) -> str | None:
    """A / B / tie from a Label Studio task's latest annotation (Choices or the Pairwise tag)."""
    for ann in reversed(task.get("annotations") or []):
        if ann.get("was_cancelled"):
            continue
        for res in ann.get("result") or []:
            value = res.get("value") or {}
            if "choices" in value and value["choices"]:
                v = str(value["choices"][0]).strip().lower()
                return {"a": "A", "b": "B", "tie": "tie"}.get(v)
            if "selected" in value:
                return {"left": "A", "right": "B"}.get(value["selected"])
    return None


def import_annotations(path: Path, run_dir: Path) -> dict[str, Any]:
    from sklearn.metrics import cohen_kappa_score

    from curate.judges.stats import candidate_scores, judgments

    tasks = json.loads(path.read_text())
    labels = []
    for t in tasks:
        data = t.get("data") or {}
        human = _human_choice(t)
        if human is None or not {"chosen_id", "rejected_id", "judges_chose"} <= set(data):
            continue
        human_prefers = "tie" if human == "tie" else ("chosen" if human == data["judges_chose"] else "rejected")
        labels.append({"prompt_id": data["prompt_id"], "chosen_id": data["chosen_id"],
                       "rejected_id": data["rejected_id"], "human": human_prefers})
    if not labels:
        raise ValueError(f"{path} has no annotated tasks that came from `curate review export`")
    review = run_dir / "review"
    review.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(labels), review / "human_labels.parquet")
    decided = [x for x in labels if x["human"] != "tie"]
    agree = sum(x["human"] == "chosen" for x in decided) / len(decided) if decided else None
    # per judge: its own preference between the two reviewed candidates, against the human's
    per_judge: dict[str, Any] = {}
    judged = _last_output(run_dir, {"candidates"})
    if judged is not None:
        scores = candidate_scores(judgments(judged))
        lookup = {(r["judge"], r["candidate_id"]): r["score"] for r in scores.iter_rows(named=True)}
        for judge in sorted(scores["judge"].unique().to_list()):
            h, j = [], []
            for x in labels:
                sc, sr = lookup.get((judge, x["chosen_id"])), lookup.get((judge, x["rejected_id"]))
                if sc is None or sr is None:
                    continue
                h.append(x["human"])
                j.append("chosen" if sc > sr else "rejected" if sr > sc else "tie")
            if h:
                kappa = (float(cohen_kappa_score(h, j, labels=["chosen", "rejected", "tie"]))
                         if len(set(h) | set(j)) > 1 else None)
                per_judge[judge] = {"n": len(h), "agreement": sum(a == b for a, b in zip(h, j)) / len(h),
                                    "cohen_kappa": kappa}
    # the judges' label as a pair is always "chosen"; kappa against the humans is over the 3 labels
    humans = [x["human"] for x in labels]
    summary = {"file": str(path), "reviewed": len(labels), "human": dict(Counter(humans)),
               "agreement_without_ties": agree, "decided": len(decided), "per_judge": per_judge,
               "flipped": sum(h == "rejected" for h in humans), "ties_dropped": sum(h == "tie" for h in humans)}
    summary["reviewed_export"] = str(_apply(run_dir, labels, review))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["human_review"] = summary
    tmp = run_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(run_dir / "manifest.json")
    return summary


def _apply(run_dir: Path, labels: list[dict], review: Path) -> Path:
    """The last export (or pairs) with human labels overriding the judges' for the reviewed pairs."""
    from curate.schemas.rows import swap_sides

    parts = _pair_parts(run_dir)
    by_key = {(x["prompt_id"], x["chosen_id"], x["rejected_id"]): x["human"] for x in labels}
    out = review / "reviewed_export"
    out.mkdir(exist_ok=True)
    for part in parts:
        table = pq.read_table(part)
        rows = []
        for row in table.to_pylist():
            human = by_key.get((row["prompt_id"], row["chosen_id"], row["rejected_id"]))
            if human == "tie":
                continue
            if human == "rejected":
                row = swap_sides(row)
            row["label_source"] = "judge" if human is None else "human"
            rows.append(row)
        schema = table.schema.append(pa.field("label_source", pa.string()))
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / part.name)
    return out
