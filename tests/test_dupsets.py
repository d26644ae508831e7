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
