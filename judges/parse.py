"""Parsers of judge outputs. They read only the judge's own text, never the judged response, so a candidate
that writes "Rating: [[10]]" into its answer cannot set its own score (the judge prompt carries the answer, the
judge's output is parsed). Within the judge's output the last rating wins: a judge that quotes the answer's
fake rating and then gives its own is read by its own verdict.

A judge may also copy a candidate's text into its output without rating it (free-text judging, a small model).
The fallback patterns (FastChat's single-bracket "[7]") are weaker evidence than the format the judge was asked
for, so they are read only on the judge's final non-empty line, and only when that line is not a copy of a
judged response (`quoted`: the responses the judge was shown): a candidate answering "[10]" cannot become the
score by being repeated. Every parser returns a `Parsed` for any string; none raises (fuzzed in the tests).
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
    #: pairwise strength judges: how much better the response shown first (A) is, -3..3
    strength: float | None = None
    #: multi-score outputs: {aspect: score} (HelpSteer2 attributes) or {"1": s, "2": s, ...} per shown text
    scores: dict[str, float] | None = None
    #: feedback judges: the words of the user's message that show the reaction (verified to be in it by the
    #: caller, which has the message)
    evidence: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _final_line(text: str, quoted: tuple[str, ...]) -> str:
    """The judge's last non-empty line, or "" when it is copied from a judged response."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    return "" if any(last in q for q in quoted if q) else last


def rating_brackets(text: str | None, low: float, high: float, quoted: tuple[str, ...] = ()) -> Parsed:
    if not text:
        return Parsed(None, "empty judge output")
    found = _RATING.findall(text) or _RATING_BACKUP.findall(_final_line(text, quoted))
    if not found:
        return Parsed(None, "no [[rating]] in judge output (a bare [rating] counts only on the judge's own "
                            "final line)")
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


_RESULT = re.compile(r"\[RESULT\]\s*\(?\s*(\d+(?:\.\d+)?)")
_RESULT_AB = re.compile(r"\[RESULT\]\s*\(?\s*\"?([AB])\b")
# a set of signs (hyphen first, so it is not a range): ASCII +/-, the minus sign, the en and em dashes
_STRENGTH = re.compile(r"\[\[\s*([-+\u2212\u2013\u2014]?\s*\d)\s*\]\]")
_DASHES = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-", " ": None})
_TEXT_BLOCK = re.compile(r"Output for Text\s*(\d+)\s*\**\s*\n+\s*\**Rating\**:?\**\s*(N/A|\d+(?:\.\d+)?)", re.I)
_RATING_LINE = re.compile(r"^\s*\**Rating\**:?\**\s*(\d+(?:\.\d+)?)", re.I | re.M)


def result_tag(text: str | None, low: float, high: float) -> Parsed:
    """Prometheus absolute grading: "Feedback: ... [RESULT] 4"; the last tag wins."""
    if not text:
        return Parsed(None, "empty judge output")
    found = _RESULT.findall(text)
    if not found:
        return Parsed(None, "no [RESULT] n in judge output")
    score = float(found[-1])
    if not low <= score <= high:
        return Parsed(None, f"[RESULT] {found[-1]} outside the scale {low:g}-{high:g}")
    return Parsed(score, None)


def result_ab(text: str | None, *_: float) -> Parsed:
    """Prometheus relative grading: "Feedback: ... [RESULT] A" (no ties in this format)."""
    if not text:
        return Parsed(None, "empty judge output")
    found = _RESULT_AB.findall(text)
    if not found:
        return Parsed(None, "no [RESULT] A/B in judge output")
    return Parsed(None, None, verdict=found[-1])


def strength_brackets(text: str | None, low: float, high: float) -> Parsed:
    """HelpSteer2-Preference style: "[[-2]]" on -3..3, negative when Response 1 (shown first, A) is better.
    Stored the other way round (`strength` = how much better A is), with the verdict it implies."""
    if not text:
        return Parsed(None, "empty judge output")
    found = _STRENGTH.findall(text)
    if not found:
        return Parsed(None, "no [[preference]] in judge output")
    value = float(found[-1].translate(_DASHES))
    if not low <= value <= high:
        return Parsed(None, f"preference {value:g} outside the scale {low:g}-{high:g}")
    strength = -value or 0.0  # no -0.0
    verdict = "A" if strength > 0 else "B" if strength < 0 else "C"
    return Parsed(None, None, verdict=verdict, strength=strength)


