"""generate: k candidate responses per prompt from one or more models, each with its own sampling and seed.
Candidates a prompt already has (loaded answers of other models) are kept, and the new ones added.

Candidate i of a model uses seed `seed + i`, so candidates differ, a rerun reproduces them, and every request
has its own cache key. A prompt whose request fails (context overflow, engine error) is quarantined with the
error; its successful siblings are cached, so a rerun only repeats the failed call.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
from pydantic import Field

from engines.base import Request
from engines.config import SamplingConfig
from schemas.records import PROMPT_ROW_WITH_CANDIDATES
from schemas.validate import quarantine_table
from stages.base import StageConfig, StageContext, StageResult, StageSpec, fixed


class ModelSpec(SamplingConfig):
    engine: str = "default"
    k: int = Field(2, ge=1)
    #: a system prompt for generation (the prompt row's own `system` wins when present)
    system: str | None = None
    #: for rows with a persona: a system prompt with {persona}, so answers are written for that user
    persona_prompt: str | None = None


class Config(StageConfig):
    models: list[ModelSpec] = Field(default_factory=lambda: [ModelSpec()], min_length=1)


def chat(row: dict, system: str | None = None, persona_prompt: str | None = None) -> list[dict[str, str]]:
    sys_text = row.get("system") or system
    if persona_prompt and row.get("persona"):
        persona = persona_prompt.format(persona=row["persona"])
        sys_text = f"{sys_text}\n\n{persona}" if sys_text else persona
    head = [{"role": "system", "content": sys_text}] if sys_text else []
    return head + [{"role": m["role"], "content": m["content"]} for m in row["messages"]]


def candidate_id(prompt_id: str, model: str, params: dict, index: int) -> str:
    key = json.dumps([prompt_id, model, params, index], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    rows = table.to_pylist()
    plan = []  # (row index, model spec, engine, candidate index)
    requests_by_engine: dict[str, list[tuple[int, Request]]] = {}
    for r, row in enumerate(rows):
        for spec in cfg.models:
            for i in range(spec.k):
                req = Request(chat(row, spec.system, spec.persona_prompt), spec.sampling(seed=spec.seed + i))
                requests_by_engine.setdefault(spec.engine, []).append((len(plan), req))
                plan.append((r, spec, i))
    completions = [None] * len(plan)
    for name, items in requests_by_engine.items():
        results = ctx.engine(name).complete([req for _, req in items])
        for (slot, _), comp in zip(items, results, strict=True):
            completions[slot] = comp
    candidates: list[list[dict]] = [[] for _ in rows]
    errors: list[list[str]] = [[] for _ in rows]
    for (r, spec, i), comp in zip(plan, completions, strict=True):
        engine = ctx.engine(spec.engine)
        params = spec.model_dump(exclude={"engine", "k"}) | {"seed": spec.seed + i}
        if not comp.ok:
            errors[r].append(f"{engine.model_name} candidate {i}: {comp.error}")
            continue
        candidates[r].append(
            {
                "candidate_id": candidate_id(rows[r]["prompt_id"], engine.model_name, params, i),
                "model": engine.model_name,
                "response": comp.text,
                "finish_reason": comp.finish_reason,
                "n_tokens": comp.completion_tokens,
                "gen_params": json.dumps(params, sort_keys=True),
                "judgments": [],
            }
        )
    good, bad, reasons = [], [], []
    for row, cands, errs in zip(rows, candidates, errors, strict=True):
        if errs:
            bad.append(row)
            reasons.append("generation failed: " + "; ".join(errs))
        else:
            good.append(row | {"candidates": list(row.get("candidates") or []) + cands})
    return StageResult(
        out=pa.Table.from_pylist(good, schema=PROMPT_ROW_WITH_CANDIDATES),
        quarantined=quarantine_table("generate", bad, reasons),
    )


STAGE = StageSpec(
    name="generate",
    config=Config,
    reads=lambda cfg: {"prompt_id", "messages", "system"} | ({"persona"} if any(m.persona_prompt for m in cfg.models) else set()),
    writes=fixed("candidates", "candidates.response", "candidates.model", "candidates.candidate_id"),
    doc="k candidate responses per prompt from one or more models (own sampling params and seed each).",
    process=process,
    engines=lambda cfg: sorted({m.engine for m in cfg.models}),
)
