"""Validation that separates offending rows (with a reason) from good ones instead of failing a whole batch."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from curate.schemas.records import QUARANTINE_ROW

ROLES = {"system", "user", "assistant"}


def prompt_problem(messages: Any, system: Any) -> str | None:
    """Why a prompt (as chat messages) cannot be used, or None when it can.

    The last message must be a non-empty user turn: that is what candidates answer.
    """
    if not isinstance(messages, list) or not messages:
        return "no prompt: messages are missing or empty"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"message {i} is {type(m).__name__}, not an object with role and content"
        if m.get("role") not in ROLES:
            return f"message {i} has role {m.get('role')!r}; expected one of {sorted(ROLES)}"
        content = m.get("content")
        if not isinstance(content, str):
            return f"message {i} content is {type(content).__name__}, not a string"
    if messages[-1]["role"] != "user":
        return f"the last message is from {messages[-1]['role']!r}; a prompt must end with a user turn"
    if not messages[-1]["content"].strip():
        return "empty prompt: the last user turn is blank"
    if system is not None and not isinstance(system, str):
        return f"system prompt is {type(system).__name__}, not a string"
    return None


def _text(value: Any) -> str:
    """How a value that JSON cannot hold is written in a quarantine record: bytes (an image) by length and
    sha256, so the record names them without carrying them."""
    if isinstance(value, (bytes, bytearray)):
        import hashlib

        return f"<{len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()}>"
    return str(value)


def quarantine_table(
    records: list[Any],
    reasons: list[str],
    *,
    source: str | list[str] | None = None,
    lines: list[int | None] | None = None,
    stage: str | None = None,
) -> pa.Table:
    """Rows for the dropped/quarantined files: the record as text plus a reason, whatever its shape. `source`
    names the source of every row, or of each row (a list: rows of several sources, whose own fields may hold
    a `source` of another meaning). The stage column is the runner's to fill (`with_stage`): a stage function
    does not repeat its own name."""
    rows = []
    for i, (rec, reason) in enumerate(zip(records, reasons, strict=True)):
        pid = rec.get("prompt_id") if isinstance(rec, dict) else None
        rows.append(
            {
                "stage": stage,
                "source": source[i] if isinstance(source, list) else
                (rec.get("source") if isinstance(rec, dict) else None) or source,
                "line": lines[i] if lines else None,
                "prompt_id": pid if isinstance(pid, str) else None,
                "reason": reason,
                "record": rec if isinstance(rec, str) else json.dumps(rec, default=_text, ensure_ascii=False),
            }
        )
    return pa.Table.from_pylist(rows, schema=QUARANTINE_ROW)


def _holds_bytes(t: pa.DataType) -> bool:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return True
    if pa.types.is_struct(t):
        return any(_holds_bytes(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _holds_bytes(t.value_type)
    return False


def quarantine_arrow(table: pa.Table, reasons: pa.Array | list[str]) -> pa.Table:
    """`quarantine_table` for rows already in Arrow (the columnar stages' dropped rows), with no Python object per
    row: each record is polars' JSON encoding of the row (the same fields and values; nested types as JSON). A
    table polars cannot encode (binary columns: image bytes) goes the per-row way, which names bytes by hash."""
    import polars as pl

    n = table.num_rows
    if n == 0 or any(_holds_bytes(f.type) for f in table.schema):
        return quarantine_table(table.to_pylist(), list(reasons.to_pylist() if isinstance(reasons, pa.Array)
                                                         else reasons))
    df = pl.from_arrow(table)
    records = df.select(pl.struct(pl.all()).struct.json_encode()).to_series().to_arrow()

    def text_column(name: str) -> pa.Array:
        if name in table.column_names and pa.types.is_string(table.schema.field(name).type):
            return table[name].combine_chunks()
        return pa.nulls(n, pa.string())

    return pa.table({"stage": pa.nulls(n, pa.string()), "source": text_column("source"),
                     "line": pa.nulls(n, pa.int64()), "prompt_id": text_column("prompt_id"),
                     "reason": pa.array(reasons, pa.string()), "record": records.cast(pa.string())},
                    schema=QUARANTINE_ROW)


def with_stage(table: pa.Table, stage: str) -> pa.Table:
    """A dropped/quarantined table with its `stage` column filled where the stage function left it empty."""
    if table.num_rows == 0 or table.column("stage").null_count == 0:
        return table
    import pyarrow.compute as pc

    i = table.schema.get_field_index("stage")
    return table.set_column(i, "stage", pc.fill_null(table.column("stage"), stage))
