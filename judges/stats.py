"""Run-level judge statistics: inter-judge agreement (Cohen's kappa per pair, Krippendorff's alpha overall) and
bias probes per judge (position consistency, length bias, self-preference).

They read a judged stage's shards through polars' lazy scans, selecting only the judgment fields and response
lengths (never the texts), and go into the run's manifest, report and dataset card.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

import polars as pl

SCORED_KINDS = ("pointwise", "listwise")


def judgments(parts: Path | list[Path]) -> pl.DataFrame:
    """One row per (prompt, candidate, judgment), with the response's length in characters. `parts`: the Parquet
    files (as a manifest lists them), or a stage folder written by the current run."""
    files = sorted(parts.glob("part-*.parquet")) if isinstance(parts, Path) else list(parts)
    # one file at a time: what is kept of a file is small (a response becomes its length), while a scan of all
    # of them at once held every response's text (3 GB for a million loaded pairs)
    frames = [
        pl.scan_parquet(str(f))
        .select("prompt_id", "candidates")
        .explode("candidates")
        .unnest("candidates")
        .select("prompt_id", "candidate_id", "model", pl.col("response").str.len_chars().alias("length"), "judgments")
        .explode("judgments")
        .drop_nulls("judgments")
        .unnest("judgments")
        .collect()
        for f in files
    ]
    if not frames:
        raise FileNotFoundError(f"no output parts in {parts}")
    df = pl.concat(frames, how="diagonal_relaxed")
    # runs written before judgments had these fields still report
    for name in ("opponent", "judge_model"):
        if name not in df.columns:
            df = df.with_columns(pl.lit(None, pl.String).alias(name))
    return df


def candidate_scores(j: pl.DataFrame) -> pl.DataFrame:
    """Each judge's mean parsed score per candidate (over aspects and opponents)."""
    return (j.filter(pl.col("parse_ok") & pl.col("score").is_not_null())
            .group_by("judge", "judge_model", "kind", "prompt_id", "candidate_id", "model", "length")
            .agg(pl.col("score").mean()))


def kappas(j: pl.DataFrame) -> tuple[list[str], list[tuple[str, str, float, int]]]:
    """Judges that score candidates (pointwise, listwise), and Cohen's kappa (quadratic weights, scores rounded)
    for each pair of them on the candidates both scored: (judge, judge, kappa or nan, n)."""
    from sklearn.metrics import cohen_kappa_score

    scored = candidate_scores(j).filter(pl.col("kind").is_in(SCORED_KINDS))
    judges = sorted(scored["judge"].unique().to_list())
    if len(judges) < 2:
        return judges, []
    wide = scored.pivot(on="judge", index="candidate_id", values="score", aggregate_function="mean")
    out = []
    for a, b in combinations(judges, 2):
        both = wide.select(a, b).drop_nulls()
        k = float("nan")
        if both.height >= 2:
            k = float(cohen_kappa_score(both[a].round().cast(int), both[b].round().cast(int), weights="quadratic"))
        out.append((a, b, k, both.height))
    return judges, out


def krippendorff_alpha(j: pl.DataFrame) -> tuple[float | None, int]:
    """Krippendorff's alpha (interval) over every judge but juries, on within-prompt ranks scaled to 0..1
    (0 = that judge's worst candidate of the prompt, 1 = its best). Ranks make judges on different scales
    (1-10 ratings, 0-4 attributes, pairwise win rates) comparable on what a preference dataset uses: the order
    of a prompt's candidates. (alpha or None, candidates rated by 2+ judges)."""
    import krippendorff
    import numpy as np

    s = candidate_scores(j).filter(pl.col("kind") != "jury")
    s = s.with_columns(
        ((pl.col("score").rank("average").over("judge", "prompt_id") - 1)
         / (pl.len().over("judge", "prompt_id") - 1).clip(lower_bound=1)).alias("rank01"))
    wide = s.pivot(on="judge", index="candidate_id", values="rank01", aggregate_function="mean")
    judges = [c for c in wide.columns if c != "candidate_id"]
    if len(judges) < 2:
        return None, 0
    matrix = wide.select(judges).to_numpy().T.astype(float)  # judges x candidates, nan = not rated
    units = int((np.sum(~np.isnan(matrix), axis=0) >= 2).sum())
    if units < 2:
        return None, units
    try:
        alpha = float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="interval"))
    except (ValueError, ZeroDivisionError):  # no variation at all
        return None, units
    return (None if np.isnan(alpha) else alpha), units


