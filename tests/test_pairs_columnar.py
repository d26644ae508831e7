"""The pairs stage's columnar path (best_vs_worst on whole arrays) gives exactly the per-row path's tables: the
same pairs, scores to the last bit, reasons and dropped records, on generated prompts with ties, unparsed and
safety judgments, several judges and aspects, truncated answers and every option the columnar path takes."""

from __future__ import annotations

import itertools
import random

import pyarrow as pa
import pytest

from curate.schemas.records import PROMPT_ROW_WITH_CANDIDATES
from curate.stages import pairs, pairs_columnar

pytestmark = pytest.mark.fast

SCORES = [None, 0.5, 1.0, 2.0, 2.5, 3.0, 7.25, 0.1, 0.2]


def judgment(rng: random.Random) -> dict:
    score = rng.choice(SCORES)
    return {"judge": rng.choice(["a", "b", "c", "zeta"]), "kind": rng.choice(["pointwise", "pointwise", "pairwise",
                                                                              "safety"]),
            "aspect": rng.choice(["overall", "overall", "helpfulness", None]), "score": score, "verdict": None,
            "feedback": None, "position": None, "opponent": None,
            "parse_ok": score is not None and rng.random() > 0.1, "error": None, "strength": None,
            "judge_model": None, "members": None}


def table(seed: int) -> pa.Table:
    rng = random.Random(seed)
    rows = []
    for r in range(rng.randint(0, 40)):
        cands = None if rng.random() < 0.05 else [
            {"candidate_id": f"c{rng.randint(0, 99):02d}-{i}", "model": rng.choice(["m1", "m2", None]),
             "response": f"answer {r}.{i}", "finish_reason": rng.choice(["stop", "length", None]), "n_tokens": 3,
             "gen_params": "{}", "judgments": [judgment(rng) for _ in range(rng.randint(0, 5))], "image": None}
            for i in range(rng.randint(0, 5))]
        rows.append({"prompt_id": f"p{r}", "prompt": f"question {r}", "messages": [{"role": "user",
                                                                                    "content": f"question {r}"}],
                     "system": rng.choice([None, "be kind"]), "source": rng.choice([None, "s"]), "meta": "{}",
                     "persona": None, "documents": None, "candidates": cands,
                     "disagreement": rng.choice([None, True, False])})
    return pa.Table.from_pylist(rows, schema=PROMPT_ROW_WITH_CANDIDATES)


CONFIGS = [dict(zip(("min_margin", "ties", "min_agreement", "allow_truncated", "aspect", "judge_kind", "judges",
                     "easy_margin"), values, strict=True))
           for values in itertools.product([0, 0.5, 1.0], ["drop", "keep"], [None, 0.5], [False, True],
                                           [None, "overall"], [None, "pointwise"], [None, ["a", "zeta"]], [None, 1.0])]


@pytest.mark.parametrize("seed", range(12))
def test_columnar_pairs_equal_the_per_row_path(seed):
    t = table(seed)
    for options in random.Random(seed).sample(CONFIGS, 24):
        cfg = pairs.Config(**options)
        assert pairs_columnar.applies(cfg)
        fast = pairs_columnar.best_vs_worst(t, cfg)
        slow = pairs.process_rows(t, cfg)
        assert fast is not None
        assert fast.out.schema == slow.out.schema
        assert fast.out.to_pylist() == slow.out.to_pylist(), options
        assert fast.dropped.to_pylist() == slow.dropped.to_pylist(), options
        assert (fast.out_sources, fast.dropped_sources) == (slow.out_sources, slow.dropped_sources)


def test_judgments_the_columnar_path_does_not_cover_go_the_per_row_way():
    t = table(3).to_pylist()
    for kind in ("jury", "strength"):
        rows = [dict(r) for r in t]
        row = next(r for r in rows if r["candidates"] and any(c["judgments"] for c in r["candidates"]))
        j = next(j for c in row["candidates"] for j in c["judgments"])
        if kind == "jury":
            j["kind"] = "jury"
        else:
            j["strength"] = 1.0
        assert pairs_columnar.best_vs_worst(pa.Table.from_pylist(rows, schema=PROMPT_ROW_WITH_CANDIDATES),
                                            pairs.Config()) is None
    assert not pairs_columnar.applies(pairs.Config(strategy="all_pairs"))
    assert not pairs_columnar.applies(pairs.Config(label_key="human_chosen"))
