"""Text signatures for dedup and decontamination, vectorized over a batch (polars for tokens and hashes,
numpy for MinHash), so a million short texts take seconds, not a Python loop per shingle.

Not a stage: the helpers that stages/dedup.py and stages/decontaminate.py share.
"""

from __future__ import annotations

import numpy as np

MERSENNE = np.uint64((1 << 61) - 1)
MAX_HASH = np.uint64((1 << 32) - 1)
_SEED = 0x5EED


def word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Normalized words (lowercase, punctuation dropped) hashed to uint64, flattened, with per-text offsets."""
    import polars as pl  # here, not at the top: every pipeline loads this module (the stage registry), few use it

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

    def signatures(self, texts: list[str], n: int, chunk: int = 1 << 14) -> np.ndarray:
        grams, offsets = ngram_hashes(texts, n)
        sig = np.full((len(texts), self.num_perm), MAX_HASH, dtype=np.uint64)
        h = (grams & MAX_HASH)[None, :]
        a, b = self.a[:, None], self.b[:, None]
        # whole texts per chunk of about `chunk` grams, so each text's minimum is one reduceat over its grams;
        # permutations x grams, so that reduceat runs along contiguous memory (12x faster than grams x perms)
        first = 0
        while first < len(texts):
            last = int(np.searchsorted(offsets, offsets[first] + chunk, side="right")) - 1
            last = min(max(last, first + 1), len(texts))
            lo, hi = offsets[first], offsets[last]
            if hi > lo:
                with np.errstate(over="ignore"):
                    part = ((a * h[:, lo:hi] + b) % MERSENNE) & MAX_HASH
                counts = np.diff(offsets[first:last + 1])
                nonempty = np.flatnonzero(counts)
                starts = (offsets[first:last] - lo)[nonempty]
                sig[first + nonempty] = np.minimum.reduceat(part, starts, axis=1).T
            first = last
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


def band_hashes(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: each LSH band's `rows` signature values folded into one hash, salted by the band's
    index, so all bands share one key space (two rows share a bucket only within the same band)."""
    n = sigs.shape[0]
    out = np.zeros((n, bands), dtype=np.uint64)
    mult = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for k in range(rows):
            out = out * mult ^ sigs[:, k: bands * rows: rows]
        return out * mult ^ (np.arange(bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