def aspect_lines(text: str | None, low: float, high: float, aspects: tuple[str, ...] = ()) -> Parsed:
    """One "Aspect: n" line per aspect (HelpSteer2's attributes); the last line per aspect wins, and every
    aspect must be there (a partial answer is a parse failure: no aspect gets a made-up score)."""
    if not text:
        return Parsed(None, "empty judge output")
    if not aspects:
        return Parsed(None, "no aspects to read: the template names none")
    scores: dict[str, float] = {}
    for aspect in aspects:
        label = re.escape(aspect).replace("_", "[ _]")
        found = re.findall(rf"^\W*{label}\W*\s*:?\s*\**\s*(\d+(?:\.\d+)?)", text, re.I | re.M)
        if found:
            scores[aspect] = float(found[-1])
    missing = [a for a in aspects if a not in scores]
    if missing:
        return Parsed(None, f"no score for {', '.join(missing)} in judge output")
    off = [f"{a}={v:g}" for a, v in scores.items() if not low <= v <= high]
    if off:
        return Parsed(None, f"scores outside the scale {low:g}-{high:g}: {', '.join(off)}")
    return Parsed(sum(scores.values()) / len(scores), None, scores=scores)


def text_ratings(text: str | None, low: float, high: float, n: int = 1) -> Parsed:
    """UltraFeedback's format, one block per shown text: "#### Output for Text 2\nRating: 4\nRationale: ...".
    Every text 1..n needs a rating; "N/A" (UltraFeedback's answer when an aspect does not apply) is a failure
    for that output, not a score."""
    if not text:
        return Parsed(None, "empty judge output")
    blocks = {int(i): v for i, v in _TEXT_BLOCK.findall(text)}
    if not blocks:  # no headers: bare "Rating: n" lines, in order, when there are exactly n of them
        lines = _RATING_LINE.findall(text)
        if len(lines) == n:
            blocks = {i + 1: v for i, v in enumerate(lines)}
    missing = [i for i in range(1, n + 1) if i not in blocks or blocks[i].upper() == "N/A"]
    if missing:
        return Parsed(None, f"no rating for text {', '.join(map(str, missing))} of {n} in judge output")
    scores = {str(i): float(blocks[i]) for i in range(1, n + 1)}
    off = [f"text {i}={v:g}" for i, v in scores.items() if not low <= v <= high]
    if off:
        return Parsed(None, f"ratings outside the scale {low:g}-{high:g}: {', '.join(off)}")
    return Parsed(None, None, scores=scores)


_SIGNAL = re.compile(r"\[\[\s*(dissatisfied|satisfied|neutral)\s*\]\]", re.I)
_EVIDENCE = re.compile(r'Evidence:\s*"([^"\n]*)"', re.I)


def signal_brackets(text: str | None, *_: float) -> Parsed:
    """A user's reaction: 'Evidence: "<quote>"' and 'Signal: [[dissatisfied|satisfied|neutral]]'; the last
    label wins; the quote is optional."""
    if not text:
        return Parsed(None, "empty judge output")
    found = _SIGNAL.findall(text)
    if not found:
        return Parsed(None, "no [[dissatisfied]]/[[satisfied]]/[[neutral]] signal in judge output")
    quotes = _EVIDENCE.findall(text)
    return Parsed(None, None, verdict=found[-1].lower(), evidence=quotes[-1].strip() if quotes else None)


PARSERS = {"rating_brackets": rating_brackets, "verdict_brackets": verdict_brackets, "result_tag": result_tag,
           "result_ab": result_ab, "strength_brackets": strength_brackets, "aspect_lines": aspect_lines,
           "text_ratings": text_ratings, "signal_brackets": signal_brackets}
