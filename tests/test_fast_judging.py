"""The judges' logic on a scripted engine (fast tier): what a judge does with each kind of answer, position
swaps, and the pairs that come out. The answers are the test's; the real judges run in test_engine_judge.py."""

from __future__ import annotations

import pyarrow as pa
import pytest

from curate.schemas.records import PROMPT_ROW_WITH_CANDIDATES
from curate.stages import judge, jury, pairs
from curate.stages.base import StageContext
from scripted import scripted

pytestmark = pytest.mark.fast


def rows(*answers: list[str]) -> pa.Table:
    out = []
    for i, cands in enumerate(answers):
        out.append({"prompt_id": f"p{i}", "prompt": f"question {i}", "messages": [{"role": "user", "content": f"question {i}"}],
                    "system": None, "source": "t", "source_id": None, "meta": "{}",
                    "candidates": [{"candidate_id": f"p{i}c{j}", "model": "m", "response": text, "finish_reason": "stop",
                                    "n_tokens": 3, "gen_params": "{}", "judgments": []} for j, text in enumerate(cands)]})
    return pa.Table.from_pylist(out, schema=PROMPT_ROW_WITH_CANDIDATES)


def judge_with(answer, table, **cfg):
    engine, inner = scripted(answer)
    res = judge.process(table, judge.Config(**cfg), StageContext({"default": engine}))
    return res, inner


def test_pointwise_scores_are_parsed_and_an_unparsable_answer_is_a_recorded_failure():
    def answer(req):
        text = req.messages[-1]["content"]
        return "Rating: [[9]]" if "GOOD" in text else "Rating: [[2]]" if "BAD" in text else "I cannot rate this."

    res, inner = judge_with(answer, rows(["GOOD answer", "BAD answer", "odd answer"]), retries=1)
    cands = res.out.to_pylist()[0]["candidates"]
    got = [(j["score"], j["parse_ok"]) for c in cands for j in c["judgments"]]
    assert got == [(9.0, True), (2.0, True), (None, False)]  # never a default score
    assert cands[2]["judgments"][0]["feedback"] == "I cannot rate this."
    assert len(inner.requests) == 4  # the unparsable one was asked once more (retries: 1)


def test_pairwise_position_swap_turns_a_position_biased_judge_into_ties():
    """A judge that always prefers whatever it is shown first flips under the swap: every verdict is a tie."""
    res, _ = judge_with(lambda req: "[[A]]", rows(["one", "two"]), template="mt_bench_pair_v2")
    scores = [j["score"] for c in res.out.to_pylist()[0]["candidates"] for j in c["judgments"]]
    assert scores and set(scores) == {0.5}
    got = pairs.process(res.out, pairs.Config(), StageContext())
    assert got.out.num_rows == 0 and "tie" in got.dropped.to_pylist()[0]["reason"]


def test_a_consistent_pairwise_judge_wins_both_orders_and_makes_the_pair():
    def answer(req):  # prefers the answer that says "right", wherever it is shown
        text = req.messages[-1]["content"]
        a = text.index("[The Start of Assistant A's Answer]")
        b = text.index("[The Start of Assistant B's Answer]")
        return "[[A]]" if "right" in text[a:b] else "[[B]]"

    res, _ = judge_with(answer, rows(["wrong", "right"]), template="mt_bench_pair_v2")
    got = pairs.process(res.out, pairs.Config(), StageContext()).out.to_pylist()
    assert [(p["chosen"], p["rejected"], p["margin"]) for p in got] == [("right", "wrong", 1.0)]


def test_a_jury_of_two_scripted_judges_agrees_and_disagrees_per_prompt():
    table = rows(["GOOD", "BAD"], ["GOOD", "BAD"])
    first, _ = judge_with(lambda r: "Rating: [[8]]" if "GOOD" in r.messages[-1]["content"] else "Rating: [[3]]", table,
                          name="a")
    second, _ = judge_with(lambda r: "Rating: [[2]]" if "GOOD" in r.messages[-1]["content"] and "question 1" in
                           r.messages[-1]["content"] else "Rating: [[7]]" if "GOOD" in r.messages[-1]["content"]
                           else "Rating: [[4]]", first.out, name="b")
    voted = jury.process(second.out, jury.Config(method="borda"), StageContext()).out.to_pylist()
    assert [r["disagreement"] for r in voted] == [False, True]
    kept = pairs.process(pa.Table.from_pylist(voted, schema=PROMPT_ROW_WITH_CANDIDATES),
                         pairs.Config(judges=["jury"], min_margin=0.1), StageContext()).out.to_pylist()
    assert [p["prompt_id"] for p in kept] == ["p0"]
