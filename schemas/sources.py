"""Reading source files row by row, shared by every stage that reads a file (load's prompts and candidates,
decontamination benchmarks, the retrieval pool): one reader, so every file is read by the same rules.

The rules: every line (or array element, or row) of the file yields exactly one `SourceRow`, so a reader's
count equals the file's; bytes are never rewritten: a line that is not valid UTF-8 is an error naming its line
and byte offset (its text kept with backslash escapes for the quarantine file, never decoded with
replacement characters); a blank line is its own row, marked blank; one broken element of a JSON array is an
error for that element, and the elements after it are still read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = ("jsonl", "json", "parquet", "hf")


@dataclass(frozen=True)
class SourceRow:
    #: 1-based line (JSONL), element (JSON array) or row (Parquet, datasets) number
    number: int
    record: Any
    error: str | None = None
    #: byte offset of the line or element in the file (text formats)
    offset: int | None = None
    #: the line was empty or whitespace: nothing to read, counted all the same
    blank: bool = False


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return "hf"
        raise ValueError(f"{path} is a folder but not a `datasets` dataset saved with save_to_disk")
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(f"cannot tell the format of {path.name}; set `format:` to jsonl, json, parquet or hf")


def records(path: Path, fmt: str = "auto") -> Iterator[SourceRow]:
    """One SourceRow per line / element / row of the file, streaming."""
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "jsonl":
        yield from _jsonl(path)
    elif fmt == "json":
        yield from _json_array(path)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for rec in batch.to_pylist():
                n += 1
                yield SourceRow(n, rec)
    elif fmt == "hf":
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            raise ValueError(f"{path} holds several splits ({', '.join(ds)}); point `path` at one split")
        n = 0
        for batch in ds.with_format("arrow").iter(batch_size=1024):
            for rec in batch.to_pylist():
                n += 1
                yield SourceRow(n, rec)
    else:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


def _decoded(raw: bytes, offset: int, what: str) -> tuple[str, str | None]:
    """(text, None), or (the bytes with backslash escapes, why) when they are not valid UTF-8."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return (raw.decode("utf-8", errors="backslashreplace"),
                f"invalid UTF-8 at byte {offset + exc.start} ({what}): {exc.reason}")


def _row(number: int, raw: bytes, offset: int, what: str, broken) -> SourceRow:
    """One line or element: its record, or why not (invalid UTF-8 first, then JSON; `broken(exc)` words it)."""
    text, error = _decoded(raw, offset, what)
    if error:
        return SourceRow(number, text, error, offset)
    try:
        return SourceRow(number, json.loads(text), offset=offset)
    except json.JSONDecodeError as exc:
        return SourceRow(number, text, broken(exc), offset)


def _jsonl(path: Path) -> Iterator[SourceRow]:
    offset = 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            here, offset = offset, offset + len(raw)
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                yield SourceRow(number, None, offset=here, blank=True)
                continue
            yield _row(number, line, here, f"line {number}",
                       lambda exc: f"broken JSON line: {exc.msg} at column {exc.colno}")


# the bytes that change a JSON scanner's state: outside strings quotes, brackets and commas; inside, quotes and
# backslashes
_SPECIAL = re.compile(rb'["\[\]{},]')
_IN_STRING = re.compile(rb'["\\]')


