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
        h = (grams & MAX_HASH)[:, None]
        # whole texts per chunk of about `chunk` grams, so each text's minimum is one reduceat over its rows
        first = 0
        while first < len(texts):
            last = int(np.searchsorted(offsets, offsets[first] + chunk, side="right")) - 1
            last = min(max(last, first + 1), len(texts))
            lo, hi = offsets[first], offsets[last]
            if hi > lo:
                with np.errstate(over="ignore"):
                    part = ((h[lo:hi] * self.a + self.b) % MERSENNE) & MAX_HASH
                counts = np.diff(offsets[first:last + 1])
                nonempty = np.flatnonzero(counts)
                starts = (offsets[first:last] - lo)[nonempty]
                sig[first + nonempty] = np.minimum.reduceat(part, starts, axis=0)
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


class LSHIndex:
    """Band buckets of MinHash signatures: the first text seen in a bucket is the one later texts duplicate.

    Each band is a sorted uint64 array of bucket hashes with the kept row each points to, grown by merging
    (searchsorted + insert) batch by batch: 12 bytes per band per kept row plus the packed id, so memory grows
    with the rows kept and stays small (a dict of bytes keys costs ~10x more).
    """

    def __init__(self, threshold: float, num_perm: int):
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.keys = [np.zeros(0, dtype=np.uint64) for _ in range(self.bands)]
        self.vals = [np.zeros(0, dtype=np.int32) for _ in range(self.bands)]
        # ids of kept rows, packed (a Python list of str costs ~70 bytes a row)
        self._id_bytes = bytearray()
        self._id_ends = np.zeros(0, dtype=np.int64)

    def _id(self, i: int) -> str:
        start = int(self._id_ends[i - 1]) if i else 0
        return self._id_bytes[start:int(self._id_ends[i])].decode()

    def _add_ids(self, keys: list[str]) -> None:
        ends = []
        for key in keys:
            self._id_bytes += key.encode()
            ends.append(len(self._id_bytes))
        self._id_ends = np.concatenate([self._id_ends, np.array(ends, dtype=np.int64)])

    def band_hashes(self, sigs: np.ndarray) -> np.ndarray:
        """(n, bands) uint64: each band's rows folded into one hash."""
        n = sigs.shape[0]
        out = np.zeros((n, self.bands), dtype=np.uint64)
        mult = np.uint64(0x100000001B3)
        with np.errstate(over="ignore"):
            for k in range(self.rows):
                out = out * mult ^ sigs[:, k: self.bands * self.rows: self.rows]
        return out

    def check_batch(self, sigs: np.ndarray, keys: list[str]) -> list[str | None]:
        """For each row, the key of an earlier near-duplicate (indexed, or earlier in this batch), or None;
        rows with none are indexed."""
        n = len(keys)
        hashes = self.band_hashes(sigs)
        dup = np.full(n, -1, dtype=np.int64)  # >= 0: a kept row's index; <= -2: -(batch row) - 2
        for b in range(self.bands):
            col = hashes[:, b]
            if len(self.keys[b]):
                pos = np.minimum(np.searchsorted(self.keys[b], col), len(self.keys[b]) - 1)
                hit = (self.keys[b][pos] == col) & (dup == -1)
                dup[hit] = self.vals[b][pos[hit]]
            # within the batch: a row whose bucket an earlier row of the batch opened
            order = np.argsort(col, kind="stable")
            sorted_col = col[order]
            starts = np.r_[True, sorted_col[1:] != sorted_col[:-1]]
            leader = order[np.maximum.accumulate(np.where(starts, np.arange(n), 0))]
            later = (leader != np.arange(n)[order]) & (dup[order] == -1)
            dup[order[later]] = -leader[later] - 2
        fresh = np.flatnonzero(dup == -1)
        base = len(self._id_ends)
        self._add_ids([keys[i] for i in fresh])
        for b in range(self.bands):
            new_keys = hashes[fresh, b]
            new_vals = np.arange(base, base + len(fresh), dtype=np.int32)
            srt = np.argsort(new_keys, kind="stable")
            new_keys, new_vals = new_keys[srt], new_vals[srt]
            keep = np.r_[True, new_keys[1:] != new_keys[:-1]] if len(new_keys) else np.zeros(0, dtype=bool)
            new_keys, new_vals = new_keys[keep], new_vals[keep]
            if len(self.keys[b]):  # a bucket already open keeps its first row
                pos = np.minimum(np.searchsorted(self.keys[b], new_keys), len(self.keys[b]) - 1)
                unseen = self.keys[b][pos] != new_keys
                new_keys, new_vals = new_keys[unseen], new_vals[unseen]
            at = np.searchsorted(self.keys[b], new_keys)
            self.keys[b] = np.insert(self.keys[b], at, new_keys)
            self.vals[b] = np.insert(self.vals[b], at, new_vals)
        out: list[str | None] = []
        for i in range(n):
            d = int(dup[i])
            out.append(None if d == -1 else self._id(d) if d >= 0 else keys[-d - 2])
        return out
