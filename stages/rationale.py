"""rationale: for each pair, a model writes why the chosen response is better (and, with `rejected: true`,
what is wrong with the rejected one), into `rationale` / `rejected_rationale`; exports keep them.

Rationale-augmented preference data (the chosen answer's reasons written next to the pair) makes DPO learn
faster and generalize better. A call the engine fails, or an empty rationale, quarantines the pair with the
reason: a pair never goes on with a made-up rationale.
"""

from __future__ import annotations

import string

import pyarrow as pa
from pydantic import Field, field_validator

from curate.engines.base import Request
from curate.engines.spec import SamplingConfig
from curate.schemas.records import PAIR_ROW
from curate.schemas.validate import quarantine_table
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec

SYSTEM = "You explain preference judgments between two AI assistant responses, briefly and concretely."
CHOSEN = ("[Question]\n{question}\n\n[Preferred response]\n{chosen}\n\n[Other response]\n{rejected}\n\n"
          "In two or three sentences, explain why the preferred response is better than the other one.")
REJECTED = ("[Question]\n{question}\n\n[Response]\n{rejected}\n\n[A better response]\n{chosen}\n\n"
            "In one or two sentences, say what is wrong with or missing from the first response.")
FIELDS = {"question", "chosen", "rejected"}


class Config(StageConfig):
    engine: str = "default"
    sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_tokens=200)
    system: str | None = SYSTEM
    #: the prompt; fields {question}, {chosen}, {rejected}
    prompt: str = CHOSEN
    #: also write `rejected_rationale` (one more call per pair)
    rejected: bool = False
    rejected_prompt: str = REJECTED
    #: a rationale shorter than this (after stripping) is a failure
    min_chars: int = Field(1, ge=1)

    @field_validator("prompt", "rejected_prompt")
    @classmethod
    def _fields(cls, value: str) -> str:
        used = {f for _, f, _, _ in string.Formatter().parse(value) if f}
        if used - FIELDS:
            raise ValueError(f"unknown fields {sorted(used - FIELDS)}; allowed: {', '.join(sorted(FIELDS))}")
        return value


def _request(cfg: Config, template: str, row: dict) -> Request:
    user = template.format(question=row["prompt"], chosen=row["chosen"], rejected=row["rejected"])
    messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [{"role": "user", "content": user}]
    return Request(messages, cfg.sampling.sampling())


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    engine = ctx.engine(cfg.engine)
    rows = table.to_pylist()
    jobs = [("rationale", cfg.prompt)] + ([("rejected_rationale", cfg.rejected_prompt)] if cfg.rejected else [])
    problems: dict[int, list[str]] = {}
    for column, template in jobs:
        for r, comp in enumerate(engine.complete([_request(cfg, template, row) for row in rows])):
            text = (comp.text or "").strip()
            if not comp.ok:
                problems.setdefault(r, []).append(f"{column}: {comp.error}")
            elif len(text) < cfg.min_chars:
                problems.setdefault(r, []).append(f"{column}: {len(text)} characters < min_chars {cfg.min_chars}")
            else:
                rows[r][column] = text
    good = [row for r, row in enumerate(rows) if r not in problems]
    bad = [rows[r] for r in sorted(problems)]
    return StageResult(
        out=pa.Table.from_pylist(good, schema=PAIR_ROW),
        quarantined=quarantine_table(bad, ["; ".join(problems[r]) for r in sorted(problems)]),
    )


STAGE = StageSpec(
    name="rationale",
    config=Config,
    reads=lambda cfg: {"prompt", "chosen", "rejected"},
    writes=lambda cfg: {"rationale"} | ({"rejected_rationale"} if cfg.rejected else set()),
    doc="A model writes why chosen beats rejected (and optionally what is wrong with rejected) for each pair.",
    process=process,
    engines=lambda cfg: [cfg.engine],
)
