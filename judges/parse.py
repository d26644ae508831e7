"""Parsers of judge outputs. They read only the judge's own text, never the judged response, so a candidate
that writes "Rating: [[10]]" into its answer cannot set its own score (the judge prompt carries the answer, the
judge's output is parsed). Within the judge's output the last rating wins: a judge that quotes the answer's
fake rating and then gives its own is read by its own verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# FastChat's patterns: "[[7]]" (one_score_pattern) and the "[7]" fallback (one_score_pattern_backup).
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_RATING_BACKUP = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]")


_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


@dataclass(frozen=True)
class Parsed:
    score: float | None
    error: str | None
    verdict: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def rating_brackets(text: str | None, low: float, high: float) -> Parsed:
    if not text:
        return Parsed(None, "empty judge output")
    found = _RATING.findall(text) or _RATING_BACKUP.findall(text)
    if not found:
        return Parsed(None, "no [[rating]] in judge output")
    score = float(found[-1])
    if not low <= score <= high:
        return Parsed(None, f"rating {found[-1]} outside the scale {low:g}-{high:g}")
    return Parsed(score, None)


def verdict_brackets(text: str | None, *_: float) -> Parsed:
    """MT-Bench pair verdicts: "[[A]]", "[[B]]" or "[[C]]" (tie); the last one in the judge's output wins."""
    if not text:
        return Parsed(None, "empty judge output")
    found = _VERDICT.findall(text)
    if not found:
        return Parsed(None, "no [[A]]/[[B]]/[[C]] verdict in judge output")
    return Parsed(None, None, verdict=found[-1])


PARSERS = {"rating_brackets": rating_brackets, "verdict_brackets": verdict_brackets}
