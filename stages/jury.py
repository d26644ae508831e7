"""jury: aggregate the judgments of several judges (judge stages upstream: other models, templates, aspects or
temperatures) into one `jury` judgment per candidate, and flag prompts the judges disagree on.

Each candidate gets a judgment of kind "jury" (judge = the jury's name) whose score is the aggregate (see
judges/jury.py for mean, median, majority and borda) and whose `members` lists the member judges' scores, so pairs
downstream can pick the jury (`judges: [jury]`) and still report the members' agreement. The prompt row gets
`jury_agreement` (per candidate pair, the share of judges on the majority side, averaged) and `disagreement`
(agreement under `disagreement_below`). Run-level inter-judge agreement (Cohen's kappa per pair of judges,
Krippendorff's alpha) is in the run's manifest.
"""

from __future__ import annotations

import pyarrow as pa
from pydantic import Field

from curate.judges.jury import JudgeKind, Method, aggregate, judge_scores, row_agreement
from curate.schemas.records import PROMPT_ROW_WITH_CANDIDATES
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec, fixed


class Config(StageConfig):
    #: the jury's label on its judgments
    name: str = "jury"
    method: Method = "borda"
    #: which judgments are the jury's members: judge names, an aspect, a kind (None: all but other juries)
    judges: list[str] | None = None
    aspect: str | None = None
    judge_kind: JudgeKind | None = None
    #: the aspect the jury's judgments are filed under
    output_aspect: str = "overall"
    #: a prompt whose jury agreement is below this is flagged `disagreement`
    disagreement_below: float = Field(0.75, ge=0, le=1)


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    rows = table.to_pylist()
    for row in rows:
        cands = row["candidates"] or []
        members = []
        for cand in cands:
            scores = judge_scores(cand, cfg.aspect, cfg.judge_kind, cfg.judges)
            if cfg.judges is None:  # a jury does not sit on another jury
                kinds = {j["judge"]: j["kind"] for j in cand.get("judgments") or []}
                scores = {k: v for k, v in scores.items() if kinds.get(k) != "jury"}
            members.append(scores)
        for cand, scores, score in zip(cands, members, aggregate(members, cfg.method), strict=True):
            cand["judgments"] = list(cand.get("judgments") or []) + [{
                "judge": cfg.name, "kind": "jury", "aspect": cfg.output_aspect, "score": score, "verdict": None,
                "feedback": f"{cfg.method} of {len(scores)} judges",
                "members": [{"judge": k, "score": v} for k, v in sorted(scores.items())],
                "position": None, "opponent": None, "parse_ok": score is not None,
                "error": None if score is not None else "no member judge scored this candidate",
                "strength": None, "judge_model": None}]
        agreement = row_agreement(members)
        row["jury_agreement"] = agreement
        row["disagreement"] = None if agreement is None else agreement < cfg.disagreement_below
    return StageResult(out=pa.Table.from_pylist(rows, schema=PROMPT_ROW_WITH_CANDIDATES))


STAGE = StageSpec(
    name="jury",
    config=Config,
    reads=fixed("candidates", "candidates.judgments", "candidates.judgments.score"),
    writes=fixed("candidates.judgments", "jury_agreement", "disagreement"),
    doc="Aggregate several judges into one jury score per candidate (mean, median, majority, borda), with "
    "per-prompt agreement and a disagreement flag; inter-judge kappa and Krippendorff's alpha go in the manifest.",
    process=process,
)
