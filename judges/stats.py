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


#: the judgment fields the statistics use (not a judge's raw text, which can be long)
FIELDS = ("judge", "kind", "score", "verdict", "position", "opponent", "parse_ok", "judge_model")


def output_files(parts: Path | list[Path]) -> list[Path]:
    """The Parquet files of `parts`: a list (as a manifest lists them) or a stage folder of the current run."""
    files = sorted(parts.glob("part-*.parquet")) if isinstance(parts, Path) else list(parts)
    if not files:
        raise FileNotFoundError(f"no output parts in {parts}")
    return files


def judgments(parts: Path | list[Path]) -> pl.DataFrame:
    """One row per (prompt, candidate, judgment), with the response's length in characters. `parts`: the Parquet
    files (as a manifest lists them), or a stage folder written by the current run."""
    # one file at a time: what is kept of a file is small (a response becomes its length), while a scan of all
    # of them at once held every response's text (3 GB for a million loaded pairs)
    return pl.concat([_judgments_of(f) for f in output_files(parts)], how="diagonal_relaxed")


def _judgments_of(path: Path) -> pl.DataFrame:
    lf = (pl.scan_parquet(str(path))
          .select("prompt_id", "candidates")
          .explode("candidates")
          .unnest("candidates")
          .select("prompt_id", "candidate_id", "model", pl.col("response").str.len_chars().alias("length"),
                  "judgments")
          .explode("judgments")
          .drop_nulls("judgments")
          .unnest("judgments"))
    have = set(lf.collect_schema().names())
    # runs written before judgments had `opponent` and `judge_model` still report
    return lf.select("prompt_id", "candidate_id", "model", "length",
                     *[pl.col(c) if c in have else pl.lit(None, pl.String).alias(c) for c in FIELDS]).collect()


def candidate_scores(j: pl.DataFrame) -> pl.DataFrame:
    """Each judge's mean parsed score per candidate (over aspects and opponents)."""
    return (j.filter(pl.col("parse_ok") & pl.col("score").is_not_null())
            .group_by("judge", "judge_model", "kind", "prompt_id", "candidate_id", "model", "length")
            .agg(pl.col("score").mean()))


# Every statistic below is computed in two steps: counts over some prompts (additive: the counts of a run are the
# sums of its chunks' counts, because everything a statistic compares lies within one prompt), then the figure
# from the counts. So the run summary reads a run of any size a chunk at a time, in bounded memory.

def _sum(frames: list[pl.DataFrame], keys: list[str]) -> pl.DataFrame:
    frames = [f for f in frames if f.height]
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="vertical_relaxed").group_by(keys, maintain_order=True).agg(pl.all().sum())


def kappa_counts(j: pl.DataFrame, scores: pl.DataFrame | None = None) -> pl.DataFrame:
    """For each two judges that score candidates (pointwise, listwise): how often each pair of their rounded
    scores occurs on a candidate both scored (a, b, ra, rb, n)."""
    scored = (candidate_scores(j) if scores is None else scores).filter(pl.col("kind").is_in(SCORED_KINDS))
    judges = sorted(scored["judge"].unique().to_list())
    # a row (judge, judge, 0, 0, 0) per judge: a judge that scored alone in these prompts still counts
    frames = [pl.DataFrame({"a": judges, "b": judges, "ra": 0, "rb": 0, "n": 0}, schema=KAPPA_SCHEMA)]
    if len(judges) >= 2:
        wide = scored.pivot(on="judge", index="candidate_id", values="score", aggregate_function="mean")
        for a, b in combinations(judges, 2):
            both = wide.select(pl.col(a).round().cast(pl.Int64).alias("ra"),
                               pl.col(b).round().cast(pl.Int64).alias("rb")).drop_nulls()
            frames.append(both.group_by("ra", "rb").agg(pl.len().cast(pl.Int64).alias("n"))
                          .select(pl.lit(a).alias("a"), pl.lit(b).alias("b"), "ra", "rb", "n"))
    return pl.concat(frames, how="vertical_relaxed")


KAPPA_SCHEMA = {"a": pl.String, "b": pl.String, "ra": pl.Int64, "rb": pl.Int64, "n": pl.Int64}