def positions(j: pl.DataFrame) -> pl.DataFrame:
    """Per pairwise judge: the share of comparisons whose verdict survives the order swap."""
    pairwise = j.filter(pl.col("kind").is_in(("pairwise", "debate")) & pl.col("parse_ok") & pl.col("position").is_not_null())
    return (pairwise.group_by("judge", "prompt_id", "candidate_id", "opponent")
            .agg(pl.col("verdict").n_unique().alias("verdicts"), pl.col("position").n_unique().alias("positions"))
            .filter(pl.col("positions") > 1)
            .group_by("judge").agg((pl.col("verdicts") == 1).mean().alias("consistency"), pl.len().alias("n"))
            .sort("judge"))


def decided_pairs(j: pl.DataFrame) -> pl.DataFrame:
    """Per judge, every pair of one prompt's candidates that the judge scored apart (x scored above y)."""
    s = candidate_scores(j)
    left = s.select("judge", "judge_model", "prompt_id", "candidate_id", "model", "length", "score")
    right = left.select("judge", "prompt_id", pl.col("candidate_id").alias("loser_id"),
                        pl.col("model").alias("loser_model"), pl.col("length").alias("loser_length"),
                        pl.col("score").alias("loser_score"))
    return (left.join(right, on=["judge", "prompt_id"]).filter(pl.col("score") > pl.col("loser_score"))
            .rename({"candidate_id": "winner_id", "model": "winner_model", "length": "winner_length"}))


def length_bias(j: pl.DataFrame) -> list[dict[str, Any]]:
    """Per judge: how often the longer response wins among pairs it decided that differ in length. A judge far
    above the jury's (or the humans') rate prefers length, not quality."""
    d = decided_pairs(j).filter(pl.col("winner_length") != pl.col("loser_length"))
    out = (d.group_by("judge").agg((pl.col("winner_length") > pl.col("loser_length")).mean().alias("longer_wins"),
                                  pl.len().alias("n")).sort("judge"))
    return out.to_dicts()


def self_preference(j: pl.DataFrame) -> list[dict[str, Any]]:
    """Per judge whose model also generated candidates: among decided pairs of its own model's response vs
    another model's, the share its own wins; beside it, the same pairs as other judges (other models) decided
    them. The gap is self-preference."""
    decided = decided_pairs(j)
    d = decided.filter((pl.col("winner_model") == pl.col("judge_model"))
                       != (pl.col("loser_model") == pl.col("judge_model")))
    out = []
    for (judge, model), own in d.group_by("judge", "judge_model"):
        if own.is_empty():
            continue
        key = own.select(pl.min_horizontal("winner_id", "loser_id").alias("a"),
                         pl.max_horizontal("winner_id", "loser_id").alias("b"))
        others = decided.filter(pl.col("judge_model") != model).with_columns(
            pl.min_horizontal("winner_id", "loser_id").alias("a"), pl.max_horizontal("winner_id", "loser_id").alias("b"))
        others = others.join(key.unique(), on=["a", "b"])
        own_rate = float((own["winner_model"] == model).mean())
        other_rate = float((others["winner_model"] == model).mean()) if others.height else None
        out.append({"judge": judge, "model": model, "own_wins": own_rate, "n": own.height,
                    "others_rate": other_rate, "others_n": others.height,
                    "gap": None if other_rate is None else own_rate - other_rate})
    return sorted(out, key=lambda r: r["judge"])


