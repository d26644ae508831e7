"""Dedup's decision on one machine in partitions of the bucket keys: the links are the same however many
partitions the keys are split into (a bucket lies in one partition), so memory can stay flat as the corpus
grows without changing what is kept."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.stages import dupsets

pytestmark = pytest.mark.fast


def key_files(tmp_path, rows: int, bands: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, rows * 3, size=(rows, bands), dtype=np.uint64)  # collisions: shared buckets
    files = []
    for i, start in enumerate(range(0, rows, 97)):
        part = keys[start:start + 97]
        flat = pa.array(part.reshape(-1), pa.uint64())
        table = pa.table({"_order": pa.array(np.arange(start, start + len(part)), pa.int64()),
                          "_bands": pa.FixedSizeListArray.from_arrays(flat, bands),
                          "_key": pa.array(part[:, 0], pa.uint64())})
        files.append(str(tmp_path / f"k{i}.parquet"))
        pq.write_table(table, files[-1])
    return files


@pytest.mark.parametrize("seed", range(3))
def test_links_do_not_depend_on_the_number_of_partitions(tmp_path, monkeypatch, seed):
    keys = dupsets.Keys(files=key_files(tmp_path, 1000, 4, seed))
    assert keys.rows() == 1000 and keys.width("_bands") == 4
    whole = {}
    for explode, cols in (("_bands", []), (None, ["_key"])):
        whole[explode] = dupsets.later_rows(keys, cols, explode, False).sort(["_order", "_first"])
        assert whole[explode].height > 0
    monkeypatch.setattr(dupsets, "PART_KEYS", 300)  # 14 partitions of the bands, 4 of the exact keys
    for explode, cols in (("_bands", []), (None, ["_key"])):
        parted = dupsets.later_rows(keys, cols, explode, False).sort(["_order", "_first"])
        assert parted.equals(whole[explode])
        assert dupsets.components(parted).sort("_order").equals(dupsets.components(whole[explode]).sort("_order"))


@pytest.mark.parametrize("n,cells", [(1, 1), (2, 1), (9, 3), (300, 7), (300, 1 << 24)])
def test_semantic_links_in_blocks_equal_the_whole_similarity_matrix(n, cells):
    """earliest_close computes a large cluster's similarities a block of columns at a time: same links."""
    from curate.stages.dedup import earliest_close

    rng = np.random.default_rng(n)
    v = rng.normal(size=(n, 8)).astype(np.float32)
    v[n // 2:] = v[: n - n // 2] + rng.normal(scale=0.05, size=(n - n // 2, 8))  # near copies of earlier rows
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    close = np.triu(v @ v.T >= 0.9, k=1)
    later = np.flatnonzero(close.any(axis=0))
    got = earliest_close(v, 0.9, cells)
    assert (got[0] == later).all() and (got[1] == close[:, later].argmax(axis=0)).all()
    assert n < 9 or len(later) >= n // 3


def test_each_row_joins_its_two_nearest_clusters():
    from curate.stages.dedup import nearest_two

    rng = np.random.default_rng(0)
    v, centers = rng.normal(size=(500, 4)).astype(np.float32), rng.normal(size=(7, 4)).astype(np.float32)
    members = nearest_two(v, centers, chunk=64)
    dist = ((v[:, None, :] - centers[None]) ** 2).sum(axis=2)
    two = np.argsort(dist, axis=1)[:, :2]
    for c, rows in enumerate(members):
        assert (np.diff(rows) > 0).all()  # ascending: the earliest row first
        assert set(rows) == set(np.flatnonzero((two == c).any(axis=1)))
