"""Pointwise grading: one judge call per (prompt, candidate), a score on the template's scale.

An output that does not parse is retried (a new seed, and a nonzero temperature when the first try was greedy,
since greedy decoding would repeat the same text); after the retries it is recorded with `parse_ok=false`, the
raw text and the parse error, never given a default score.
"""

from __future__ import annotations

from dataclasses import replace

from engines.base import Completion, Request, Sampling
from judges.parse import PARSERS
from judges.templates import Template

RETRY_TEMPERATURE = 0.7


def request(template: Template, question: str, answer: str, sampling: Sampling, attempt: int, grammar: bool):
    if attempt:
        sampling = replace(
            sampling, seed=sampling.seed + attempt, temperature=sampling.temperature or RETRY_TEMPERATURE
        )
    return Request(template.render(question, answer), sampling, template.grammar if grammar else None)


def judgment(template: Template, judge: str, comp: Completion) -> dict:
    parsed = PARSERS[template.parser](comp.text, *template.scale)
    return {
        "judge": judge,
        "kind": "pointwise",
        "aspect": template.aspect,
        "score": parsed.score,
        "verdict": None,
        "feedback": comp.text,
        "position": None,
        "parse_ok": parsed.ok,
        "error": parsed.error,
    }


def grade(engine, template: Template, items: list[tuple[str, str]], sampling: Sampling, retries: int,
          grammar: bool, name: str | None = None) -> list[dict | Completion]:
    """Grade (question, answer) items; each result is a judgment dict, or the failed Completion when the
    engine itself failed (the caller quarantines that row)."""
    judge = name or f"{engine.model_name}:{template.name}"
    results: list[dict | Completion | None] = [None] * len(items)
    pending = list(range(len(items)))
    for attempt in range(retries + 1):
        if not pending:
            break
        comps = engine.complete([request(template, *items[i], sampling, attempt, grammar) for i in pending])
        retry = []
        for i, comp in zip(pending, comps, strict=True):
            if not comp.ok:
                results[i] = comp
                continue
            results[i] = judgment(template, judge, comp)
            if not results[i]["parse_ok"]:
                retry.append(i)
        pending = retry
    return results  # type: ignore[return-value]
