"""Pointwise grading: one judge call per (prompt, candidate): a score on the template's scale, or one score per
aspect for multi-aspect templates (HelpSteer2's five attributes from one output)."""

from __future__ import annotations

from curate.engines.base import Completion, Sampling
from curate.judges.calls import ask, judge_name, judgment
from curate.judges.templates import Template

#: (question, answer, extra template fields: reference, rubric, context)
Item = tuple[str, str, dict]


def grade(engine, template: Template, items: list[Item], sampling: Sampling, retries: int, grammar: bool,
          name: str | None = None) -> list[list[dict] | Completion]:
    """Per item, its judgments (one per aspect), or the failed Completion when the engine itself failed (the
    caller quarantines that row). An output that did not parse gives judgments with no score, one per aspect,
    so every aspect's failures are counted."""
    judge = judge_name(engine, template, name)
    prompts = [template.render(q, a, **extra) for q, a, extra in items]
    out: list[list[dict] | Completion] = []
    for comp, parsed in ask(engine, template, prompts, sampling, retries, grammar,
                            quoted=[(a,) for _, a, _ in items]):
        if parsed is None:
            out.append(comp)
        elif template.aspects:
            out.append([judgment(judge, engine, template, comp, parsed, aspect=a,
                                 score=parsed.scores[a] if parsed.scores else None) for a in template.aspects])
        else:
            out.append([judgment(judge, engine, template, comp, parsed, score=parsed.score)])
    return out
