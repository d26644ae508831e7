"""Judging on typed items: a `JudgeItem` (one question, its answers, the template's extra fields) in, a
`JudgeOutcome` (each answer's judgments, or why the engine failed) out, with one dispatch by template kind.

The judge stage, the debate stage and `curate judge-eval` all go through here, so a template kind behaves the
same on a dataset as in the evaluation that decides whether to trust it: pointwise templates grade each answer,
listwise templates rate all of an item's answers in one shuffled call, pairwise templates (and debates) judge
every pair of answers in both orders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Literal

from curate.engines.base import Completion, Sampling
from curate.judges.templates import Template


@dataclass(frozen=True)
class JudgeItem:
    question: str
    answers: list[str]
    #: one id per answer (a candidate id; "A"/"B" in judge-eval): pairwise judgments name their opponent by it
    ids: list[str]
    #: seeds the listwise shuffle, so the order shown does not depend on sharding (the prompt id)
    key: str = ""
    context: str | None = None
    reference: str | None = None
    rubric: str | None = None
    documents: list[str] | None = None

    def extras(self) -> dict:
        return {"reference": self.reference, "rubric": self.rubric, "context": self.context,
                "documents": self.documents}


@dataclass
class JudgeOutcome:
    #: per answer, the judgments it got (empty for an answer of a failed item)
    judgments: list[list[dict]]
    #: the engine failures of this item ("answer 1: ..."); an item with any is quarantined by the stage
    errors: list[str] = field(default_factory=list)
    #: the failed Completions, as they came back (judge-eval keeps their text beside the parsed outputs)
    failed: list[Completion] = field(default_factory=list)

    def add(self, index: int, judgments: list[dict]) -> None:
        self.judgments[index].extend(judgments)

    def fail(self, what: str, comp: Completion) -> None:
        self.errors.append(f"{what}: {comp.error}")
        self.failed.append(comp)


@dataclass(frozen=True)
class Judge:
    """What judging needs besides the items: the engine and template, and how to ask."""

    engine: object
    template: Template
    sampling: Sampling
    retries: int = 1
    grammar: bool = True
    name: str | None = None
    inconsistent: Literal["tie", "drop"] = "tie"
    seed: int = 0


def _outcomes(items: list[JudgeItem]) -> list[JudgeOutcome]:
    return [JudgeOutcome([[] for _ in item.answers]) for item in items]


def pair_items(items: list[JudgeItem]) -> tuple[list[tuple], list[tuple[int, int, int]]]:
    """Every pair of each item's answers as a pairwise item, and where it came from (item, a, b)."""
    pairs, where = [], []
    for n, item in enumerate(items):
        for a, b in combinations(range(len(item.answers)), 2):
            pairs.append((item.question, item.answers[a], item.answers[b], item.ids[a], item.ids[b], item.extras()))
            where.append((n, a, b))
    return pairs, where


def settle_pairs(items: list[JudgeItem], where: list[tuple[int, int, int]], results: list) -> list[JudgeOutcome]:
    """Pairwise results ((x's judgments, y's judgments) or a failed Completion) back onto their items."""
    out = _outcomes(items)
    for (n, a, b), res in zip(where, results, strict=True):
        if isinstance(res, tuple):
            out[n].add(a, res[0])
            out[n].add(b, res[1])
        else:
            out[n].fail(f"answers {a} vs {b}", res)
    return out


def judge_items(judge: Judge, items: list[JudgeItem]) -> list[JudgeOutcome]:
    """One outcome per item, whatever the template's kind."""
    from curate.judges.listwise import rate
    from curate.judges.pairwise import compare
    from curate.judges.pointwise import grade

    t = judge.template
    ask = (judge.engine, t)
    how = (judge.sampling, judge.retries, judge.grammar)
    if t.kind == "pairwise":
        pairs, where = pair_items(items)
        return settle_pairs(items, where, compare(*ask, pairs, *how, name=judge.name, inconsistent=judge.inconsistent))
    out = _outcomes(items)
    if t.kind == "pointwise":
        where = [(n, a) for n, item in enumerate(items) for a in range(len(item.answers))]
        graded = grade(*ask, [(items[n].question, items[n].answers[a], items[n].extras()) for n, a in where], *how,
                       name=judge.name)
        for (n, a), res in zip(where, graded, strict=True):
            if isinstance(res, list):
                out[n].add(a, res)
            else:
                out[n].fail(f"answer {a}", res)
    elif t.kind == "listwise":
        live = [n for n, item in enumerate(items) if item.answers]
        rated = rate(*ask, [(items[n].question, items[n].answers, items[n].key, items[n].extras()) for n in live],
                     *how, name=judge.name, seed=judge.seed)
        for n, res in zip(live, rated, strict=True):
            if isinstance(res, list):
                for a, j in enumerate(res):
                    out[n].add(a, [j])
            else:
                out[n].fail("answers", res)
    else:
        raise ValueError(f"template {t.name!r} is a {t.kind} template: use the {t.kind} stage")
    return out
