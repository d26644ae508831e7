"""dedup: drop exact and near-duplicate rows, keeping the first seen; each dropped row names the row it
duplicates (`duplicate_of` in its reason).

  exact    normalized text (lowercase, punctuation and extra spaces dropped), hashed
  minhash  MinHash-LSH over word n-grams at a Jaccard `threshold` (vectorized; see stages/textsig.py)

Works on prompt rows (dedup prompts before paying for generation) or pair rows (`field: chosen`). The stage is
stateful: the runner feeds it every shard in order through one worker, and the index of kept rows (one hash,
or `bands` bucket keys, per kept row) is all it holds: memory grows with the rows kept, not with the rows seen.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.schemas.validate import quarantine_table
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec
from curate.stages.textsig import LSHIndex, MinHasher, word_hashes


class Config(StageConfig):
    method: Literal["exact", "minhash"] = "minhash"
    #: the text column compared (prompt, chosen, rejected, ...)
    field: str = "prompt"
    #: the column that identifies a row in the reasons
    id_field: str = "prompt_id"
    threshold: float = Field(0.8, gt=0, le=1)
    num_perm: int = Field(128, ge=16, le=1024)
    ngram: int = Field(3, ge=1)


class ExactIndex:
    def __init__(self):
        self.seen: dict[int, str] = {}

    def check(self, texts: list[str], keys: list[str]) -> list[str | None]:
        out = []
        for h, key in zip(exact_hashes(texts).tolist(), keys):
            if h in self.seen:
                out.append(self.seen[h])
            else:
                self.seen[h] = key
                out.append(None)
        return out


def exact_hashes(texts: list[str]) -> np.ndarray:
    """One uint64 per text: an order-sensitive fold of its normalized words' hashes and its word count, for the
    whole batch at once (numpy segment reductions, no per-row Python)."""
    flat, offsets = word_hashes(texts)
    counts = np.diff(offsets)
    out = np.zeros(len(texts), dtype=np.uint64)
    if len(flat):
        row = np.repeat(np.arange(len(texts)), counts)
        pos = (np.arange(len(flat)) - offsets[row]).astype(np.uint64)
        with np.errstate(over="ignore"):
            vals = flat * (pos * np.uint64(2) + np.uint64(0x9E3779B97F4A7C15))
            nonempty = counts > 0
            out[nonempty] = np.bitwise_xor.reduceat(vals, offsets[:-1][nonempty])
    with np.errstate(over="ignore"):
        return out ^ (counts.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))


class MinHashIndex:
    def __init__(self, cfg: Config):
        self.hasher = MinHasher(cfg.num_perm)
        self.lsh = LSHIndex(cfg.threshold, cfg.num_perm)
        self.ngram = cfg.ngram

    def check(self, texts: list[str], keys: list[str]) -> list[str | None]:
        return self.lsh.check_batch(self.hasher.signatures(texts, self.ngram), keys)


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    index = ctx.state.get("dedup")
    if index is None:
        index = ctx.state["dedup"] = ExactIndex() if cfg.method == "exact" else MinHashIndex(cfg)
    texts = table[cfg.field].to_pylist()
    keys = [str(k) for k in table[cfg.id_field].to_pylist()]
    dup_of = index.check(texts, keys)
    keep = pa.array([d is None for d in dup_of], type=pa.bool_())
    dropped_rows = table.filter(pa.compute.invert(keep)).to_pylist()
    reasons = [f"{cfg.method} duplicate of {cfg.id_field} {d} ({cfg.field})" for d in dup_of if d is not None]
    return StageResult(out=table.filter(keep), dropped=quarantine_table(dropped_rows, reasons))


STAGE = StageSpec(
    name="dedup",
    config=Config,
    reads=lambda cfg: {cfg.field, cfg.id_field},
    writes=lambda cfg: set(),
    doc="Drop exact or MinHash-LSH near-duplicates (of prompts or responses), keeping the first; each dropped "
    "row names the row it duplicates. Streams shards in order; memory bounded by the index of kept rows.",
    process=process,
    stateful=True,
)
