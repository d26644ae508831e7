"""Listwise grading (UltraFeedback): all of a prompt's candidates in one call per aspect, shown in a shuffled
order so that no candidate always sits first; each gets a score, and `position` records where it was shown
(a position-bias probe reads it)."""

from __future__ import annotations

import hashlib
import random

from curate.engines.base import Completion, Sampling
from curate.judges.calls import ask, judge_name, judgment
from curate.judges.templates import Template

#: (question, answers, a stable key for the shuffle (the prompt id), extra template fields)
Item = tuple[str, list[str], str, dict]


def shown_order(n: int, key: str, seed: int) -> list[int]:
    """The order the answers are shown in: seeded by the prompt, so it does not depend on sharding."""
    order = list(range(n))
    random.Random(int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16)).shuffle(order)
    return order


def rate(engine, template: Template, items: list[Item], sampling: Sampling, retries: int, grammar: bool,
         name: str | None = None, seed: int = 0) -> list[list[dict] | Completion]:
    """Per item, one judgment per answer in the item's order, or the failed Completion."""
    judge = judge_name(engine, template, name)
    orders = [shown_order(len(answers), key, seed) for _, answers, key, _ in items]
    prompts = [template.render_list(q, [answers[i] for i in order], **extra)
               for (q, answers, _, extra), order in zip(items, orders, strict=True)]
    answers_ = ask(engine, template, prompts, sampling, retries, grammar, counts=[len(o) for o in orders],
                   quoted=[tuple(answers) for _, answers, _, _ in items])
    out: list[list[dict] | Completion] = []
    for order, (comp, parsed) in zip(orders, answers_, strict=True):
        if parsed is None:
            out.append(comp)
            continue
        judged: list[dict | None] = [None] * len(order)
        for shown, original in enumerate(order):
            score = parsed.scores[str(shown + 1)] if parsed.scores else None
            judged[original] = judgment(judge, engine, template, comp, parsed, score=score, position=shown)
        out.append(judged)  # type: ignore[arg-type]
    return out
