"""filter: keep the pairs a trainer should see.

Thresholds on scores, margin and jury agreement; length bounds on both responses; a language check on prompt
and chosen response (py3langid, whose model ships in the package); refusal patterns on the chosen response;
and length-bias control, which drops the fewest pairs so that at most `max_longer_share` of pairs have a chosen
response longer than the rejected one (the pairs it drops are those where chosen is longest relative to
rejected, the likeliest to teach "longer is better"). Every dropped pair carries its reason.

Length-bias control holds per shard, so it holds for the whole dataset (a union of shards whose shares are
each at most the target has a share at most the target) without a second pass; on small shards rounding makes
it drop a little more than a global pass would.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.schemas.validate import quarantine_arrow
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec

REFUSAL_PATTERNS = [
    r"\bI(?:'m| am) (?:sorry|afraid),? (?:but )?I (?:can(?:'|no)t|won't|am unable|'m unable)",
    r"\bI can(?:'|no)t (?:help|assist|provide|comply|do that)",
    r"\bas an AI(?: language model)?,? I (?:can(?:'|no)t|don't|do not|am not able)",
    r"\bI(?:'m| am) (?:not able|unable) to (?:help|assist|provide|comply)",
]


class Config(StageConfig):
    min_chosen_score: float | None = None
    max_rejected_score: float | None = None
    min_margin: float | None = Field(None, ge=0)
    min_agreement: float | None = Field(None, ge=0, le=1)
    #: bounds in characters, applied to chosen and rejected
    min_length: int | None = Field(None, ge=0)
    max_length: int | None = Field(None, ge=1)
    #: ISO 639-1 codes; the prompt and the chosen response must be in one of them
    languages: list[str] | None = None
    #: drop pairs whose chosen response is a refusal (regex patterns, case-insensitive)
    drop_refusals: bool = False
    refusal_patterns: list[str] = Field(default_factory=lambda: list(REFUSAL_PATTERNS))
    #: length-bias control: the largest share of pairs whose chosen response is longer than the rejected one
    max_longer_share: float | None = Field(None, gt=0, lt=1)


@lru_cache(maxsize=1)
def _langid():
    import py3langid

    return py3langid


def language(text: str) -> str:
    return _langid().classify(text)[0]


def _reasons(table: pa.Table, cfg: Config, refusal: re.Pattern | None) -> list[str | None]:
    """Each pair's first failed check (in the order the config lists them), or None. The checks run on whole
    columns (Arrow compute); Python sees only the rows that fail one (to word the reason) and, for the
    language check, each text (the language model classifies one text at a time)."""
    import numpy as np

    n = table.num_rows
    reasons: list[str | None] = [None] * n
    open_ = np.ones(n, dtype=bool)

    def fail(mask, words) -> None:
        hit = np.asarray(mask, dtype=bool) & open_
        for i in np.flatnonzero(hit):
            reasons[i] = words(int(i))
        open_[hit] = False

    def below(column: str, bound: float):
        col = table[column]
        return pc.fill_null(pc.or_(pc.is_null(col), pc.less(col, bound)), True).to_numpy(zero_copy_only=False)

    def above(column: str, bound: float):
        col = table[column]
        return pc.fill_null(pc.or_(pc.is_null(col), pc.greater(col, bound)), True).to_numpy(zero_copy_only=False)

    def value(column: str, i: int):
        return table[column][i].as_py()

    if cfg.min_chosen_score is not None:
        fail(below("chosen_score", cfg.min_chosen_score),
             lambda i: f"chosen_score {value('chosen_score', i)} < {cfg.min_chosen_score:g}")
    if cfg.max_rejected_score is not None:
        fail(above("rejected_score", cfg.max_rejected_score),
             lambda i: f"rejected_score {value('rejected_score', i)} > {cfg.max_rejected_score:g}")
    if cfg.min_margin is not None:
        fail(below("margin", cfg.min_margin), lambda i: f"margin {value('margin', i)} < {cfg.min_margin:g}")
    if cfg.min_agreement is not None:
        fail(below("agreement", cfg.min_agreement),
             lambda i: f"agreement {value('agreement', i)} < {cfg.min_agreement:g}")
    if cfg.min_length is not None or cfg.max_length is not None:
        lengths = {side: pc.utf8_length(table[side]).to_numpy(zero_copy_only=False) for side in ("chosen", "rejected")}
        for side in ("chosen", "rejected"):
            ln = lengths[side]
            if cfg.min_length is not None:
                fail(ln < cfg.min_length, lambda i, s=side, ln=ln: f"{s} length {ln[i]} < min_length {cfg.min_length}")
            if cfg.max_length is not None:
                fail(ln > cfg.max_length, lambda i, s=side, ln=ln: f"{s} length {ln[i]} > max_length {cfg.max_length}")
    if cfg.languages:
        for side in ("prompt", "chosen"):
            texts = table[side].to_pylist()
            langs = {int(i): language(texts[i]) for i in np.flatnonzero(open_)}
            fail([langs.get(i, cfg.languages[0]) not in cfg.languages for i in range(n)],
                 lambda i, s=side: f"{s} language {langs[i]!r} not in {cfg.languages}")
    if refusal is not None:
        hits = pc.match_substring_regex(table["chosen"], refusal.pattern, ignore_case=True)
        fail(pc.fill_null(hits, False).to_numpy(zero_copy_only=False),
             lambda i: f"chosen is a refusal: {refusal.search(value('chosen', i)).group(0)!r}")
    return reasons


def length_bias_drops(chosen_len: list[int], rejected_len: list[int], keep: list[bool], share: float) -> list[int]:
    """Indices to drop so that among kept pairs at most `share` have chosen longer than rejected."""
    longer = [i for i in range(len(keep)) if keep[i] and chosen_len[i] > rejected_len[i]]
    others = sum(1 for i in range(len(keep)) if keep[i]) - len(longer)
    allowed = math.floor(share * others / (1 - share) + 1e-9)
    excess = len(longer) - allowed
    if excess <= 0:
        return []
    # drop the most length-driven first: the largest chosen/rejected length ratio
    longer.sort(key=lambda i: (-(chosen_len[i] / max(rejected_len[i], 1)), i))
    return longer[:excess]


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    refusal = re.compile("|".join(cfg.refusal_patterns), re.IGNORECASE) if cfg.drop_refusals else None
    reasons = _reasons(table, cfg, refusal)
    if cfg.max_longer_share is not None:
        c_len = pc.utf8_length(table["chosen"]).to_pylist()
        r_len = pc.utf8_length(table["rejected"]).to_pylist()
        for i in length_bias_drops(c_len, r_len, [r is None for r in reasons], cfg.max_longer_share):
            reasons[i] = (f"length-bias control: chosen longer than rejected ({c_len[i]} vs {r_len[i]} chars); "
                          f"target share {cfg.max_longer_share:g}")
    keep = pa.array([r is None for r in reasons], type=pa.bool_())
    return StageResult(out=table.filter(keep), dropped=quarantine_arrow(
        table.filter(pc.invert(keep)), [r for r in reasons if r is not None]))


STAGE = StageSpec(
    name="filter",
    config=Config,
    reads=lambda cfg: {"prompt", "chosen", "rejected", "chosen_score", "rejected_score", "margin", "agreement"},
    writes=lambda cfg: set(),
    doc="Filter pairs: score/margin/agreement thresholds, length bounds, language, refusals, and length-bias "
    "control (at most a target share of pairs with the longer response chosen).",
    process=process,
)
