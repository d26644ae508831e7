"""The pairs stage's common case as column operations: best_vs_worst over judges' scores, on whole arrays.

A corpus of existing preference data (a million TRL pairs loaded back, each with its source's label) goes through
`pairs` once per row; the per-row path turns every row, candidate and judgment into Python objects. Here the
judgments are flattened into arrays, each (candidate, judge) mean and each candidate's score summed in the
judgments' own order (so every float is the per-row path's, bit for bit), the best and worst candidate of each
prompt picked by one sort, and the pair rows taken from the columns. Only dropped prompts become Python objects
(they are written whole, with their reasons).

It covers `strategy: best_vs_worst` without labels from `meta`, safety or grounding aspects; tables whose
candidates carry a jury's judgments (agreement counts the jury's members), strength judgments or images take the
per-row path. tests/test_pairs_columnar.py checks both paths give the same tables on generated judgments.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.schemas.records import PAIR_ROW
from curate.schemas.validate import quarantine_table
from curate.stages.base import StageResult


def applies(cfg: Any) -> bool:
    """The config is one this path computes exactly (the table may still send it back: see `best_vs_worst`)."""
    return (cfg.strategy == "best_vs_worst" and cfg.label_key is None and cfg.safety_aspect is None
            and cfg.grounding_aspect is None and cfg.min_grounded is None)


def _field(arr: pa.Array, name: str) -> pa.Array:
    return pc.struct_field(arr, name)


def best_vs_worst(table: pa.Table, cfg: Any) -> StageResult | None:
    """The stage's result for this batch, or None when its judgments need the per-row path."""
    rows = table.num_rows
    cands = table.column("candidates").combine_chunks()
    cand_row = pc.list_parent_indices(cands).to_numpy().astype(np.int64)
    flat_c = pc.list_flatten(cands)
    judgments = _field(flat_c, "judgments")
    j_cand = pc.list_parent_indices(judgments).to_numpy().astype(np.int64)
    flat_j = pc.list_flatten(judgments)
    kind = _field(flat_j, "kind")
    if (pc.any(pc.equal(kind, "jury")).as_py() or _field(flat_j, "strength").null_count != len(flat_j)
            or _field(flat_c, "image").null_count != len(flat_c)):
        return None

    # the judgments that count (jury.judge_scores' selection; exclude_aspects is (None, None) here)
    aspect = _field(flat_j, "aspect")
    keep = pc.and_(pc.fill_null(_field(flat_j, "parse_ok"), False), pc.is_valid(_field(flat_j, "score")))
    keep = pc.and_(keep, pc.is_valid(aspect))
    if cfg.aspect is not None:
        keep = pc.and_(keep, pc.fill_null(pc.equal(aspect, cfg.aspect), False))
    if cfg.judge_kind is not None:
        keep = pc.and_(keep, pc.fill_null(pc.equal(kind, cfg.judge_kind), False))
    if cfg.judges is not None:
        keep = pc.and_(keep, pc.fill_null(pc.is_in(_field(flat_j, "judge"), pa.array(cfg.judges, pa.string())),
                                          False))
    if cfg.judge_kind is None and cfg.judges is None and cfg.aspect is None:
        keep = pc.and_(keep, pc.invert(pc.fill_null(pc.equal(kind, "safety"), False)))
    sel = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
    judge_codes = pc.dictionary_encode(_field(flat_j, "judge").take(pa.array(sel, pa.int64())))
    judge_names = judge_codes.dictionary
    code = judge_codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    cand_of = j_cand[sel]
    score = _field(flat_j, "score").take(pa.array(sel, pa.int64())).to_numpy(zero_copy_only=False)

    # each (candidate, judge)'s mean, summed in judgment order; groups in order of first appearance
    n_judges = max(1, len(judge_names))
    group_key, first, inverse = np.unique(cand_of * n_judges + code, return_index=True, return_inverse=True)
    sums = np.bincount(inverse, weights=score, minlength=len(group_key))
    means = sums / np.bincount(inverse, minlength=len(group_key))
    by_first = np.argsort(first, kind="stable")
    g_cand, g_judge, g_mean = cand_of[first][by_first], code[first][by_first], means[by_first]
    # each candidate's score: the mean of its judges' means, summed in first-appearance order
    n_cands = len(flat_c)
    judges_per = np.bincount(g_cand, minlength=n_cands)
    cand_sum = np.bincount(g_cand, weights=g_mean, minlength=n_cands)
    scored = judges_per > 0
    cand_score = np.where(scored, cand_sum / np.maximum(judges_per, 1), np.nan)

    # best first, ties by candidate_id: one sort over (row, -score, candidate_id) of the scored candidates
    ids = _field(flat_c, "candidate_id").to_numpy(zero_copy_only=False).astype(str)
    s_idx = np.flatnonzero(scored)
    order = s_idx[np.lexsort((ids[s_idx], -cand_score[s_idx], cand_row[s_idx]))]
    per_row_scored = np.bincount(cand_row[s_idx], minlength=rows)
    per_row_all = np.bincount(cand_row, minlength=rows)
    starts = (np.cumsum(per_row_scored) - per_row_scored).astype(np.int64)
    enough = per_row_scored >= 2
    best = np.full(rows, -1, np.int64)
    worst = np.full(rows, -1, np.int64)
    best[enough] = order[starts[enough]]
    worst[enough] = order[starts[enough] + per_row_scored[enough] - 1]

    # agreement: the judges both scored, each a vote for chosen (1), a tie (0.5) or rejected (0)
    hi_sel = np.isin(g_cand, best[enough])
    lo_sel = np.isin(g_cand, worst[enough])
    hi_k = cand_row[g_cand[hi_sel]] * n_judges + g_judge[hi_sel]
    lo_k = cand_row[g_cand[lo_sel]] * n_judges + g_judge[lo_sel]
    _, hi_at, lo_at = np.intersect1d(hi_k, lo_k, assume_unique=True, return_indices=True)
    hi_m, lo_m = g_mean[hi_sel][hi_at], g_mean[lo_sel][lo_at]
    vote = np.where(hi_m > lo_m, 1.0, np.where(hi_m == lo_m, 0.5, 0.0))
    shared_row = cand_row[g_cand[hi_sel][hi_at]]
    shared = np.bincount(shared_row, minlength=rows)
    agree = np.where(shared > 0, np.bincount(shared_row, weights=vote, minlength=rows) / np.maximum(shared, 1),
                     np.nan)

    hi_score = np.where(enough, cand_score[np.maximum(best, 0)], np.nan)
    lo_score = np.where(enough, cand_score[np.maximum(worst, 0)], np.nan)
    margin = hi_score - lo_score
    finish = _field(flat_c, "finish_reason").to_numpy(zero_copy_only=False)
    truncated = np.array([f == "length" for f in finish], dtype=bool) if len(finish) else np.zeros(0, bool)

    # each prompt's fate, in the per-row path's order of checks
    reasons: dict[int, str] = {}
    kept = np.zeros(rows, dtype=bool)
    for r in np.flatnonzero(~enough):
        reasons[int(r)] = (f"fewer than 2 scored candidates ({per_row_scored[r]} scored, "
                           f"{per_row_all[r] - per_row_scored[r]} without a parsed score)")
    for r in np.flatnonzero(enough):
        m, hi, lo = margin[r], hi_score[r], lo_score[r]
        a = None if np.isnan(agree[r]) else float(agree[r])
        if m == 0 and cfg.ties == "drop":
            reasons[int(r)] = f"tie: both scored {hi:g}"
        elif m < cfg.min_margin and not (m == 0 and cfg.ties == "keep"):
            reasons[int(r)] = f"margin {m:g} < min_margin {cfg.min_margin:g} ({hi:g} vs {lo:g})"
        elif cfg.min_agreement is not None and (a is None or a < cfg.min_agreement):
            reasons[int(r)] = f"agreement {a if a is None else round(a, 3)} < min_agreement {cfg.min_agreement:g}"
        elif not cfg.allow_truncated and truncated[best[r]]:
            reasons[int(r)] = "chosen was truncated (finish_reason length; allow_truncated: true keeps it)"
        else:
            kept[r] = True

    # the pair rows, from the columns
    at = np.flatnonzero(kept)
    take_rows = pa.array(at, pa.int64())
    hi_c, lo_c = pa.array(best[at], pa.int64()), pa.array(worst[at], pa.int64())

    def carried(name: str) -> pa.Array | None:
        return table.column(name).take(take_rows) if name in table.column_names else None

    def cand_field(name: str, which: pa.Array) -> pa.Array:
        return _field(flat_c, name).take(which)

    judge_sets = _judge_sets(at, best, worst, g_cand, g_judge, judge_names)
    m_at = margin[at]
    cols: dict[str, Any] = {
        "prompt_id": carried("prompt_id"), "prompt": carried("prompt"), "messages": carried("messages"),
        "system": carried("system"), "chosen": cand_field("response", hi_c), "rejected": cand_field("response", lo_c),
        "chosen_score": pa.array(hi_score[at]), "rejected_score": pa.array(lo_score[at]), "margin": pa.array(m_at),
        "agreement": pa.array(agree[at], from_pandas=True), "disagreement": carried("disagreement"),
        "difficulty": None if cfg.easy_margin is None else pa.array(
            np.where(m_at >= cfg.easy_margin, "easy", "hard").astype(object) if len(at) else [], pa.string()),
        "persona": carried("persona"), "documents": carried("documents"),
        "chosen_model": cand_field("model", hi_c), "rejected_model": cand_field("model", lo_c),
        "chosen_id": cand_field("candidate_id", hi_c), "rejected_id": cand_field("candidate_id", lo_c),
        "judge": pa.array(judge_sets, pa.string()), "source": carried("source"),
    }
    if cfg.allow_truncated:
        cols["chosen_truncated"] = pa.array(truncated[best[at]]) if len(at) else pa.array([], pa.bool_())
        cols["rejected_truncated"] = pa.array(truncated[worst[at]]) if len(at) else pa.array([], pa.bool_())
    out = pa.Table.from_arrays([_cast(cols.get(f.name), f.type, len(at)) for f in PAIR_ROW], schema=PAIR_ROW)
    dropped_at = sorted(reasons)
    records = table.take(pa.array(dropped_at, pa.int64())).to_pylist() if dropped_at else []
    return StageResult(out=out, dropped=quarantine_table(records, [reasons[r] for r in dropped_at]),
                       out_sources=len(at), dropped_sources=rows - len(at))


def _cast(values: pa.Array | pa.ChunkedArray | None, typ: pa.DataType, n: int) -> pa.Array:
    if values is None:
        return pa.nulls(n, typ)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.cast(typ)


def _judge_sets(at: np.ndarray, best: np.ndarray, worst: np.ndarray, g_cand: np.ndarray, g_judge: np.ndarray,
                judge_names: pa.Array) -> list[str]:
    """Per kept prompt, the judges behind either side's score, sorted and comma-joined."""
    import polars as pl

    if not len(at):
        return []
    sides = pl.DataFrame({"pair": np.concatenate([np.arange(len(at)), np.arange(len(at))]),
                          "cand": np.concatenate([best[at], worst[at]])})
    groups = pl.DataFrame({"cand": g_cand, "judge": pl.Series(judge_names.to_pylist()).gather(g_judge)
                           if len(g_judge) else pl.Series([], dtype=pl.String)})
    joined = (sides.join(groups, on="cand").select("pair", "judge").unique()
              .sort(["pair", "judge"]).group_by("pair", maintain_order=True).agg(pl.col("judge").str.join(",")))
    out = [""] * len(at)
    for pair, text in zip(joined["pair"].to_list(), joined["judge"].to_list(), strict=True):
        out[pair] = text
    return out
