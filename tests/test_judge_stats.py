"""The run's judge summary reads a judged stage a chunk of files at a time (its memory is bounded by the chunk,
not by the run): the figures must not depend on where the chunks fall."""

from __future__ import annotations

import math
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.judges.stats import summary
from curate.schemas.records import PROMPT_ROW_WITH_CANDIDATES

pytestmark = pytest.mark.fast


def judgment(judge: str, kind: str, score: float | None, *, model: str | None, position: int | None = None,
             opponent: str | None = None, verdict: str | None = None) -> dict:
    return {"judge": judge, "kind": kind, "aspect": None, "score": score, "verdict": verdict, "feedback": None,
            "position": position, "opponent": opponent, "parse_ok": score is not None, "error": None,
            "strength": None, "judge_model": model, "members": None}


def judged_rows(n: int, seed: int) -> list[dict]:
    """Prompts with 2-3 candidates from two models, judged by two pointwise judges (one of each model), a
    pairwise judge shown both orders, a jury and a source's label; some outputs unparsed."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cands = []
        k = rng.choice([2, 2, 3])
        ids = [f"p{i}c{c}" for c in range(k)]
        for c, cid in enumerate(ids):
            model = rng.choice(["m1", "m2"])
            js = [judgment("m1:t", "pointwise", rng.choice([1.0, 3.0, 5.0, 7.0, 9.0, None]), model="m1"),
                  judgment("m2:t", "pointwise", float(rng.randint(1, 10)), model="m2"),
                  judgment("jury", "jury", rng.random() * 10, model=None)]
            if c == 0:
                js.append(judgment("source:trl/chosen", "pointwise", 1.0, model="source:trl"))
            elif c == 1:
                js.append(judgment("source:trl/chosen", "pointwise", 0.0, model="source:trl"))
            for opp in ids:
                if opp != cid:
                    for pos in (0, 1):
                        v = rng.choice(["win", "loss"])
                        js.append(judgment("m1:pw", "pairwise", 1.0 if v == "win" else 0.0, model="m1",
                                           position=pos, opponent=opp, verdict=v))
            cands.append({"candidate_id": cid, "model": model, "response": "x" * rng.randint(5, 60),
                          "finish_reason": "stop", "n_tokens": 3, "gen_params": "{}", "judgments": js,
                          "image": None})
        rows.append({"prompt_id": f"p{i}", "prompt": "q", "messages": [], "candidates": cands})
    return rows


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_summary_read_in_chunks_equals_the_summary_read_at_once(tmp_path, seed):
    rows = judged_rows(120, seed)
    folder = tmp_path / "03_judge"
    folder.mkdir()
    for f, start in enumerate(range(0, len(rows), 17)):
        pq.write_table(pa.Table.from_pylist(rows[start:start + 17], schema=PROMPT_ROW_WITH_CANDIDATES),
                       folder / f"part-{f:05d}.parquet")
    whole = summary(folder, chunk_rows=10**9)
    for chunk in (1, 30, 60):
        assert same(summary(folder, chunk_rows=chunk), whole), chunk
    per = whole["per_judge"]
    assert set(per) == {"m1:t", "m2:t", "m1:pw", "jury", "source:trl/chosen"}
    assert per["m1:t"]["unparsed"] > 0 and per["m1:pw"]["position_consistency"] < 1
    assert "self_preference" in per["m1:t"] and whole["cohen_kappa"][0]["n"] > 0
    assert whole["krippendorff_alpha"] is not None and whole["source_agreement"]
