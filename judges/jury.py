"""Jury aggregation: several judges' scores for one prompt's candidates become one score per candidate.

  mean, median   of the judges' scores (the judges should share a scale: e.g. UltraFeedback's four 1-5 aspects
                 averaged into an overall score)
  majority       Copeland: each pair of candidates is decided by the majority of the judges that scored both;
                 a candidate's score is its share of pairwise wins (ties count half)
  borda          each judge ranks the candidates; a candidate gets, from each judge, the share of the others it
                 beats (ties half); the scores are averaged. Majority and Borda are scale-free, so they combine
                 judges on different scales.

Agreement for a prompt: for each pair of candidates, the share of judges (that scored both) on the side most
of them took; averaged over the pairs.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from itertools import combinations
from typing import Literal

Method = Literal["mean", "median", "majority", "borda"]
#: rank, strength and safety judgments come from existing data's labels (schemas/layouts.py); safety judgments
#: (PKU-SafeRLHF's safer choice and safe flags) never mix into a helpfulness score unless asked for by kind
JudgeKind = Literal["pointwise", "listwise", "pairwise", "reward_model", "jury", "debate", "rank", "strength", "safety"]


def majority(votes: Iterable[str | None], tie: str = "tie") -> str | None:
    """The verdict most voters gave (votes of None abstain); two verdicts sharing the top count are `tie`, and
    no vote at all is None. A debate's last round and judge-eval's jury both decide this way."""
    counted = Counter(v for v in votes if v)
    if not counted:
        return None
    (top, n), *rest = counted.most_common()
    return top if not rest or rest[0][1] < n else tie


def judge_scores(cand: dict, aspect: str | None = None, kind: str | None = None,
                 judges: Iterable[str] | None = None, exclude_aspects: Iterable[str | None] = ()) -> dict[str, float]:
    """Each judge's mean parsed score for a candidate over the judgments selected by aspect, kind and judge
    name (None: any, but safety labels only when asked for by kind or name); a pairwise judge's score is its
    mean points against the candidate's opponents."""
    wanted = set(judges) if judges is not None else None
    per: dict[str, list[float]] = {}
    for j in cand.get("judgments") or []:
        if not (j["parse_ok"] and j["score"] is not None):
            continue
        if aspect is not None and j["aspect"] != aspect:
            continue
        if j["aspect"] in exclude_aspects:
            continue
        if kind is not None and j["kind"] != kind:
            continue
        if j["kind"] == "safety" and kind is None and judges is None and aspect is None:
            continue
        if wanted is not None and j["judge"] not in wanted:
            continue
        per.setdefault(j["judge"], []).append(j["score"])
    return {judge: sum(v) / len(v) for judge, v in per.items()}


def mean_score(cand: dict, **selection) -> float | None:
    """A candidate's score: the mean over judges of each judge's mean (judge_scores' selection), or None."""
    per = judge_scores(cand, **selection)
    return sum(per.values()) / len(per) if per else None


def voters(cand: dict, scores: dict[str, float]) -> dict[str, float]:
    """The judges behind a candidate's scores: a jury judgment stands for its members, so a pair's agreement
    counts the members' votes, not the jury's single one."""
    out: dict[str, float] = {}
    juries = {j["judge"]: j for j in cand.get("judgments") or [] if j["kind"] == "jury"}
    for judge, score in scores.items():
        if judge in juries and juries[judge].get("members"):
            out.update({m["judge"]: m["score"] for m in juries[judge]["members"]})
        else:
            out[judge] = score
    return out


def _sign(a: float, b: float) -> int:
    return (a > b) - (a < b)


def aggregate(per_candidate: list[dict[str, float]], method: Method) -> list[float | None]:
    """One jury score per candidate (None when no judge scored it)."""
    if method in ("mean", "median"):
        fn = statistics.fmean if method == "mean" else statistics.median
        return [fn(s.values()) if s else None for s in per_candidate]
    n = len(per_candidate)
    points = [0.0] * n
    counts = [0] * n
    if method == "majority":
        for a, b in combinations(range(n), 2):
            shared = per_candidate[a].keys() & per_candidate[b].keys()
            if not shared:
                continue
            vote = sum(_sign(per_candidate[a][j], per_candidate[b][j]) for j in shared)
            points[a] += 1.0 if vote > 0 else 0.5 if vote == 0 else 0.0
            points[b] += 1.0 if vote < 0 else 0.5 if vote == 0 else 0.0
            counts[a] += 1
            counts[b] += 1
    else:  # borda
        judges = {j for s in per_candidate for j in s}
        for judge in judges:
            rated = [i for i in range(n) if judge in per_candidate[i]]
            if len(rated) < 2:
                continue
            for i in rated:
                mine = per_candidate[i][judge]
                others = [per_candidate[k][judge] for k in rated if k != i]
                points[i] += sum(1.0 if mine > o else 0.5 if mine == o else 0.0 for o in others) / len(others)
                counts[i] += 1
    return [points[i] / counts[i] if counts[i] else None for i in range(n)]


def row_agreement(per_candidate: list[dict[str, float]]) -> float | None:
    shares = []
    for a, b in combinations(per_candidate, 2):
        shared = a.keys() & b.keys()
        if len(shared) < 2:
            continue
        signs = [_sign(a[j], b[j]) for j in shared]
        shares.append(max(signs.count(s) for s in (-1, 0, 1)) / len(signs))
    return sum(shares) / len(shares) if shares else None
