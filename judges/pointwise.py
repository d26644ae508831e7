"""Pointwise grading: one judge call per (prompt, candidate), a score on the template's scale."""

from __future__ import annotations

from engines.base import Completion, Sampling
from judges.calls import ask
from judges.templates import Template


def grade(engine, template: Template, items: list[tuple[str, str]], sampling: Sampling, retries: int,
          grammar: bool, name: str | None = None) -> list[dict | Completion]:
    """Grade (question, answer) items; each result is a judgment dict, or the failed Completion when the
    engine itself failed (the caller quarantines that row)."""
    judge = name or f"{engine.model_name}:{template.name}"
    prompts = [template.render(q, a) for q, a in items]
    out: list[dict | Completion] = []
    for comp, parsed in ask(engine, template, prompts, sampling, retries, grammar):
        if parsed is None:
            out.append(comp)
            continue
        out.append({"judge": judge, "kind": "pointwise", "aspect": template.aspect, "score": parsed.score,
                    "verdict": None, "feedback": comp.text, "position": None, "opponent": None,
                    "parse_ok": parsed.ok, "error": parsed.error})
    return out
