"""load's common corpus case as column operations: one JSONL file of TRL pairs (`prompt`, `chosen`, `rejected`
strings, nothing else), read by Arrow's JSON reader and turned into prompt rows on whole columns.

The per-row path parses every line with `json.loads`, maps it through the layout, builds each candidate and
judgment as a dict and the shard with `from_pylist`: ~100 µs a pair. Here the file is read twice, streaming (a
first pass proves every line is such a pair: one JSON object with exactly the three fields, all strings, no blank
line, no Human/Assistant transcript; anything else and the per-row path reads the file, with its per-line
reasons), and the columns are built directly; the ids are the same hashes of the same JSON texts, built from
`json`'s own string encoders, so the rows are byte for byte the per-row path's (tests/test_load_columnar.py). A file up to HOLD_BYTES is parsed once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.schemas.records import CANDIDATE, JUDGMENT, MESSAGE, PROMPT_ROW_WITH_CANDIDATES
from curate.schemas.validate import quarantine_table
from curate.stages.base import StageResult

FIELDS = ("prompt", "chosen", "rejected")
SCHEMA = pa.schema([(f, pa.string()) for f in FIELDS])
#: what makes a text a Human/Assistant transcript (schemas.messages.parse_transcript): the per-row path's case
TRANSCRIPT = r"\n\n(Human|Assistant):"
BLOCK = 16 << 20  # bytes of JSON per batch the reader parses


def _batches(path: Path) -> Iterator[pa.RecordBatch]:
    import pyarrow.json as pj

    reader = pj.open_json(path, read_options=pj.ReadOptions(block_size=BLOCK),
                          parse_options=pj.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="error"))
    yield from reader


#: a file this size or smaller is parsed once (its batches held between the check and the shards)
HOLD_BYTES = 512 << 20


#: a line of nothing but ASCII whitespace (what `bytes.strip()` removes)
BLANK = re.compile(rb"\n[ \t\r\x0b\x0c]*\n")  # after a line's end (a literal first: a fast scan)
BLANK_FIRST = re.compile(rb"[ \t\r\x0b\x0c]*\n")  # at a line's start
CHUNK = 64 << 20


def line_count(path: Path) -> int | None:
    """The file's lines as `for line in file` counts them, or None when one is blank; read in chunks with bytes
    operations (a Python loop over a million long lines took 13 s of a 3.4 GB file's load)."""
    lines, carry = 0, b""
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            buf = carry + chunk
            end = buf.rfind(b"\n") + 1  # the complete lines; the rest waits for the next chunk
            if BLANK_FIRST.match(buf, 0, end) or BLANK.search(buf, 0, end):
                return None
            lines += buf.count(b"\n", 0, end)
            carry = buf[end:]
    if carry:
        if not carry.strip():
            return None
        lines += 1
    return lines


def _plain_pairs(path: Path) -> list[pa.RecordBatch] | None:
    """The file's batches (an empty list for a file too large to hold: read again) when every line is one object
    of exactly prompt/chosen/rejected strings, none a transcript; None otherwise."""
    import pyarrow.lib

    lines = line_count(path)
    if lines is None:
        return None  # a blank line: the per-row path counts it, with its line number
    hold = path.stat().st_size <= HOLD_BYTES
    rows, held = 0, []
    try:
        for batch in _batches(path):
            for name in FIELDS:
                col = batch.column(name)
                if col.null_count or pc.any(pc.match_substring_regex(col, TRANSCRIPT)).as_py():
                    return None
            rows += batch.num_rows
            if hold:
                held.append(batch)
    except (pyarrow.lib.ArrowInvalid, OSError):  # broken JSON, another field, a value that is not text
        return None
    return held if rows == lines else None


def applies(src: Any) -> tuple[Path, list[pa.RecordBatch]] | None:
    """(the file, its batches if held) when this path can read the source (the `trl` layout, one local JSONL
    file, every row of it, no sample), else None."""
    from curate.schemas.sources import detect_format, files_of

    if src.hf is not None or src.layout != "trl" or src.mapping is not None or src.weight < 1:
        return None
    files = files_of(src.path)
    if len(files) != 1 or (src.format if src.format != "auto" else detect_format(files[0])) != "jsonl":
        return None
    held = _plain_pairs(files[0])
    return None if held is None else (files[0], held)


def shards(found: tuple[Path, list[pa.RecordBatch]], src: Any, shard_size: int) -> Iterator[StageResult]:
    """The source's prompt rows in shards of `shard_size` (and the empty last one the per-row path yields when
    the rows fill their shards exactly), as the per-row path cuts them; `found` is what `applies` returned."""
    path, batches = found
    name = src.name
    pending: list[pa.RecordBatch] = []
    held = 0
    number = 0  # line numbers: one line per row
    left = src.limit
    for batch in batches or _batches(path):
        if left is not None:
            batch = batch.slice(0, max(0, left - number))
        pending.append(batch)
        held += batch.num_rows
        while held >= shard_size:
            table = pa.Table.from_batches(pending)
            yield _shard(table.slice(0, shard_size), name, number)
            number += shard_size
            rest = table.slice(shard_size)
            pending, held = rest.to_batches(), rest.num_rows
        if left is not None and number + held >= left:
            break
    table = pa.Table.from_batches(pending, schema=SCHEMA)
    yield _shard(table, name, number)


def _shard(table: pa.Table, source: str, first: int) -> StageResult:
    n = table.num_rows
    prompts, chosen, rejected = (table.column(f).to_pylist() for f in FIELDS)
    encode = json.encoder.encode_basestring  # json.dumps(str, ensure_ascii=False)
    encode_ascii = json.encoder.encode_basestring_ascii  # json.dumps(str)
    # prompt_id: sha256 of json.dumps({"system": None, "messages": [...]}, sort_keys=True, ensure_ascii=False)
    pids = [hashlib.sha256(f'{{"messages": [{{"content": {encode(p)}, "role": "user"}}], "system": null}}'
                           .encode()).hexdigest()[:16] for p in prompts]
    # a response's id: content_id(prompt_id, source, index, text) = sha256(json.dumps([...]))[:16]
    src_ascii = encode_ascii(source)
    ids = [[hashlib.sha256(f'["{pid}", {src_ascii}, {i}, {encode_ascii(text)}]'.encode()).hexdigest()[:16]
            for i, text in ((0, c), (1, r))] for pid, c, r in zip(pids, chosen, rejected, strict=True)]
    flat_ids = [x for pair in ids for x in pair]
    opponents = [x for a, b in ids for x in (b, a)]
    # gen_params: json.dumps({"source", "layout", "index", "row", "file"}, ensure_ascii=False)
    src_text = encode(source)
    params = [f'{{"source": {src_text}, "layout": "trl", "index": {i}, "row": {first + k + 1}, "file": {src_text}}}'
              for k in range(n) for i in (0, 1)]
    texts = pa.array([x for pair in zip(chosen, rejected, strict=True) for x in pair], pa.string())
    m = 2 * n
    judge = f"source:{source}/chosen"
    judgment = pa.StructArray.from_arrays([
        pa.array([judge] * m, pa.string()), pa.array(["pairwise"] * m, pa.string()),
        pa.array(["overall"] * m, pa.string()), pa.array(np.tile([1.0, 0.0], n), pa.float64()),
        pa.array(["win", "loss"] * n, pa.string()), pa.nulls(m, pa.string()),
        pa.array(np.tile(np.array([0, 1], np.int32), n), pa.int32()), pa.array(opponents, pa.string()),
        pa.array(np.ones(m, bool)), pa.nulls(m, pa.string()), pa.nulls(m, pa.float64()),
        pa.array([f"source:{source}"] * m, pa.string()), pa.nulls(m, JUDGMENT.field("members").type)],
        fields=list(JUDGMENT))
    one_each = pa.array(np.arange(m + 1, dtype=np.int32))
    candidate = pa.StructArray.from_arrays([
        pa.array(flat_ids, pa.string()), pa.nulls(m, pa.string()), texts, pa.nulls(m, pa.string()),
        pa.nulls(m, pa.int32()), pa.array(params, pa.string()), pa.ListArray.from_arrays(one_each, judgment),
        pa.nulls(m, CANDIDATE.field("image").type)], fields=list(CANDIDATE))
    two_each = pa.array(np.arange(0, m + 1, 2, dtype=np.int32))
    prompt = table.column("prompt").combine_chunks() if n else pa.array([], pa.string())
    message = pa.StructArray.from_arrays([pa.array(["user"] * n, pa.string()), prompt], fields=list(MESSAGE))
    columns = {
        "prompt_id": pa.array(pids, pa.string()), "prompt": prompt,
        "messages": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), message),
        "source": pa.array([source] * n, pa.string()), "meta": pa.array(["{}"] * n, pa.string()),
        "candidates": pa.ListArray.from_arrays(two_each, candidate),
    }
    out = pa.Table.from_arrays([columns[f.name] if f.name in columns else pa.nulls(n, f.type)
                                for f in PROMPT_ROW_WITH_CANDIDATES], schema=PROMPT_ROW_WITH_CANDIDATES)
    empty = quarantine_table([], [], source=[], lines=[])
    stats = {f"source:{source}:in": n, f"source:{source}:out": n} if n else {}
    return StageResult(out=out, dropped=empty, quarantined=empty, rows_in=n, out_sources=n, stats=stats)
