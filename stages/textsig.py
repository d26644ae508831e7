"""Text signatures for dedup and decontamination, vectorized over a batch (polars for tokens and hashes,
numpy for MinHash), so a million short texts take seconds, not a Python loop per shingle.

Not a stage: the helpers that stages/dedup.py and stages/decontaminate.py share.
"""

from __future__ import annotations

import numpy as np
import polars as pl

MERSENNE = np.uint64((1 << 61) - 1)
MAX_HASH = np.uint64((1 << 32) - 1)
_SEED = 0x5EED


def word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Normalized words (lowercase, punctuation dropped) hashed to uint64, flattened, with per-text offsets."""
    words = (pl.Series("t", texts, dtype=pl.String).fill_null("").str.to_lowercase()
             .str.replace_all(r"[^\p{L}\p{N}\s]+", " ").str.split(" ")
             .list.eval(pl.element().filter(pl.element() != "")))
    counts = words.list.len().to_numpy().astype(np.int64)
    flat = words.explode().drop_nulls().hash(seed=_SEED).to_numpy().astype(np.uint64)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return flat, offsets


def ngram_hashes(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of word n-grams per text (a text shorter than n words is one gram of all its words)."""
    flat, offsets = word_hashes(texts)
    counts = np.diff(offsets)
    grams_per_text = np.where(counts >= n, counts - n + 1, (counts > 0).astype(np.int64))
    out_offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(grams_per_text, out=out_offsets[1:])
    total = int(out_offsets[-1])
    if total == 0:
        return np.zeros(0, dtype=np.uint64), out_offsets
    # start index (into flat) and length of every gram
    text_of_gram = np.repeat(np.arange(len(texts)), grams_per_text)
    local = np.arange(total) - out_offsets[text_of_gram]
    starts = offsets[text_of_gram] + local
    lengths = np.minimum(counts[text_of_gram], n)
    acc = np.zeros(total, dtype=np.uint64)
    mult = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for k in range(n):
            valid = k < lengths
            idx = np.where(valid, starts + k, 0)
            acc = np.where(valid, acc * mult ^ flat[idx] if len(flat) else acc, acc)
    return acc, out_offsets


class MinHasher:
    """MinHash signatures (num_perm 32-bit minima per text), the universal-hash scheme datasketch uses."""

    def __init__(self, num_perm: int = 128, seed: int = 1):
        rng = np.random.RandomState(seed)
        self.a = rng.randint(1, int(MERSENNE), size=num_perm, dtype=np.uint64)
        self.b = rng.randint(0, int(MERSENNE), size=num_perm, dtype=np.uint64)
        self.num_perm = num_perm

    def signatures(self, texts: list[str], n: int, chunk: int = 1 << 15) -> np.ndarray:
        grams, offsets = ngram_hashes(texts, n)
        sig = np.full((len(texts), self.num_perm), MAX_HASH, dtype=np.uint64)
        if len(grams) == 0:
            return sig
        h = (grams & MAX_HASH)[:, None]
        text_of_gram = np.repeat(np.arange(len(texts)), np.diff(offsets))
        with np.errstate(over="ignore"):
            for lo in range(0, len(grams), chunk):
                part = ((h[lo:lo + chunk] * self.a + self.b) % MERSENNE) & MAX_HASH
                np.minimum.at(sig, text_of_gram[lo:lo + chunk], part)
        return sig


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimizing false positives + false negatives around `threshold` (as datasketch does)."""
    xs = np.linspace(0, 1, 201)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1 - (1 - xs ** r) ** b
            fp = np.trapezoid(np.where(xs < threshold, p, 0), xs)
            fn = np.trapezoid(np.where(xs >= threshold, 1 - p, 0), xs)
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


class LSHIndex:
    """Band buckets of MinHash signatures: the first text seen in a bucket is the one later texts duplicate.

    Memory is one dict entry per (band, bucket): the signature table, bounded by the rows kept, not seen.
    """

    def __init__(self, threshold: float, num_perm: int):
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.tables: list[dict[bytes, str]] = [{} for _ in range(self.bands)]

    def query_insert(self, sig: np.ndarray, key: str) -> str | None:
        """The key of an earlier near-duplicate, or None (then this text is indexed)."""
        band_keys = [sig[i * self.rows:(i + 1) * self.rows].tobytes() for i in range(self.bands)]
        for table, bk in zip(self.tables, band_keys):
            hit = table.get(bk)
            if hit is not None:
                return hit
        for table, bk in zip(self.tables, band_keys):
            table[bk] = key
        return None
