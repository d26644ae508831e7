"""Pairwise judging with position swap (MT-Bench pair-v2 style).

Every pair is judged twice, each response shown once as "Assistant A". Each order gives each response one
judgment: `verdict` win/loss/tie as the judge said it in that order, `position` (0 = shown first), `opponent`,
and `score` = points (1 win, 0.5 tie, 0 loss). Verdicts that flip with the order are position bias, not
preference: by default (`inconsistent="tie"`) both responses then score 0.5; with "drop" their scores are
null with the reason. When one order has no parsable verdict, the other order's verdict alone would carry the
position bias it cannot check, so it gets no score either (the reason says why).
"""

from __future__ import annotations

from typing import Literal

from engines.base import Completion, Sampling
from judges.calls import ask
from judges.templates import Template

POINTS = {"win": 1.0, "tie": 0.5, "loss": 0.0}
FIRST = {"A": "win", "B": "loss", "C": "tie"}  # the verdict for the response shown first
SECOND = {"A": "loss", "B": "win", "C": "tie"}

Item = tuple[str, str, str, str, str]  # question, text x, text y, id x, id y


def _judgment(judge: str, template: Template, comp: Completion, parsed, verdict: str | None, position: int,
              opponent: str) -> dict:
    return {"judge": judge, "kind": "pairwise", "aspect": template.aspect,
            "score": POINTS[verdict] if verdict else None, "verdict": verdict, "feedback": comp.text,
            "position": position, "opponent": opponent, "parse_ok": parsed.ok, "error": parsed.error}


def compare(engine, template: Template, items: list[Item], sampling: Sampling, retries: int, grammar: bool,
            name: str | None = None, inconsistent: Literal["tie", "drop"] = "tie"):
    """For each item, ([x's two judgments], [y's two judgments]), or the failed Completion."""
    judge = name or f"{engine.model_name}:{template.name}"
    prompts = []
    for q, x, y, _, _ in items:
        prompts.append(template.render_pair(q, x, y))  # x shown first
        prompts.append(template.render_pair(q, y, x))  # swapped
    answers = ask(engine, template, prompts, sampling, retries, grammar)
    out = []
    for n, (_, _, _, id_x, id_y) in enumerate(items):
        (c1, p1), (c2, p2) = answers[2 * n], answers[2 * n + 1]
        if p1 is None or p2 is None:
            out.append(c1 if p1 is None else c2)
            continue
        v1, v2 = p1.verdict, p2.verdict
        x = [_judgment(judge, template, c1, p1, v1 and FIRST[v1], 0, id_y),
             _judgment(judge, template, c2, p2, v2 and SECOND[v2], 1, id_y)]
        y = [_judgment(judge, template, c1, p1, v1 and SECOND[v1], 1, id_x),
             _judgment(judge, template, c2, p2, v2 and FIRST[v2], 0, id_x)]
        if (v1 is None) != (v2 is None):
            for j in x + y:
                if j["score"] is not None:
                    j["score"], j["error"] = None, "no parsable verdict in the swapped order"
        elif v1 is not None and x[0]["verdict"] != x[1]["verdict"]:
            for j in x + y:
                if inconsistent == "tie":
                    j["score"] = 0.5
                else:
                    j["score"], j["error"] = None, "verdict flips when the order is swapped"
        out.append((x, y))
    return out