def kappas_from(counts: pl.DataFrame) -> tuple[list[str], list[tuple[str, str, float, int]]]:
    """(judges, [(judge, judge, Cohen's kappa with quadratic weights or nan, candidates both scored)])."""
    from sklearn.metrics import cohen_kappa_score

    if counts.is_empty():
        return [], []
    judges = sorted(counts.filter(pl.col("a") == pl.col("b"))["a"].unique().to_list())
    pairs = counts.filter(pl.col("a") != pl.col("b")).group_by("a", "b", "ra", "rb").agg(pl.col("n").sum())
    out = []
    for a, b in combinations(judges, 2):
        c = pairs.filter((pl.col("a") == a) & (pl.col("b") == b))
        n = int(c["n"].sum()) if c.height else 0
        k = float("nan")
        if n >= 2:
            k = float(cohen_kappa_score(c["ra"].to_numpy(), c["rb"].to_numpy(), weights="quadratic",
                                        sample_weight=c["n"].to_numpy()))
        out.append((a, b, k, n))
    return judges, out


def kappas(j: pl.DataFrame) -> tuple[list[str], list[tuple[str, str, float, int]]]:
    """Judges that score candidates (pointwise, listwise), and Cohen's kappa (quadratic weights, scores rounded)
    for each pair of them on the candidates both scored: (judge, judge, kappa or nan, n)."""
    return kappas_from(kappa_counts(j))


def rank_matrix(j: pl.DataFrame, scores: pl.DataFrame | None = None) -> pl.DataFrame:
    """Krippendorff's units: per candidate (a row), each judge's (a column, juries left out) within-prompt rank
    scaled to 0..1 (0 = that judge's worst candidate of the prompt, 1 = its best); null = not rated."""
    s = (candidate_scores(j) if scores is None else scores).filter(pl.col("kind") != "jury")
    s = s.with_columns(
        ((pl.col("score").rank("average").over("judge", "prompt_id") - 1)
         / (pl.len().over("judge", "prompt_id") - 1).clip(lower_bound=1)).alias("rank01"))
    if s.is_empty():
        return pl.DataFrame()
    return s.pivot(on="judge", index="candidate_id", values="rank01", aggregate_function="mean").drop("candidate_id")


def alpha_from(matrices: list[pl.DataFrame]) -> tuple[float | None, int]:
    """Krippendorff's alpha (interval) over the rank matrices' units: (alpha or None, candidates rated by 2+
    judges). Ranks make judges on different scales (1-10 ratings, 0-4 attributes, pairwise win rates) comparable
    on what a preference dataset uses: the order of a prompt's candidates."""
    import krippendorff
    import numpy as np

    matrices = [m for m in matrices if m.width]
    wide = pl.concat(matrices, how="diagonal_relaxed") if matrices else pl.DataFrame()
    if wide.width < 2:
        return None, 0
    matrix = wide.to_numpy().T.astype(float)  # judges x candidates, nan = not rated
    units = int((np.sum(~np.isnan(matrix), axis=0) >= 2).sum())
    if units < 2:
        return None, units
    try:
        alpha = float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="interval"))
    except (ValueError, ZeroDivisionError):  # no variation at all
        return None, units
    return (None if np.isnan(alpha) else alpha), units


def krippendorff_alpha(j: pl.DataFrame) -> tuple[float | None, int]:
    """Krippendorff's alpha (interval) over every judge but juries, on within-prompt ranks (see alpha_from)."""
    return alpha_from([rank_matrix(j)])


def position_counts(j: pl.DataFrame) -> pl.DataFrame:
    """Per pairwise judge: comparisons shown in both orders (n) and those whose verdict survived the swap."""
    pairwise = j.filter(pl.col("kind").is_in(("pairwise", "debate")) & pl.col("parse_ok") & pl.col("position").is_not_null())
    return (pairwise.group_by("judge", "prompt_id", "candidate_id", "opponent")
            .agg(pl.col("verdict").n_unique().alias("verdicts"), pl.col("position").n_unique().alias("positions"))
            .filter(pl.col("positions") > 1)
            .group_by("judge").agg((pl.col("verdicts") == 1).sum().cast(pl.Int64).alias("consistent"),
                                   pl.len().cast(pl.Int64).alias("n")))


def positions_from(counts: pl.DataFrame) -> pl.DataFrame:
    if counts.is_empty():
        return pl.DataFrame(schema={"judge": pl.String, "consistency": pl.Float64, "n": pl.Int64})
    return counts.select("judge", (pl.col("consistent") / pl.col("n")).alias("consistency"), "n").sort("judge")


def positions(j: pl.DataFrame) -> pl.DataFrame:
    """Per pairwise judge: the share of comparisons whose verdict survives the order swap."""
    return positions_from(position_counts(j))


