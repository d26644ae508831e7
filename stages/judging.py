"""What the judging stages share (`judge`, `debate`; `curate judge-eval` builds the same `JudgeItem`s): the
fields that say what a judge is shown of a row (the question, reference, rubric, context), a row as a
`JudgeItem`, and the `JudgeOutcome`s back onto the candidates. Not a stage: stages import it, never each
other."""

from __future__ import annotations

import json
from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator

from curate.judges.items import JudgeItem, JudgeOutcome
from curate.judges.templates import template_ref
from curate.schemas.records import PROMPT_ROW_WITH_CANDIDATES
from curate.schemas.validate import quarantine_table
from curate.stages.base import StageConfig, StageResult


class Rubric(StageConfig):
    """A Prometheus-style score rubric: the criteria and what each score means."""

    criteria: str
    scores: dict[int, str]

    def text(self) -> str:
        return f"[{self.criteria}]\n" + "\n".join(f"Score {k}: {v}" for k, v in sorted(self.scores.items()))


class JudgeInputs(StageConfig):
    """The fields of a row a judge is shown besides the answers (the judge and debate stages both take them)."""

    #: the rubric for templates with {rubric} (Prometheus): text, or {criteria, scores: {1: ..., 5: ...}}
    rubric: str | Rubric | None = None
    #: what the judge sees as the question: the final user turn, or the whole conversation (multi-turn chats,
    #: HH-RLHF transcripts)
    question: Literal["last_turn", "conversation"] = "last_turn"
    #: a key of the prompt's `meta` holding a reference answer, for templates with {reference}
    reference_key: str | None = None
    #: a key of the prompt's `meta` holding the user's context for templates with {context} (default: the
    #: prompt's `persona`)
    context_key: str | None = None

    def rubric_text(self) -> str | None:
        return self.rubric.text() if isinstance(self.rubric, Rubric) else self.rubric

    def reads(self, images: bool = False) -> set[str]:
        return {"prompt", "messages", "candidates", "candidates.image" if images else "candidates.response"} | (
            {"meta"} if self.reference_key or self.context_key else set())


class TemplateJudging(JudgeInputs):
    """What every stage that judges through a template shares (judge, debate): the template, checked when the YAML
    loads to be one this stage runs, retries for unparsable output, the output grammar, and what a verdict that
    flips under the position swap becomes."""

    #: the stage these templates belong to (`template_ref` checks the template's kind against it)
    template_stage: ClassVar[str] = "judge"
    #: a built-in template name (see `curate stages`) or a path to a template YAML
    template: str
    #: extra tries for an output that does not parse
    retries: int = Field(1, ge=0)
    #: force the template's output grammar where the engine supports constrained decoding
    grammar: bool = True
    #: pairwise templates: what a verdict that flips under the position swap becomes
    inconsistent: Literal["tie", "drop"] = "tie"

    @field_validator("template")
    @classmethod
    def _template_exists(cls, value: str, info: ValidationInfo) -> str:
        return template_ref(value, (info.context or {}).get("base_dir"), stage=cls.template_stage)


def _meta_value(row: dict, key: str | None) -> str | None:
    if key is None:
        return None
    value = json.loads(row.get("meta") or "{}").get(key)
    if isinstance(value, list):  # MT-Bench's reference is a list per turn: the first turn's
        value = value[0] if value else None
    return None if value is None else str(value)


def question(row: dict, cfg: JudgeInputs) -> str:
    if cfg.question == "last_turn" or len(row.get("messages") or []) < 2:
        return row["prompt"]
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in row["messages"])


def items(rows: list[dict], cfg: JudgeInputs, images: bool = False) -> list[JudgeItem]:
    """Each row as what its judge is shown: the question, the candidates' responses (or, for an image template,
    their images as data URLs), the extra fields."""
    from curate.schemas.images import data_url

    return [JudgeItem(
        question=question(row, cfg),
        answers=[data_url(c["image"]) if images else c["response"] for c in row["candidates"] or []],
        ids=[c["candidate_id"] for c in row["candidates"] or []], key=row["prompt_id"],
        context=_meta_value(row, cfg.context_key) if cfg.context_key else row.get("persona"),
        reference=_meta_value(row, cfg.reference_key), rubric=cfg.rubric_text(), documents=row.get("documents"),
    ) for row in rows]


def settle(rows: list[dict], outcomes: list[JudgeOutcome], stage: str) -> StageResult:
    # `stage` names the calls in the reason ("judge call failed"); the runner fills the stage column
    """Append each outcome's judgments to its row's candidates; a row with a failed call is quarantined whole."""
    good, bad, reasons = [], [], []
    for row, outcome in zip(rows, outcomes, strict=True):
        if outcome.errors:
            bad.append(row)
            reasons.append(f"{stage} call failed: " + "; ".join(outcome.errors))
            continue
        for cand, judgments in zip(row["candidates"] or [], outcome.judgments, strict=True):
            cand["judgments"] = list(cand.get("judgments") or []) + judgments
        good.append(row)
    return StageResult(out=pa.Table.from_pylist(good, schema=PROMPT_ROW_WITH_CANDIDATES),
                       quarantined=quarantine_table(bad, reasons))
