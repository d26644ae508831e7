"""debate: judges argue over every pair of a prompt's candidates for `rounds` rounds after their opening
verdicts, then the majority of their last verdicts (or a moderator judge) decides; run in both orders, so a
verdict that flips with the order becomes a tie (or is dropped). Judgments are of kind "debate" with the whole
transcript (JSON) as feedback; pairs downstream select them with `judge_kind: debate`.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator, model_validator

from engines.config import SamplingConfig
from judges.debate import Debater, run
from judges.templates import TEMPLATE_DIR, load_template, template_path
from schemas.records import PROMPT_ROW_WITH_CANDIDATES
from schemas.validate import quarantine_table
from stages.base import StageConfig, StageContext, StageResult, StageSpec, fixed
from stages.judge import extras


class DebaterConfig(StageConfig):
    engine: str = "default"
    #: the debater's name in the transcript (default: "judge-<n>")
    name: str | None = None
    sampling: SamplingConfig = SamplingConfig(temperature=0.7, max_tokens=256)


class Config(StageConfig):
    #: the label on the debate's judgments
    name: str = "debate"
    debaters: list[DebaterConfig] = Field(min_length=2)
    rounds: int = Field(1, ge=0, le=5)
    final: Literal["majority", "moderator"] = "majority"
    moderator: DebaterConfig | None = None
    template: str = "debate_v1"
    retries: int = Field(1, ge=0)
    grammar: bool = True
    inconsistent: Literal["tie", "drop"] = "tie"
    # the template fields a judge stage offers (see stages/judge.py)
    rubric: str | None = None
    reference_key: str | None = None
    context_key: str | None = None

    @field_validator("template")
    @classmethod
    def _template_exists(cls, value: str, info: ValidationInfo) -> str:
        base = (info.context or {}).get("base_dir")
        path = template_path(value, Path(base) if base else None)
        if load_template(path).kind != "debate":
            raise ValueError(f"{value!r} is not a debate template (kind: debate, with rebuttal and moderator)")
        return value if path.parent == TEMPLATE_DIR.resolve() else str(path)

    @model_validator(mode="after")
    def _moderated(self):
        if self.final == "moderator" and self.moderator is None:
            raise ValueError("final: moderator needs a `moderator` (engine, sampling)")
        names = [d.name or f"judge-{i + 1}" for i, d in enumerate(self.debaters)]
        if len(set(names)) != len(names):
            raise ValueError(f"debater names must differ: {names}")
        return self

    def rubric_text(self) -> str | None:
        return self.rubric


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    template = load_template(template_path(cfg.template))
    debaters = [Debater(ctx.engine(d.engine), d.name or f"judge-{i + 1}", d.sampling.sampling())
                for i, d in enumerate(cfg.debaters)]
    moderator = (Debater(ctx.engine(cfg.moderator.engine), cfg.moderator.name or "moderator",
                         cfg.moderator.sampling.sampling()) if cfg.moderator else None)
    rows = table.to_pylist()
    items, where = [], []
    for r, row in enumerate(rows):
        cands = row["candidates"] or []
        for a, b in combinations(range(len(cands)), 2):
            items.append((row["prompt"], cands[a]["response"], cands[b]["response"], cands[a]["candidate_id"],
                          cands[b]["candidate_id"], extras(row, cfg)))
            where.append((r, a, b))
    results = run(debaters, template, items, cfg.rounds, cfg.retries, cfg.grammar, cfg.name, cfg.final, moderator,
                  cfg.inconsistent)
    failed: dict[int, list[str]] = {}
    for (r, a, b), res in zip(where, results, strict=True):
        if isinstance(res, tuple):
            for c, js in ((a, res[0]), (b, res[1])):
                cand = rows[r]["candidates"][c]
                cand["judgments"] = list(cand.get("judgments") or []) + js
        else:
            failed.setdefault(r, []).append(f"candidates {a} vs {b}: {res.error}")
    good = [row for r, row in enumerate(rows) if r not in failed]
    bad = [rows[r] for r in sorted(failed)]
    return StageResult(
        out=pa.Table.from_pylist(good, schema=PROMPT_ROW_WITH_CANDIDATES),
        quarantined=quarantine_table("debate", bad, ["debate call failed: " + "; ".join(failed[r]) for r in sorted(failed)]),
    )


STAGE = StageSpec(
    name="debate",
    config=Config,
    reads=fixed("prompt", "candidates", "candidates.response"),
    writes=fixed("candidates.judgments", "candidates.judgments.score"),
    doc="Judges debate each candidate pair for R rounds (both orders), then majority or a moderator decides; "
    "the transcript is kept per judgment.",
    process=process,
    engines=lambda cfg: sorted({d.engine for d in cfg.debaters} | ({cfg.moderator.engine} if cfg.moderator else set())),
)
