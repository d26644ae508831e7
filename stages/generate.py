"""generate: k candidate responses per prompt from one or more models, each with its own sampling and seed.
Candidates a prompt already has (loaded answers of other models) are kept, and the new ones added.

Candidate i of a model uses seed `seed + i`, so candidates differ, a rerun reproduces them, and every request
has its own cache key. A prompt whose request fails (context overflow, engine error) is quarantined with the
error; its successful siblings are cached, so a rerun only repeats the failed call.
"""

from __future__ import annotations

import json
import re
from typing import Literal

import pyarrow as pa
from pydantic import Field

from curate.engines.base import Request
from curate.engines.spec import SamplingConfig
from curate.schemas.records import PROMPT_ROW_WITH_CANDIDATES
from curate.schemas.rows import candidate, chat, content_id
from curate.schemas.validate import quarantine_table
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec, fixed


VERBALIZED = ("For the user's query, write {k} different possible responses, each in its own <response> tag with a "
              "<text> and a <probability> (how likely that response is, between 0 and 1). Sample them from the whole "
              "range of likely responses, not only the most typical one.")


class ModelSpec(SamplingConfig):
    engine: str = "default"
    k: int = Field(2, ge=1)
    #: sample: k calls, seeds seed..seed+k-1. verbalized (Verbalized Sampling): one call asks for k responses with
    #: their probabilities (a grammar forces the format where the engine supports it); the stated
    #: probability is kept in each candidate's gen_params
    mode: Literal["sample", "verbalized"] = "sample"
    verbalized_prompt: str = VERBALIZED
    #: a system prompt for generation (the prompt row's own `system` wins when present)
    system: str | None = None
    #: for rows with a persona: a system prompt with {persona}, so answers are written for that user
    persona_prompt: str | None = None


class Config(StageConfig):
    models: list[ModelSpec] = Field(default_factory=lambda: [ModelSpec()], min_length=1)


_VERBAL = re.compile(r"<text>(.*?)</text>\s*<probability>\s*([0-9]*\.?[0-9]+)\s*</probability>", re.S)


def verbalized_grammar(k: int, max_chars: int) -> str:
    return (f'root ::= item{{{k}}}\n'
            f'item ::= "<response>\\n<text>" [^<]{{1,{max_chars}}} "</text>\\n<probability>" prob '
            f'"</probability>\\n</response>\\n"\n'
            'prob ::= "0." [0-9] [0-9]? | "1.0"\n')


def parse_verbalized(text: str | None) -> list[tuple[str, float]]:
    return [(t.strip(), float(p)) for t, p in _VERBAL.findall(text or "") if t.strip()]


def distinct_n(texts: list[str], n: int = 2) -> float | None:
    """Distinct n-grams over all n-grams of a prompt's candidates (1.0: no n-gram repeats across them)."""
    grams = [tuple(words[i:i + n]) for t in texts for words in [t.lower().split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def generated(prompt_id: str, model: str, params: dict, index: int, text: str, finish_reason: str | None,
              n_tokens: int | None) -> dict:
    """A generated candidate: named by its prompt, model, sampling and index (so a rerun finds the same one)."""
    return candidate(content_id(prompt_id, model, params, index, sort_keys=True), model, text,
                     json.dumps(params, sort_keys=True), finish_reason=finish_reason, n_tokens=n_tokens)


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    rows = table.to_pylist()
    plan = []  # (row index, model spec, engine, candidate index)
    requests_by_engine: dict[str, list[tuple[int, Request]]] = {}
    for r, row in enumerate(rows):
        for spec in cfg.models:
            if spec.mode == "verbalized":  # one call for all k
                messages = chat(row, spec.system, spec.persona_prompt, spec.verbalized_prompt.format(k=spec.k))
                # max_tokens is per response: the one call gets room for all k, each text up to ~3 chars/token
                grammar = verbalized_grammar(spec.k, max(40, spec.max_tokens * 3))
                req = Request(messages, spec.sampling(seed=spec.seed, max_tokens=(spec.max_tokens + 24) * spec.k),
                              grammar)
                requests_by_engine.setdefault(spec.engine, []).append((len(plan), req))
                plan.append((r, spec, -1))
                continue
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
        if i < 0:  # verbalized: k responses from one completion
            if not comp.ok:
                errors[r].append(f"{engine.model_name} verbalized: {comp.error}")
                continue
            found = parse_verbalized(comp.text)
            if not found:
                errors[r].append(f"{engine.model_name} verbalized: no <text>/<probability> responses in the output")
                continue
            base = spec.model_dump(exclude={"engine", "k", "verbalized_prompt"})
            for j, (text, prob) in enumerate(found[: spec.k]):
                params = base | {"stated_probability": prob, "index": j}
                candidates[r].append(generated(rows[r]["prompt_id"], engine.model_name, params, j, text,
                                               comp.finish_reason, None))
            continue
        params = spec.model_dump(exclude={"engine", "k", "verbalized_prompt", "mode"}) | {"seed": spec.seed + i}
        if not comp.ok:
            errors[r].append(f"{engine.model_name} candidate {i}: {comp.error}")
            continue
        candidates[r].append(generated(rows[r]["prompt_id"], engine.model_name, params, i, comp.text,
                                       comp.finish_reason, comp.completion_tokens))
    good, bad, reasons = [], [], []
    stats = {"prompts": 0.0, "distinct_2_sum": 0.0, "candidates": 0.0, "truncated": 0.0}
    for row, cands, errs in zip(rows, candidates, errors, strict=True):
        if not errs:
            stats["candidates"] += len(cands)
            stats["truncated"] += sum(c["finish_reason"] == "length" for c in cands)
        d2 = distinct_n([c["response"] for c in cands])
        if not errs and d2 is not None and len(cands) > 1:
            stats["prompts"] += 1
            stats["distinct_2_sum"] += d2
        if errs:
            bad.append(row)
            reasons.append("generation failed: " + "; ".join(errs))
        else:
            good.append(row | {"candidates": list(row.get("candidates") or []) + cands})
    return StageResult(
        out=pa.Table.from_pylist(good, schema=PROMPT_ROW_WITH_CANDIDATES),
        quarantined=quarantine_table(bad, reasons),
        stats=stats,
    )


def summarize(stats: dict[str, float]) -> dict[str, float]:
    """The mean per-prompt diversity of the candidates (distinct bigrams over all bigrams), and how many
    candidates hit the token limit (finish_reason "length": `pairs` does not make them chosen by default)."""
    out = {"distinct_2": stats["distinct_2_sum"] / stats["prompts"]} if stats.get("prompts") else {}
    if stats.get("candidates"):
        out |= {"truncated_candidates": int(stats.get("truncated", 0)),
                "truncated_share": stats.get("truncated", 0) / stats["candidates"]}
    return out


STAGE = StageSpec(
    name="generate",
    config=Config,
    reads=lambda cfg: {"prompt_id", "messages", "system"} | ({"persona"} if any(m.persona_prompt for m in cfg.models) else set()),
    writes=fixed("candidates", "candidates.response", "candidates.model", "candidates.candidate_id"),
    doc="k candidate responses per prompt from one or more models (own sampling params and seed each).",
    process=process,
    engines=lambda cfg: sorted({m.engine for m in cfg.models}),
    summarize=summarize,
)
