"""rank: keep every candidate of a prompt as a ranked list, with every judge's scores (RankDPO / listwise).

The ranking score of a response is RankDPO's φ = wins / (n · (k − 1)): over n judges, the share of the other
k − 1 responses each judge scored lower (a tie counts half). Responses are ordered by φ (then by mean score);
`rank` 1 is the best. A candidate no judge could score is left out of the list (its failed judgments are in the
previous stage's output); a prompt with fewer than two scored responses is dropped with the reason.
"""

from __future__ import annotations


import pyarrow as pa
from pydantic import Field

from curate.schemas.records import RANKED_ROW
from curate.schemas.validate import quarantine_table
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec, fixed
from curate.judges.jury import JudgeKind, judge_scores


class Config(StageConfig):
    #: which judgments count (as in pairs): aspect, kind, judge names; None: all
    aspect: str | None = None
    judge_kind: JudgeKind | None = None
    judges: list[str] | None = None
    #: the fewest scored responses a list must have
    min_responses: int = Field(2, ge=2)


def phi(per_judge: list[dict[str, float]], judges: list[str]) -> list[float]:
    k = len(per_judge)
    wins = [0.0] * k
    n_pairs = [0] * k
    for j in judges:
        for a in range(k):
            if j not in per_judge[a]:
                continue
            for b in range(k):
                if a != b and j in per_judge[b]:
                    n_pairs[a] += 1
                    sa, sb = per_judge[a][j], per_judge[b][j]
                    wins[a] += 1.0 if sa > sb else 0.5 if sa == sb else 0.0
    return [w / n if n else 0.0 for w, n in zip(wins, n_pairs)]


def ranked(row: dict, cfg: Config) -> tuple[dict | None, str | None]:
    scored = [(c, judge_scores(c, cfg.aspect, cfg.judge_kind, cfg.judges)) for c in row["candidates"] or []]
    scored = [(c, s) for c, s in scored if s]
    if len(scored) < cfg.min_responses:
        return None, f"{len(scored)} scored responses < min_responses {cfg.min_responses}"
    judges = sorted({j for _, s in scored for j in s})
    phis = phi([s for _, s in scored], judges)
    means = [sum(s.values()) / len(s) for _, s in scored]
    order = sorted(range(len(scored)), key=lambda i: (-phis[i], -means[i], scored[i][0]["candidate_id"]))
    return {
        "prompt_id": row["prompt_id"], "prompt": row["prompt"], "messages": row["messages"],
        "system": row.get("system"),
        "responses": [scored[i][0]["response"] for i in order],
        "models": [scored[i][0]["model"] for i in order],
        "candidate_ids": [scored[i][0]["candidate_id"] for i in order],
        "judges": judges,
        "scores": [[scored[i][1].get(j) for j in judges] for i in order],
        "rank": list(range(1, len(order) + 1)),
        "ranking_score": [phis[i] for i in order],
        "source": row.get("source"),
    }, None


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    out, dropped, reasons = [], [], []
    for row in table.to_pylist():
        r, reason = ranked(row, cfg)
        if r is None:
            dropped.append(row)
            reasons.append(reason)
        else:
            out.append(r)
    return StageResult(out=pa.Table.from_pylist(out, schema=RANKED_ROW),
                       dropped=quarantine_table(dropped, reasons))


STAGE = StageSpec(
    name="rank",
    config=Config,
    reads=fixed("prompt_id", "prompt", "messages", "candidates", "candidates.judgments"),
    writes=lambda cfg: {f.name for f in RANKED_ROW},
    doc="Ranked list per prompt with every judge's scores, RankDPO ranking score φ = wins/(n·(k−1)) and rank.",
    process=process,
    reshapes=True,
)
