"""Judge calls with retries: an output that does not parse is asked again with a format reminder (a new seed,
and a nonzero temperature when the first try was greedy, since greedy decoding would repeat itself); after the
retries it is recorded as a parse failure with the raw text, never given a default."""

from __future__ import annotations

from dataclasses import replace

from curate.engines.base import Completion, Request, Sampling
from curate.judges.parse import Parsed
from curate.judges.templates import Template

RETRY_TEMPERATURE = 0.7


def request(template: Template, messages: list[dict[str, str]], sampling: Sampling, attempt: int,
            grammar: bool, n: int | None = None) -> Request:
    if attempt:
        messages = template.with_reminder(messages)
        sampling = replace(sampling, seed=sampling.seed + attempt,
                           temperature=sampling.temperature or RETRY_TEMPERATURE)
    return Request(messages, sampling, template.grammar_for(n) if grammar else None)


def ask(engine, template: Template, prompts: list[list[dict[str, str]]], sampling: Sampling, retries: int,
        grammar: bool, counts: list[int] | None = None,
        quoted: list[tuple[str, ...]] | None = None) -> list[tuple[Completion, Parsed | None]]:
    """(completion, parsed) per prompt; parsed is None when the engine itself failed. `counts`: for listwise
    templates, how many texts each prompt shows; `quoted`: the responses each prompt shows (a line the judge
    copied from one is not read as its verdict)."""
    results: list[tuple[Completion, Parsed | None] | None] = [None] * len(prompts)
    pending = list(range(len(prompts)))
    for attempt in range(retries + 1):
        if not pending:
            break
        comps = engine.complete([request(template, prompts[i], sampling, attempt, grammar,
                                         counts[i] if counts else None) for i in pending])
        retry = []
        for i, comp in zip(pending, comps, strict=True):
            if not comp.ok:
                results[i] = (comp, None)
                continue
            parsed = template.parse(comp.text, counts[i] if counts else None, quoted[i] if quoted else ())
            results[i] = (comp, parsed)
            if not parsed.ok:
                retry.append(i)
        pending = retry
    return results  # type: ignore[return-value]


def judge_name(engine, template: Template, name: str | None) -> str:
    return name or f"{engine.model_name}:{template.name}"


def judgment(judge: str, engine, template: Template, comp: Completion, parsed: Parsed, *, score: float | None,
             aspect: str | None = None, verdict: str | None = None, position: int | None = None,
             opponent: str | None = None, strength: float | None = None, error: str | None = None,
             kind: str | None = None) -> dict:
    """One judgment record (schemas.records.JUDGMENT). The judge's raw text is kept as feedback, parsed or not."""
    return {"judge": judge, "kind": kind or template.kind, "aspect": aspect or template.aspect, "score": score,
            "verdict": verdict, "feedback": comp.text, "position": position, "opponent": opponent,
            "parse_ok": parsed.ok, "error": error if error is not None else parsed.error, "strength": strength,
            "judge_model": engine.model_name}
