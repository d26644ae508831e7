"""Pairwise judging with position swap (MT-Bench pair-v2, Prometheus relative, HelpSteer2-Preference strength).

Every pair is judged twice, each response shown once as "A". Each order gives each response one judgment:
`verdict` win/loss/tie as the judge said it in that order, `position` (0 = shown first), `opponent`, and
`score` = points (1 win, 0.5 tie, 0 loss); strength templates (-3..3) also record `strength`, the preference for
this response, and score it as (strength + 3) / 6. Verdicts that flip with the order are position bias, not
preference: by default (`inconsistent="tie"`) both responses then score 0.5 (strength 0); with "drop" their
scores are null with the reason. When one order has no parsable verdict, the other order's verdict alone would
carry the position bias it cannot check, so it gets no score either (the reason says why).
"""

from __future__ import annotations

from typing import Literal

from curate.engines.base import Completion, Sampling
from curate.judges.calls import ask, judge_name, judgment
from curate.judges.templates import Template

POINTS = {"win": 1.0, "tie": 0.5, "loss": 0.0}
FIRST = {"A": "win", "B": "loss", "C": "tie"}  # the verdict for the response shown first
SECOND = {"A": "loss", "B": "win", "C": "tie"}

Item = tuple[str, str, str, str, str, dict]  # question, text x, text y, id x, id y, extra template fields


def _one(judge, engine, template, comp, parsed, shown_first: bool, opponent: str) -> dict:
    table = FIRST if shown_first else SECOND
    verdict = parsed.verdict and table[parsed.verdict]
    strength = None
    if parsed.strength is not None:
        strength = parsed.strength if shown_first else (-parsed.strength or 0.0)
    score = (strength + 3) / 6 if strength is not None else POINTS[verdict] if verdict else None
    return judgment(judge, engine, template, comp, parsed, score=score, verdict=verdict,
                    position=0 if shown_first else 1, opponent=opponent, strength=strength, kind="pairwise")


def settle(x: list[dict], y: list[dict], inconsistent: Literal["tie", "drop"]) -> None:
    """Apply the swap rule to x's two judgments (order 1, order 2) and y's, in place."""
    v1, v2 = x[0]["verdict"], x[1]["verdict"]
    if (v1 is None) != (v2 is None):
        for j in x + y:
            if j["score"] is not None:
                j["score"], j["error"] = None, "no parsable verdict in the swapped order"
    elif v1 is not None and v1 != v2:
        for j in x + y:
            if inconsistent == "tie":
                j["score"] = 0.5
                if j["strength"] is not None:
                    j["strength"] = 0.0
            else:
                j["score"], j["error"] = None, "verdict flips when the order is swapped"


def compare(engine, template: Template, items: list[Item], sampling: Sampling, retries: int, grammar: bool,
            name: str | None = None, inconsistent: Literal["tie", "drop"] = "tie"):
    """For each item, ([x's two judgments], [y's two judgments]), or the failed Completion."""
    judge = judge_name(engine, template, name)
    prompts = []
    for q, x, y, _, _, extra in items:
        prompts.append(template.render_pair(q, x, y, **extra))  # x shown first
        prompts.append(template.render_pair(q, y, x, **extra))  # swapped
    answers = ask(engine, template, prompts, sampling, retries, grammar,
                  quoted=[(x, y) for _, x, y, _, _, _ in items for _ in range(2)])
    out: list[tuple[list[dict], list[dict]] | Completion] = []
    for n, (_, _, _, id_x, id_y, _) in enumerate(items):
        (c1, p1), (c2, p2) = answers[2 * n], answers[2 * n + 1]
        if p1 is None or p2 is None:
            out.append(c1 if p1 is None else c2)
            continue
        x = [_one(judge, engine, template, c1, p1, True, id_y), _one(judge, engine, template, c2, p2, False, id_y)]
        y = [_one(judge, engine, template, c1, p1, False, id_x), _one(judge, engine, template, c2, p2, True, id_x)]
        settle(x, y, inconsistent)
        out.append((x, y))
    return out
