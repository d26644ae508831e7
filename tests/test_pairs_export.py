"""Pairs from judged prompt rows, and the TRL export that trainers load. Pure stages on small real tables."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from curate.schemas.records import PAIR_ROW, PROMPT_ROW_WITH_CANDIDATES
from curate.stages import export, pairs
from curate.stages.base import StageContext
import pytest

#: the fast tier (./scripts/test --fast): no model, Ray or Prefect run here
pytestmark = pytest.mark.fast


def judgment(score, ok=True, judge="m:t"):
    return {"judge": judge, "kind": "pointwise", "aspect": "overall", "score": score if ok else None,
            "verdict": None, "feedback": f"Rating: [[{score}]]" if ok else "I cannot rate this.",
            "position": None, "parse_ok": ok, "error": None if ok else "no [[rating]] in judge output"}


def candidate(cid, response, *judgments):
    return {"candidate_id": cid, "model": "m", "response": response, "finish_reason": "stop", "n_tokens": 3,
            "gen_params": "{}", "judgments": list(judgments)}


def prompt_row(pid, *cands):
    return {"prompt_id": pid, "prompt": f"question {pid}", "messages": [{"role": "user", "content": f"question {pid}"}],
            "system": None, "source": "t.jsonl", "source_id": None, "meta": "{}", "candidates": list(cands)}


ROWS = [
    prompt_row("p1", candidate("a", "good", judgment(8), judgment(9)), candidate("b", "bad", judgment(2)),
               candidate("c", "mid", judgment(5))),
    prompt_row("p2", candidate("a", "x", judgment(5)), candidate("b", "y", judgment(5))),  # tie
    prompt_row("p3", candidate("a", "x", judgment(6)), candidate("b", "y", judgment(5.5))),  # margin 0.5
    # the unparsed judgment is ignored: it is not a score of 0 or of anything else
    prompt_row("p4", candidate("a", "x", judgment(7)), candidate("b", "y", judgment(None, ok=False))),
    prompt_row("p5", candidate("a", "x", judgment(3), judgment(None, ok=False)), candidate("b", "y", judgment(9))),
]


def run_pairs(**cfg):
    table = pa.Table.from_pylist(ROWS, schema=PROMPT_ROW_WITH_CANDIDATES)
    return pairs.process(table, pairs.Config(**cfg), StageContext())


def test_best_vs_worst_with_min_margin_and_reasons_for_every_drop():
    res = run_pairs(min_margin=1)
    got = res.out.to_pylist()
    assert [(r["prompt_id"], r["chosen"], r["rejected"], r["margin"]) for r in got] == [
        ("p1", "good", "bad", 6.5), ("p5", "y", "x", 6.0)]
    assert got[0]["chosen_score"] == 8.5 and got[0]["rejected_score"] == 2.0
    reasons = {json.loads(r["record"])["prompt_id"]: r["reason"] for r in res.dropped.to_pylist()}
    assert reasons == {
        "p2": "tie: both scored 5",
        "p3": "margin 0.5 < min_margin 1 (6 vs 5.5)",
        "p4": "fewer than 2 scored candidates (1 scored, 1 without a parsed score)",
    }
    assert res.n_out + res.n_dropped == len(ROWS)


def test_min_margin_zero_still_drops_ties_unless_ties_are_kept():
    res = run_pairs(min_margin=0)
    assert sorted(res.out["prompt_id"].to_pylist()) == ["p1", "p3", "p5"]
    res = run_pairs(min_margin=1, ties="keep")
    assert sorted(res.out["prompt_id"].to_pylist()) == ["p1", "p2", "p5"]
    assert res.out.filter(pa.compute.equal(res.out["prompt_id"], "p2"))["margin"].to_pylist() == [0.0]


def test_all_pairs_top_k_and_random_strategies():
    # p1 scores: good 8.5, mid 5, bad 2
    res = run_pairs(strategy="all_pairs", min_margin=3)
    p1 = [(r["chosen"], r["rejected"]) for r in res.out.to_pylist() if r["prompt_id"] == "p1"]
    assert p1 == [("good", "mid"), ("good", "bad"), ("mid", "bad")]
    notes = [r for r in res.dropped.to_pylist() if r["reason"].startswith("candidate pair:")]
    assert notes == []  # every p1 pair has margin >= 3
    res = run_pairs(strategy="all_pairs", min_margin=4)
    notes = [r["reason"] for r in res.dropped.to_pylist() if r["reason"].startswith("candidate pair:")]
    assert notes == ["candidate pair: margin 3.5 < min_margin 4 (8.5 vs 5)", "candidate pair: margin 3 < min_margin 4 (5 vs 2)"]
    assert res.n_out + res.n_dropped == len(ROWS), "candidate-pair notes do not count as dropped prompts"

    res = run_pairs(strategy="top_k_vs_bottom_k", k=1, min_margin=1)
    assert [(r["chosen"], r["rejected"]) for r in res.out.to_pylist() if r["prompt_id"] == "p1"] == [("good", "bad")]
    a = run_pairs(strategy="best_vs_random", min_margin=1, seed=3).out.to_pylist()
    b = run_pairs(strategy="best_vs_random", min_margin=1, seed=3).out.to_pylist()
    assert a == b and all(r["chosen"] in ("good", "y") for r in a)


def test_jury_agreement_and_difficulty():
    rows = [prompt_row("q", candidate("a", "A", judgment(8, judge="j1"), judgment(4, judge="j2"), judgment(9, judge="j3")),
                       candidate("b", "B", judgment(3, judge="j1"), judgment(6, judge="j2"), judgment(2, judge="j3")))]
    table = pa.Table.from_pylist(rows, schema=PROMPT_ROW_WITH_CANDIDATES)
    (pair,) = pairs.process(table, pairs.Config(min_margin=1, easy_margin=5), StageContext()).out.to_pylist()
    assert pair["chosen"] == "A" and pair["agreement"] == 2 / 3 and pair["difficulty"] == "hard"  # margin 10/3
    res = pairs.process(table, pairs.Config(min_margin=1, min_agreement=0.9), StageContext())
    assert res.out.num_rows == 0 and res.dropped["reason"].to_pylist() == ["agreement 0.667 < min_agreement 0.9"]


def test_export_standard_and_conversational_load_with_datasets(tmp_path):
    table = run_pairs(min_margin=1).out
    assert table.schema == PAIR_ROW
    std = export.process(table, export.Config(), StageContext()).out
    conv = export.process(table, export.Config(conversational=True), StageContext()).out
    pq.write_table(std, tmp_path / "std.parquet")
    pq.write_table(conv, tmp_path / "conv.parquet")

    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "std.parquet"), split="train")
    assert ds.column_names[:3] == ["prompt", "chosen", "rejected"]
    assert ds[0]["prompt"] == "question p1" and ds[0]["chosen"] == "good" and ds[0]["margin"] == 6.5
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "conv.parquet"), split="train")
    assert ds[0]["prompt"] == [{"role": "user", "content": "question p1"}]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "good"}]
    assert ds[0]["rejected"] == [{"role": "assistant", "content": "bad"}]
