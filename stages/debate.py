"""debate: judges argue over every pair of a prompt's candidates for `rounds` rounds after their opening
verdicts, then the majority of their last verdicts (or a moderator judge) decides; run in both orders, so a
verdict that flips with the order becomes a tie (or is dropped). Judgments are of kind "debate" with the whole
transcript (JSON) as feedback; pairs downstream select them with `judge_kind: debate`.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator, model_validator

from engines.config import SamplingConfig
from judges.debate import Debater, run
from judges.templates import load_template, template_path, template_ref
from stages.base import StageConfig, StageContext, StageResult, StageSpec, fixed
from stages.judging import candidate_pairs, settle_pairs


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
    question: Literal["last_turn", "conversation"] = "last_turn"
    rubric: str | None = None
    reference_key: str | None = None
    context_key: str | None = None

    @field_validator("template")
    @classmethod
    def _template_exists(cls, value: str, info: ValidationInfo) -> str:
        return template_ref(value, (info.context or {}).get("base_dir"), stage="debate")

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
    items, where = candidate_pairs(rows, cfg)
    results = run(debaters, template, items, cfg.rounds, cfg.retries, cfg.grammar, cfg.name, cfg.final, moderator,
                  cfg.inconsistent)
    return settle_pairs(rows, where, results, "debate")


STAGE = StageSpec(
    name="debate",
    config=Config,
    reads=lambda cfg: {"prompt", "messages", "candidates", "candidates.response"}
    | ({"meta"} if cfg.reference_key or cfg.context_key else set()),
    writes=fixed("candidates.judgments", "candidates.judgments.score"),
    doc="Judges debate each candidate pair for R rounds (both orders), then majority or a moderator decides; "
    "the transcript is kept per judgment.",
    process=process,
    engines=lambda cfg: sorted({d.engine for d in cfg.debaters} | ({cfg.moderator.engine} if cfg.moderator else set())),
)