def decided_pairs(scores: pl.DataFrame) -> pl.DataFrame:
    """Per judge, every pair of one prompt's candidates that the judge scored apart (x scored above y), from
    candidate_scores."""
    left = scores.select("judge", "judge_model", "prompt_id", "candidate_id", "model", "length", "score")
    right = left.select("judge", "prompt_id", pl.col("candidate_id").alias("loser_id"),
                        pl.col("model").alias("loser_model"), pl.col("length").alias("loser_length"),
                        pl.col("score").alias("loser_score"))
    return (left.join(right, on=["judge", "prompt_id"]).filter(pl.col("score") > pl.col("loser_score"))
            .rename({"candidate_id": "winner_id", "model": "winner_model", "length": "winner_length"}))


def length_counts(decided: pl.DataFrame) -> pl.DataFrame:
    """Per judge: decided pairs that differ in length (n), and those the longer response won."""
    d = decided.filter(pl.col("winner_length") != pl.col("loser_length"))
    return d.group_by("judge").agg((pl.col("winner_length") > pl.col("loser_length")).sum().cast(pl.Int64)
                                   .alias("longer"), pl.len().cast(pl.Int64).alias("n"))


def length_from(counts: pl.DataFrame) -> list[dict[str, Any]]:
    """Per judge: how often the longer response wins among pairs it decided that differ in length. A judge far
    above the jury's (or the humans') rate prefers length, not quality."""
    if counts.is_empty():
        return []
    return counts.select("judge", (pl.col("longer") / pl.col("n")).alias("longer_wins"), "n").sort("judge").to_dicts()


def self_counts(decided: pl.DataFrame) -> pl.DataFrame:
    """Per judge whose model also generated candidates: decided pairs of its own model's response vs another
    model's (n) and those its own won; the same pairs as other judges (other models) decided them (others_n)
    and those they gave its model."""
    d = decided.filter((pl.col("winner_model") == pl.col("judge_model"))
                       != (pl.col("loser_model") == pl.col("judge_model")))
    out = []
    for (judge, model), own in d.group_by("judge", "judge_model", maintain_order=True):
        if own.is_empty():
            continue
        key = own.select(pl.min_horizontal("winner_id", "loser_id").alias("a"),
                         pl.max_horizontal("winner_id", "loser_id").alias("b"))
        others = decided.filter(pl.col("judge_model") != model).with_columns(
            pl.min_horizontal("winner_id", "loser_id").alias("a"), pl.max_horizontal("winner_id", "loser_id").alias("b"))
        others = others.join(key.unique(), on=["a", "b"])
        out.append({"judge": judge, "model": model, "own": int((own["winner_model"] == model).sum()),
                    "n": own.height, "others": int((others["winner_model"] == model).sum()), "others_n": others.height})
    return pl.DataFrame(out, schema={"judge": pl.String, "model": pl.String, "own": pl.Int64, "n": pl.Int64,
                                     "others": pl.Int64, "others_n": pl.Int64})


def self_from(counts: pl.DataFrame) -> list[dict[str, Any]]:
    """Per judge: the share of its own model's pairs it gave its own model, beside the same pairs' share as
    other judges decided them. The gap is self-preference."""
    out = []
    for r in counts.to_dicts() if counts.height else []:
        own_rate = r["own"] / r["n"]
        other_rate = r["others"] / r["others_n"] if r["others_n"] else None
        out.append({"judge": r["judge"], "model": r["model"], "own_wins": own_rate, "n": r["n"],
                    "others_rate": other_rate, "others_n": r["others_n"],
                    "gap": None if other_rate is None else own_rate - other_rate})
    return sorted(out, key=lambda r: r["judge"])


def self_preference(j: pl.DataFrame) -> list[dict[str, Any]]:
    return self_from(self_counts(decided_pairs(candidate_scores(j))))


def length_bias(j: pl.DataFrame) -> list[dict[str, Any]]:
    return length_from(length_counts(decided_pairs(candidate_scores(j))))


def preferences(scores: pl.DataFrame) -> pl.DataFrame:
    """Each judge's preference between every two candidates of a prompt it scored both of (from
    candidate_scores): +1 (the first, by candidate id, scores higher), -1, or 0 (a tie). Scale-free, so a
    source's 1/0 choice, a rank and a 1-10 rating compare."""
    s = scores.select("judge", "judge_model", "prompt_id", "candidate_id", "score")
    pairs = s.join(s.select("judge", "prompt_id", "candidate_id", "score"), on=["judge", "prompt_id"], suffix="_b")
    return (pairs.filter(pl.col("candidate_id") < pl.col("candidate_id_b"))
            .select("judge", "judge_model", "prompt_id", pl.concat_str("candidate_id", "candidate_id_b").alias("pair"),
                    (pl.col("score") - pl.col("score_b")).sign().cast(pl.Int8).alias("pref")))


