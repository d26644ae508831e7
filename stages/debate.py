"""debate: judges argue over every pair of a prompt's candidates for `rounds` rounds after their opening
verdicts, then the majority of their last verdicts (or a moderator judge) decides; run in both orders, so a
verdict that flips with the order becomes a tie (or is dropped). Judgments are of kind "debate" with the whole
transcript (JSON) as feedback; pairs downstream select them with `judge_kind: debate`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from curate.engines.spec import SamplingConfig
from curate.judges.debate import Debater, debate
from curate.judges.items import JudgeItem, JudgeOutcome
from curate.judges.templates import load_template, template_path
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec, fixed
from curate.stages.judging import TemplateJudging, items, settle


class DebaterConfig(StageConfig):
    engine: str = "default"
    #: the debater's name in the transcript (default: "judge-<n>")
    name: str | None = None
    sampling: SamplingConfig = SamplingConfig(temperature=0.7, max_tokens=256)

    def debater(self, engine, default_name: str) -> Debater:
        return Debater(engine, self.name or default_name, self.sampling.sampling())


class Config(TemplateJudging):
    template_stage: ClassVar[str] = "debate"
    #: the label on the debate's judgments
    name: str = "debate"
    debaters: list[DebaterConfig] = Field(min_length=2)
    rounds: int = Field(1, ge=0, le=5)
    final: Literal["majority", "moderator"] = "majority"
    moderator: DebaterConfig | None = None
    template: str = "debate_v1"

    @model_validator(mode="after")
    def _moderated(self):
        if self.final == "moderator" and self.moderator is None:
            raise ValueError("final: moderator needs a `moderator` (engine, sampling)")
        names = [d.name or f"judge-{i + 1}" for i, d in enumerate(self.debaters)]
        if len(set(names)) != len(names):
            raise ValueError(f"debater names must differ: {names}")
        return self

    def engine_names(self) -> list[str]:
        return sorted({d.engine for d in self.debaters} | ({self.moderator.engine} if self.moderator else set()))

    def run(self, engine: Callable[[str], object], judged: list[JudgeItem]) -> list[JudgeOutcome]:
        """Debate the items with the engines `engine(name)` returns."""
        debaters = [d.debater(engine(d.engine), f"judge-{i + 1}") for i, d in enumerate(self.debaters)]
        moderator = self.moderator.debater(engine(self.moderator.engine), "moderator") if self.moderator else None
        return debate(debaters, load_template(template_path(self.template)), judged, self.rounds, self.retries,
                      self.grammar, self.name, self.final, moderator, self.inconsistent)


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    rows = table.to_pylist()
    return settle(rows, cfg.run(ctx.engine, items(rows, cfg)), "debate")


STAGE = StageSpec(
    name="debate",
    config=Config,
    reads=lambda cfg: cfg.reads(),
    writes=fixed("candidates.judgments", "candidates.judgments.score"),
    doc="Judges debate each candidate pair for R rounds (both orders), then majority or a moderator decides; "
    "the transcript is kept per judgment.",
    process=process,
    engines=lambda cfg: cfg.engine_names(),
)
