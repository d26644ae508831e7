"""pairs: turn each judged prompt row into a preference pair, best vs worst candidate.

A candidate's score is the mean of its parsed scores (judgments that failed to parse count for nothing, they
are never read as a default). A prompt is dropped, with the reason, when fewer than two candidates have a score,
when the best and worst tie, or when their margin is under `min_margin`.
"""

from __future__ import annotations

import pyarrow as pa
from pydantic import Field

from schemas.records import PAIR_ROW
from schemas.validate import quarantine_table
from stages.base import StageConfig, StageContext, StageResult, StageSpec, fixed


class Config(StageConfig):
    strategy: str = Field("best_vs_worst", pattern="^best_vs_worst$")
    #: the smallest score gap between chosen and rejected that makes a pair
    min_margin: float = Field(1.0, ge=0)
    #: only judgments of this aspect count (None: all)
    aspect: str | None = None


def candidate_score(cand: dict, aspect: str | None) -> tuple[float | None, list[str]]:
    scores, judges = [], []
    for j in cand.get("judgments") or []:
        if j["parse_ok"] and j["score"] is not None and (aspect is None or j["aspect"] == aspect):
            scores.append(j["score"])
            judges.append(j["judge"])
    return (sum(scores) / len(scores) if scores else None), judges


def pick(row: dict, cfg: Config) -> tuple[dict | None, str | None]:
    scored = []
    unscored = 0
    for cand in row["candidates"] or []:
        score, judges = candidate_score(cand, cfg.aspect)
        if score is None:
            unscored += 1
        else:
            scored.append((score, cand, judges))
    if len(scored) < 2:
        return None, f"fewer than 2 scored candidates ({len(scored)} scored, {unscored} without a parsed score)"
    # Highest score first; ties broken by candidate_id so the choice is reproducible.
    scored.sort(key=lambda t: (-t[0], t[1]["candidate_id"]))
    (best, chosen, judges), (worst, rejected, _) = scored[0], scored[-1]
    margin = best - worst
    if margin == 0:
        return None, f"tie: all {len(scored)} scored candidates got {best:g}"
    if margin < cfg.min_margin:
        return None, f"margin {margin:g} < min_margin {cfg.min_margin:g} (best {best:g}, worst {worst:g})"
    return {
        "prompt_id": row["prompt_id"],
        "prompt": row["prompt"],
        "messages": row["messages"],
        "system": row.get("system"),
        "chosen": chosen["response"],
        "rejected": rejected["response"],
        "chosen_score": best,
        "rejected_score": worst,
        "margin": margin,
        "strength": None,
        "agreement": None,
        "rationale": None,
        "chosen_model": chosen["model"],
        "rejected_model": rejected["model"],
        "chosen_id": chosen["candidate_id"],
        "rejected_id": rejected["candidate_id"],
        "judge": ",".join(sorted(set(judges))),
        "source": row.get("source"),
    }, None


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    pairs, dropped, reasons = [], [], []
    for row in table.to_pylist():
        pair, reason = pick(row, cfg)
        if pair is None:
            dropped.append(row)
            reasons.append(reason)
        else:
            pairs.append(pair)
    return StageResult(
        out=pa.Table.from_pylist(pairs, schema=PAIR_ROW),
        dropped=quarantine_table("pairs", dropped, reasons),
    )


STAGE = StageSpec(
    name="pairs",
    config=Config,
    reads=fixed("prompt_id", "prompt", "messages", "candidates", "candidates.judgments"),
    writes=lambda cfg: {f.name for f in PAIR_ROW},
    doc="Best-vs-worst preference pair per prompt with a minimum score margin; ties and small margins are "
    "dropped with the reason.",
    process=process,
    reshapes=True,
)