def _json_array(path: Path, chunk: int = 1 << 20) -> Iterator[SourceRow]:
    """The elements of a top-level JSON array, each parsed on its own: the scanner finds element boundaries
    (depth-1 commas outside strings) so a broken element is one error and the next element is read normally.
    Memory holds one element at a time."""
    number = 0
    depth = 0
    in_string = escaped = False
    started = ended = False
    buf = bytearray()  # the current element's bytes
    start = 0  # its byte offset
    pos = 0  # file offset of the chunk being scanned

    def element() -> Iterator[SourceRow]:
        nonlocal number
        raw = bytes(buf).strip()
        if not raw:
            return
        number += 1
        at = start + len(buf) - len(bytes(buf).lstrip())  # the element's first byte
        yield _row(number, raw, at, f"element {number}",
                   lambda exc: f"broken JSON in element {number} (byte {at}): {exc.msg}")

    with open(path, "rb") as fh:
        while data := fh.read(chunk):
            i = 0
            while i < len(data):
                if not started:  # skip to the array's opening bracket
                    j = data.find(b"[", i)
                    if j < 0:
                        if data[i:].strip():
                            raise ValueError(f"{path.name} is not a JSON array (expected '[' first)")
                        break
                    if data[i:j].strip():
                        raise ValueError(f"{path.name} is not a JSON array (expected '[' first)")
                    started, depth, i, start = True, 1, j + 1, pos + j + 1
                    continue
                if ended:
                    rest = data[i:].strip()
                    if rest:  # a stray closing bracket ended the array early: the rest is one broken row
                        number += 1
                        yield SourceRow(number, _decoded(rest, pos + i, "after the array")[0],
                                        f"text after the JSON array's closing bracket at byte {pos + i}", pos + i)
                        return
                    break
                if escaped:  # the byte after a backslash (split across chunks) is taken as is
                    buf += data[i:i + 1]
                    escaped, i = False, i + 1
                    continue
                m = (_IN_STRING if in_string else _SPECIAL).search(data, i)
                if m is None:
                    buf += data[i:]
                    break
                j, c = m.start(), data[m.start():m.start() + 1]
                if in_string:
                    buf += data[i:j + 1]
                    if c == b"\\":
                        if j + 1 < len(data):
                            buf += data[j + 1:j + 2]
                            i = j + 2
                        else:
                            escaped, i = True, j + 1
                    else:
                        in_string, i = False, j + 1
                    continue
                if c == b'"':
                    in_string = True
                    buf += data[i:j + 1]
                elif c in (b"[", b"{"):
                    depth += 1
                    buf += data[i:j + 1]
                elif c in (b"]", b"}"):
                    depth -= 1
                    if depth == 0:  # the array's closing bracket
                        buf += data[i:j]
                        yield from element()
                        buf.clear()
                        ended = True
                    else:
                        buf += data[i:j + 1]
                elif c == b"," and depth == 1:
                    buf += data[i:j]
                    yield from element()
                    buf.clear()
                    start = pos + j + 1
                else:
                    buf += data[i:j + 1]
                i = j + 1
            pos += len(data)
    if not started:
        raise ValueError(f"{path.name} is not a JSON array (expected '[' first)")
    if not ended:  # cut off: what is left is one broken element
        yield from element()


def dig(rec: Any, path: str) -> Any:
    """`a.b.-1.c` -> rec["a"]["b"][-1]["c"], or None where the path does not exist."""
    for part in path.split("."):
        try:
            rec = rec[int(part)] if isinstance(rec, list) else rec[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return rec


PART_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".pq")


def files_of(spec: str | Path) -> list[Path]:
    """The files one `path` names: a file; a folder of parts (an export folder: its JSONL/JSON/Parquet files, in
    name order; a folder `datasets` saved is one source of its own); or a glob (`data/*.jsonl`). Empty when
    nothing matches."""
    import glob

    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return [path]
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PART_SUFFIXES
                      and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
    return [Path(p) for p in sorted(glob.glob(str(spec), recursive=True)) if Path(p).is_file()]


def hub_records(name: str, config: str | None, split: str, revision: str | None) -> Iterator[SourceRow]:
    """A dataset on the Hugging Face Hub (or HF_ENDPOINT's server), streamed: rows arrive as the files are read,
    so a dataset of any size is never held in memory. Uses the user's HF cache and token."""
    import datasets

    ds = datasets.load_dataset(name, config, split=split, revision=revision, streaming=True)
    for n, rec in enumerate(ds, 1):
        yield SourceRow(n, rec)
