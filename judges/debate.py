"""Debate: several judges argue over a pair in rounds, then a verdict.

Round 0: each debater reads the pair and gives an argument and a verdict. Each later round: each debater sees
the others' latest arguments (the template's `rebuttal`) in its own conversation and revises. The final verdict
is the majority of the last round's parsed verdicts (no majority: a tie), or a moderator judge's verdict after
reading the whole transcript. Like every pairwise method here it runs in both orders, and a final verdict that
flips with the order is a tie (or dropped). The transcript is kept as the judgment's feedback (JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from curate.engines.base import Completion, Sampling
from curate.judges.calls import ask, judgment
from curate.judges.items import JudgeItem, JudgeOutcome, pair_items, settle_pairs
from curate.judges.jury import majority
from curate.judges.pairwise import FIRST, POINTS, SECOND, Item, settle
from curate.judges.parse import Parsed
from curate.judges.templates import Template


@dataclass(frozen=True)
class Debater:
    engine: object
    name: str
    sampling: Sampling


def _argue(debaters: list[Debater], template: Template, openings: list[list[dict]], rounds: int, retries: int,
           grammar: bool):
    """Run every debate (one per opening prompt) for all rounds; per debate, the transcript and whether an
    engine failed (the failed Completion)."""
    convs = [[list(m) for m in openings] for _ in debaters]  # debater -> debate -> messages
    transcript: list[list[dict]] = [[] for _ in openings]
    failed: list[Completion | None] = [None] * len(openings)
    for rnd in range(rounds + 1):
        latest: list[dict[str, str]] = [{} for _ in openings]
        for d, debater in enumerate(debaters):
            live = [i for i in range(len(openings)) if failed[i] is None]
            answers = ask(debater.engine, template, [convs[d][i] for i in live], debater.sampling, retries, grammar)
            for i, (comp, parsed) in zip(live, answers, strict=True):
                if parsed is None:
                    failed[i] = comp
                    continue
                convs[d][i].append({"role": "assistant", "content": comp.text})
                latest[i][debater.name] = comp.text
                transcript[i].append({"round": rnd, "judge": debater.name, "verdict": parsed.verdict,
                                      "parse_ok": parsed.ok, "text": comp.text})
        if rnd < rounds:  # each debater reads the others' latest arguments
            for d, debater in enumerate(debaters):
                for i in range(len(openings)):
                    others = "\n\n".join(f"[{name}]\n{text}" for name, text in latest[i].items() if name != debater.name)
                    convs[d][i].append({"role": "user", "content": template.rebuttal.format(arguments=others)})
    return transcript, failed


def run(debaters: list[Debater], template: Template, items: list[Item], rounds: int, retries: int, grammar: bool,
        name: str, final: Literal["majority", "moderator"] = "majority", moderator: Debater | None = None,
        inconsistent: Literal["tie", "drop"] = "tie"):
    """For each item, ([x's two judgments], [y's two judgments]) as in pairwise.compare, or a failed Completion."""
    openings, shown = [], []
    for q, x, y, _, _, extra in items:
        openings += [template.render_pair(q, x, y, **extra), template.render_pair(q, y, x, **extra)]
        shown += [(q, x, y, extra), (q, y, x, extra)]
    transcript, failed = _argue(debaters, template, openings, rounds, retries, grammar)
    finals: list[tuple[Completion, Parsed] | None] = [None] * len(openings)
    if final == "moderator":
        assert moderator is not None
        live = [i for i in range(len(openings)) if failed[i] is None]
        prompts = []
        for i in live:
            q, a, b, extra = shown[i]
            text = "\n\n".join(f"Round {t['round']}, {t['judge']}:\n{t['text']}" for t in transcript[i])
            body = template.moderator.format(question=q, answer_a=a, answer_b=b, transcript=text)
            prompts.append(([{"role": "system", "content": template.system}] if template.system else [])
                           + [{"role": "user", "content": body}])
        for i, (comp, parsed) in zip(live, ask(moderator.engine, template, prompts, moderator.sampling, retries,
                                               grammar, quoted=[shown[i][1:3] for i in live]), strict=True):
            if parsed is None:
                failed[i] = comp
            else:
                finals[i] = (comp, parsed)
                transcript[i].append({"round": rounds + 1, "judge": moderator.name, "verdict": parsed.verdict,
                                      "parse_ok": parsed.ok, "text": comp.text})
    out = []
    for n, (_, _, _, id_x, id_y, _) in enumerate(items):
        i1, i2 = 2 * n, 2 * n + 1
        if failed[i1] is not None or failed[i2] is not None:
            out.append(failed[i1] or failed[i2])
            continue
        verdicts = []
        for i in (i1, i2):
            if final == "moderator":
                verdicts.append(finals[i][1].verdict)
            else:
                last = [t["verdict"] for t in transcript[i] if t["round"] == rounds]
                verdicts.append(majority(last, tie="C"))
        record = [Completion(text=json.dumps(transcript[i], ensure_ascii=False)) for i in (i1, i2)]
        ok = [Parsed(None, None if v else "no parsable final verdict in the debate", verdict=v) for v in verdicts]

        def one(k: int, first: bool, opponent: str) -> dict:
            v = verdicts[k] and (FIRST if first else SECOND)[verdicts[k]]
            return judgment(name, debaters[0].engine, template, record[k], ok[k], score=POINTS[v] if v else None,
                            verdict=v, position=0 if first else 1, opponent=opponent, kind="debate")

        x = [one(0, True, id_y), one(1, False, id_y)]
        y = [one(0, False, id_x), one(1, True, id_x)]
        for j in x + y:
            j["judge_model"] = ",".join(sorted({d.engine.model_name for d in debaters}))
        settle(x, y, inconsistent)
        out.append((x, y))
    return out


def debate(debaters: list[Debater], template: Template, items: list[JudgeItem], rounds: int, retries: int,
           grammar: bool, name: str, final: Literal["majority", "moderator"] = "majority",
           moderator: Debater | None = None, inconsistent: Literal["tie", "drop"] = "tie") -> list[JudgeOutcome]:
    """Every pair of each item's answers debated (both orders), one outcome per item."""
    pairs, where = pair_items(items)
    return settle_pairs(items, where, run(debaters, template, pairs, rounds, retries, grammar, name, final,
                                          moderator, inconsistent))
