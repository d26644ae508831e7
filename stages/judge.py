"""judge: grade every candidate of every prompt as the template says: pointwise (a score per candidate, or one
per aspect; MT-Bench single-v1 by default, HelpSteer2, Prometheus absolute), listwise (all candidates in one
shuffled call; UltraFeedback's aspects) or pairwise (every pair of candidates, in both orders; MT-Bench pair-v2,
Prometheus relative, preference strength -3..3).

Judgments are appended to each candidate's `judgments` list, so several judge stages (other templates or
models) accumulate on the same candidates. The judge sees the final user turn as the question.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator

from engines.config import SamplingConfig
from judges.listwise import rate
from judges.pairwise import compare
from judges.pointwise import grade
from judges.templates import load_template, template_path, template_ref
from stages.base import StageConfig, StageContext, StageResult, StageSpec
from stages.judging import candidate_pairs, extras, finish, question, settle_pairs


class Rubric(StageConfig):
    """A Prometheus-style score rubric: the criteria and what each score means."""

    criteria: str
    scores: dict[int, str]

    def text(self) -> str:
        return f"[{self.criteria}]\n" + "\n".join(f"Score {k}: {v}" for k, v in sorted(self.scores.items()))


class Config(StageConfig):
    engine: str = "default"
    #: the judge's label on its judgments (default "<model>:<template>"); name two judges apart when they
    #: share a model and template but differ in sampling
    name: str | None = None
    #: a built-in template name (see `curate stages`) or a path to a template YAML
    template: str = "mt_bench_single_v1"
    sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_tokens=512)
    #: extra tries for an output that does not parse
    retries: int = Field(1, ge=0)
    #: force the template's output grammar where the engine supports constrained decoding
    grammar: bool = True
    #: pairwise templates: what a verdict that flips under the position swap becomes
    inconsistent: Literal["tie", "drop"] = "tie"
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

    @field_validator("template")
    @classmethod
    def _template_exists(cls, value: str, info: ValidationInfo) -> str:
        return template_ref(value, (info.context or {}).get("base_dir"), stage="judge")

    def rubric_text(self) -> str | None:
        return self.rubric.text() if isinstance(self.rubric, Rubric) else self.rubric

    def resolved_template(self):
        return load_template(template_path(self.template))


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    template = cfg.resolved_template()
    engine = ctx.engine(cfg.engine)
    rows = table.to_pylist()
    sampling = cfg.sampling.sampling()
    failed: dict[int, list[str]] = {}

    def add(r: int, c: int, judgments: list[dict]) -> None:
        cand = rows[r]["candidates"][c]
        cand["judgments"] = list(cand.get("judgments") or []) + judgments

    if template.kind == "pointwise":
        items, where = [], []
        for r, row in enumerate(rows):
            for c, cand in enumerate(row["candidates"] or []):
                items.append((question(row, cfg), cand["response"], extras(row, cfg)))
                where.append((r, c))
        for (r, c), res in zip(where, grade(engine, template, items, sampling, cfg.retries, cfg.grammar,
                                            name=cfg.name), strict=True):
            if isinstance(res, list):
                add(r, c, res)
            else:
                failed.setdefault(r, []).append(f"candidate {c}: {res.error}")
    elif template.kind == "listwise":  # all candidates in one call, shuffled
        items, where = [], []
        for r, row in enumerate(rows):
            cands = row["candidates"] or []
            if cands:
                items.append((question(row, cfg), [c["response"] for c in cands], row["prompt_id"], extras(row, cfg)))
                where.append(r)
        for r, res in zip(where, rate(engine, template, items, sampling, cfg.retries, cfg.grammar, name=cfg.name,
                                      seed=cfg.sampling.seed), strict=True):
            if isinstance(res, list):
                for c, j in enumerate(res):
                    add(r, c, [j])
            else:
                failed.setdefault(r, []).append(f"candidates: {res.error}")
    elif template.kind == "pairwise":  # every pair of candidates, in both orders
        items, where = candidate_pairs(rows, cfg)
        results = compare(engine, template, items, sampling, cfg.retries, cfg.grammar, name=cfg.name,
                          inconsistent=cfg.inconsistent)
        return settle_pairs(rows, where, results, "judge", failed)
    else:
        raise ValueError(f"template {template.name!r} is a {template.kind} template: use the {template.kind} stage")
    return finish(rows, failed, "judge")


STAGE = StageSpec(
    name="judge",
    config=Config,
    reads=lambda cfg: {"prompt", "messages", "candidates", "candidates.response"}
    | ({"meta"} if cfg.reference_key or cfg.context_key else set()),
    writes=lambda cfg: {"candidates.judgments", "candidates.judgments.score", "candidates.judgments.parse_ok"}
    | ({"candidates.judgments.strength"} if cfg.resolved_template().parser == "strength_brackets" else set()),
    doc="Grade candidates: pointwise (MT-Bench single-v1 by default, HelpSteer2 attributes, Prometheus "
    "absolute), listwise (UltraFeedback aspects, shuffled), or pairwise with position swap (MT-Bench pair-v2, "
    "Prometheus relative, strength -3..3); unparsable outputs are kept with parse_ok=false, never given a score.",
    process=process,
    engines=lambda cfg: [cfg.engine],
)
