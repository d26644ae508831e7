"""load's columnar path for TRL pair files gives exactly the per-row path's shards (rows, ids, hashes, line
numbers, per-source counts), and leaves every file it cannot read the same way to the per-row path."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from curate.stages import load, load_columnar

pytestmark = pytest.mark.fast

TEXTS = ["plain words", "é à ü — ‘quotes’", "中文的回答", "emoji 🙂 and \U0001f680", 'quote " and \\ backslash',
         "tab\tand one\nnewline", "control \u0001 char", "", "  spaces  ", "</s> <|im_end|>"]


def write(path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            rec = {"prompt": f"{rng.choice(TEXTS)} {i}", "chosen": rng.choice(TEXTS) * rng.randint(1, 3),
                   "rejected": rng.choice(TEXTS)}
            if rng.random() < 0.5:
                rec = {k: rec[k] for k in ("rejected", "prompt", "chosen")}  # key order does not matter
            fh.write(json.dumps(rec, ensure_ascii=rng.random() < 0.5) + "\n")


def both(cfg: load.Config):
    (src,) = cfg.all_sources()
    found = load_columnar.applies(src)
    assert found is not None
    return list(load_columnar.shards(found, src, cfg.shard_size)), list(load.read_sources(cfg, [src]))


@pytest.mark.parametrize("n,shard_size,limit,source", [(40, 7, None, None), (21, 7, None, None), (1, 5, None, None),
                                                        (30, 8, 11, "données/ü"), (10, 4, 0, None)])
def test_columnar_load_equals_the_per_row_path(tmp_path, n, shard_size, limit, source):
    path = tmp_path / "pairs.jsonl"
    write(path, n, seed=n)
    cfg = load.Config(path=str(path), layout="trl", shard_size=shard_size, source=source, limit=limit)
    fast, slow = both(cfg)
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow, strict=True):
        assert a.out.schema == b.out.schema
        assert a.out.to_pylist() == b.out.to_pylist()
        assert a.dropped.to_pylist() == b.dropped.to_pylist() and a.quarantined.to_pylist() == b.quarantined.to_pylist()
        assert (a.rows_in, a.out_sources, a.stats) == (b.rows_in, b.out_sources, b.stats)


@pytest.mark.parametrize("line", ["", "   ", '{"prompt": "p", "chosen": "c", "rejected": "r", "id": 3}',
                                  '{"prompt": "p", "chosen": "c"}', '{"prompt": "p", "chosen": "c", "rejected": 2}',
                                  '{"prompt": "p", "chosen": "c", "rejected": "r"', "[1, 2]",
                                  '{"prompt": "\\n\\nHuman: hi\\n\\nAssistant:", "chosen": "c", "rejected": "r"}',
                                  '{"prompt": "p", "chosen": null, "rejected": "r"}'])
def test_a_file_the_columnar_path_cannot_read_exactly_goes_the_per_row_way(tmp_path, line):
    path = tmp_path / "pairs.jsonl"
    write(path, 5)
    path.write_text(path.read_text() + line + "\n" + '{"prompt": "p", "chosen": "c", "rejected": "r"}\n')
    (src,) = load.Config(path=str(path), layout="trl").all_sources()
    assert load_columnar.applies(src) is None
    results = list(load.read(load.Config(path=str(path), layout="trl")))
    assert sum(r.rows_in for r in results) == 7  # every line accounted for, by the per-row path


@given(lines=st.lists(st.sampled_from([b"{}", b"", b" ", b"\t \r", b"x", b"\x0c", b"\xc2\xa0", b"ab\r"]), max_size=12),
       end=st.sampled_from([b"", b"\n", b" "]), chunk=st.integers(1, 7))
def test_line_count_in_chunks_counts_as_a_line_loop_does(lines, end, chunk):
    """The chunked count (blank lines spanning chunk edges included) agrees with `for line in file`."""
    import tempfile
    from pathlib import Path

    data = b"\n".join(lines) + (end if lines else b"")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.jsonl"
        path.write_bytes(data)
        with open(path, "rb") as fh:
            raws = list(fh)
        expected = None if any(not r.strip() for r in raws) else len(raws)
        old, load_columnar.CHUNK = load_columnar.CHUNK, chunk
        try:
            assert load_columnar.line_count(path) == expected
        finally:
            load_columnar.CHUNK = old
