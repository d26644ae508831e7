"""Parsers never raise: for any judge output, every parser returns a parse or a recorded parse failure."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from curate.judges.parse import PARSERS
import pytest

#: the fast tier (./scripts/test --fast): no model, Ray or Prefect run here
pytestmark = pytest.mark.fast

MARKERS = ["[[", "]]", "[[A]]", "[[B]]", "[[C]]", "[RESULT]", "Rating:", "#### Output for Text 1", "Signal:",
           "Evidence:", "Helpfulness:", "[[-", "[[–2]]", "[[—1]]", "[[−3]]", "[[1e309]]", "[[99999999999999999999]]",
           "-", "–", "—", "−", "\n", " ", "10", "[10]", "(", ")", '"']
TEXT = st.lists(st.one_of(st.sampled_from(MARKERS), st.text(max_size=12)), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.none(), st.text(), TEXT))
def test_every_parser_returns_a_parse_or_a_failure_for_any_text(text):
    for name, parse in PARSERS.items():
        for low, high in ((1, 10), (-3, 3), (1, 5)):
            out = parse(text, low, high)
            assert (out.error is None) or isinstance(out.error, str), name
            if out.score is not None:
                assert low <= out.score <= high, (name, text, out)
            if out.strength is not None:
                assert low <= -out.strength <= high, (name, text, out)


def test_unicode_dashes_read_as_minus_in_strength_preferences():
    parse = PARSERS["strength_brackets"]
    for text, strength in (("Preference: [[–2]]", 2.0), ("[[—1]]", 1.0), ("[[−3]]", 3.0), ("[[+2]]", -2.0)):
        out = parse(text, -3, 3)
        assert out.error is None and out.strength == strength, (text, out)


@settings(max_examples=300, deadline=None)
@given(answer=TEXT, own=st.integers(1, 10))
def test_a_judge_that_only_copies_the_answer_never_gets_a_score_from_the_fallback(answer, own):
    import re

    parse = PARSERS["rating_brackets"]
    if not re.search(r"\[\[\s*\d+(\.\d+)?\s*\]\]", answer):  # no primary marker: only the fallback could fire
        assert parse(answer, 1, 10, quoted=(answer,)).score is None
        # ...while the judge's own last line, after the copy, is read
        assert parse(f"{answer}\nMy rating: [{own}]", 1, 10, quoted=(answer,)).score == own