def agreement_counts(scores: pl.DataFrame) -> pl.DataFrame:
    """For each label an existing dataset brought (judges whose `judge_model` is `source:<name>`) and each other
    judge: how often each pair of preferences (-1, 0, +1) occurs on the candidate pairs both decided."""
    prefs = preferences(scores)
    source = prefs.filter(pl.col("judge_model").str.starts_with("source:"))
    others = prefs.filter(~pl.col("judge_model").fill_null("").str.starts_with("source:"))
    joined = source.join(others.select(pl.col("judge").alias("other_judge"), "pair", pl.col("pref").alias("other")),
                         on="pair")
    return (joined.group_by("judge_model", "judge", "other_judge", "pref", "other")
            .agg(pl.len().cast(pl.Int64).alias("n")))


def agreement_from(counts: pl.DataFrame) -> list[dict[str, Any]]:
    """On the pairs a source's label and another judge both decided: the share where they prefer the same side,
    and Cohen's kappa of their preferences. The Skywork-V2 check: where does the new jury dispute the source?"""
    from sklearn.metrics import cohen_kappa_score

    out = []
    if counts.is_empty():
        return out
    for (origin, label, judge), c in counts.group_by("judge_model", "judge", "other_judge"):
        a, b, n = c["pref"].to_numpy(), c["other"].to_numpy(), c["n"].to_numpy()
        kappa = float(cohen_kappa_score(a, b, sample_weight=n)) if len(set(a) | set(b)) > 1 else float("nan")
        out.append({"source": origin.removeprefix("source:"), "label": label, "judge": judge,
                    "pairs": int(n.sum()), "agreement": float(n[a == b].sum() / n.sum()), "kappa": kappa})
    return sorted(out, key=lambda r: (r["source"], r["label"], r["judge"]))


def source_agreement(j: pl.DataFrame) -> list[dict[str, Any]]:
    return agreement_from(agreement_counts(candidate_scores(j)))


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


#: prompt rows summarized at once: the summary's memory is bounded by this, not by the run's size
CHUNK_ROWS = 50_000


def summary(folder: Path | list[Path], chunk_rows: int = CHUNK_ROWS) -> dict[str, Any]:
    """What the manifest records about a run's judges, read in chunks of about `chunk_rows` prompt rows."""
    import pyarrow.parquet as pq

    per, pos, length, own, kappa, agree, ranks = [], [], [], [], [], [], []
    files = output_files(folder)
    chunks, rows = [[]], 0
    for f in files:
        if rows >= chunk_rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(f)
        rows += pq.ParquetFile(f).metadata.num_rows
    for chunk in chunks:
        j = judgments(chunk)
        if j.is_empty():
            continue
        per.append(j.group_by("judge", maintain_order=True).agg(
            pl.col("kind").first(), pl.len().cast(pl.Int64).alias("judgments"),
            (pl.col("parse_ok") & pl.col("score").is_not_null()).sum().cast(pl.Int64).alias("scored"),
            (~pl.col("parse_ok")).sum().cast(pl.Int64).alias("unparsed")))
        pos.append(position_counts(j))
        scores = candidate_scores(j)
        decided = decided_pairs(scores)
        length.append(length_counts(decided))
        own.append(self_counts(decided))
        kappa.append(kappa_counts(j, scores))
        agree.append(agreement_counts(scores))
        ranks.append(rank_matrix(j, scores))
    if not per:
        return {}
    judges = (pl.concat(per).group_by("judge", maintain_order=True)
              .agg(pl.col("kind").first(), pl.col("judgments", "scored", "unparsed").sum()))
    out: dict[str, Any] = {r.pop("judge"): r for r in judges.to_dicts()}
    for r in positions_from(_sum(pos, ["judge"])).to_dicts():
        out[r["judge"]]["position_consistency"] = r["consistency"]
    for r in length_from(_sum(length, ["judge"])):
        out[r["judge"]]["longer_wins"] = r["longer_wins"]
    for r in self_from(_sum(own, ["judge", "model"])):
        out[r["judge"]]["self_preference"] = {k: v for k, v in r.items() if k != "judge"}
    alpha, units = alpha_from(ranks)
    agree_rows = agreement_from(_sum(agree, ["judge_model", "judge", "other_judge", "pref", "other"]))
    return {"per_judge": dict(sorted(out.items())),
            "cohen_kappa": [{"a": a, "b": b, "kappa": k, "n": n}
                            for a, b, k, n in kappas_from(pl.concat(kappa, how="vertical_relaxed"))[1]],
            "krippendorff_alpha": alpha, "alpha_units": units,
            **({"source_agreement": agree_rows} if agree_rows else {})}