def preferences(j: pl.DataFrame) -> pl.DataFrame:
    """Each judge's preference between every two candidates of a prompt it scored both of: +1 (the first, by
    candidate id, scores higher), -1, or 0 (a tie). Scale-free, so a source's 1/0 choice, a rank and a 1-10
    rating compare."""
    s = candidate_scores(j).select("judge", "judge_model", "prompt_id", "candidate_id", "score")
    pairs = s.join(s.select("judge", "prompt_id", "candidate_id", "score"), on=["judge", "prompt_id"], suffix="_b")
    return (pairs.filter(pl.col("candidate_id") < pl.col("candidate_id_b"))
            .select("judge", "judge_model", "prompt_id", pl.concat_str("candidate_id", "candidate_id_b").alias("pair"),
                    (pl.col("score") - pl.col("score_b")).sign().cast(pl.Int8).alias("pref")))


def source_agreement(j: pl.DataFrame) -> list[dict[str, Any]]:
    """For each label an existing dataset brought (judges whose `judge_model` is `source:<name>`) and each other
    judge (a new judge, a jury): on the candidate pairs both decided, the share where they prefer the same side,
    and Cohen's kappa of their preferences (-1, 0, +1). The Skywork-V2 check: where does the new jury dispute
    the source?"""
    from sklearn.metrics import cohen_kappa_score

    prefs = preferences(j)
    source = prefs.filter(pl.col("judge_model").str.starts_with("source:"))
    if source.is_empty():
        return []
    others = prefs.filter(~pl.col("judge_model").fill_null("").str.starts_with("source:"))
    out = []
    for (label, origin), mine in source.group_by("judge", "judge_model"):
        for (judge,), theirs in others.group_by("judge"):
            both = mine.join(theirs.select("pair", pl.col("pref").alias("other")), on="pair")
            if both.is_empty():
                continue
            a, b = both["pref"].to_list(), both["other"].to_list()
            kappa = float(cohen_kappa_score(a, b)) if len(set(a) | set(b)) > 1 else float("nan")
            out.append({"source": origin.removeprefix("source:"), "label": label, "judge": judge,
                        "pairs": both.height, "agreement": sum(x == y for x, y in zip(a, b)) / len(a),
                        "kappa": kappa})
    return sorted(out, key=lambda r: (r["source"], r["label"], r["judge"]))


def judgment_count(part: Path) -> int:
    """How many judgments the candidates of one output part carry."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    candidates = pc.list_flatten(pq.read_table(part, columns=["candidates"]).column("candidates"))
    return pc.sum(pc.list_value_length(pc.struct_field(candidates, "judgments"))).as_py() or 0


def run_summary(run_dir: Path, manifest: dict) -> dict[str, Any]:
    """The run's hook (pipelines/runner.py RUN_SUMMARIES): what the judges of the last stage with candidates did
    (agreement, position consistency, ...); {} when no stage has judged candidates."""
    from curate.pipelines.rundir import last_output_with

    judged = last_output_with(run_dir, manifest, {"candidates"})
    if judged is None or not any(judgment_count(part) for part in judged):
        return {}  # candidates nobody judged (a generate-only pipeline): nothing to summarize
    return summary(judged)


def summary(folder: Path | list[Path]) -> dict[str, Any]:
    """What the manifest records about a run's judges."""
    j = judgments(folder)
    if j.is_empty():
        return {}
    per: dict[str, Any] = {}
    for (judge,), group in j.group_by("judge"):
        per[judge] = {"kind": group["kind"][0], "judgments": group.height,
                      "scored": group.filter(pl.col("parse_ok") & pl.col("score").is_not_null()).height,
                      "unparsed": group.filter(~pl.col("parse_ok")).height}
    for r in positions(j).to_dicts():
        per[r["judge"]]["position_consistency"] = r["consistency"]
    for r in length_bias(j):
        per[r["judge"]]["longer_wins"] = r["longer_wins"]
    for r in self_preference(j):
        per[r["judge"]]["self_preference"] = {k: v for k, v in r.items() if k != "judge"}
    alpha, units = krippendorff_alpha(j)
    return {"per_judge": dict(sorted(per.items())),
            "cohen_kappa": [{"a": a, "b": b, "kappa": k, "n": n} for a, b, k, n in kappas(j)[1]],
            "krippendorff_alpha": alpha, "alpha_units": units,
            **({"source_agreement": agree} if (agree := source_agreement(j)) else {})}
