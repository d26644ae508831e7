"""Validation that separates offending rows (with a reason) from good ones instead of failing a whole batch."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from schemas.records import PROMPT_ROW, QUARANTINE_ROW

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


def split_valid(table: pa.Table, schema: pa.Schema = PROMPT_ROW) -> tuple[pa.Table, pa.Table]:
    """Split a table into (rows that satisfy `schema`, quarantine rows with the reason).

    Checks what a cast cannot: non-nullable columns that hold nulls, and missing columns.
    """
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        reason = f"missing columns: {', '.join(missing)}"
        return table.slice(0, 0), quarantine_table("validate", table.to_pylist(), [reason] * table.num_rows)
    bad = pa.array([False] * table.num_rows, type=pa.bool_())
    reasons: list[str | None] = [None] * table.num_rows
    for field in schema:
        if field.nullable:
            continue
        nulls = pc.is_null(table[field.name])
        for i, is_null in enumerate(nulls.to_pylist()):
            if is_null and reasons[i] is None:
                reasons[i] = f"{field.name} is null"
        bad = pc.or_(bad, nulls)
    good = table.filter(pc.invert(bad)).select(schema.names).cast(schema)
    bad_rows = table.filter(bad)
    return good, quarantine_table("validate", bad_rows.to_pylist(), [r for r in reasons if r is not None])


def quarantine_table(
    stage: str,
    records: list[Any],
    reasons: list[str],
    *,
    source: str | None = None,
    lines: list[int | None] | None = None,
) -> pa.Table:
    """Rows for the dropped/quarantined files: the record as text plus a reason, whatever its shape."""
    rows = []
    for i, (rec, reason) in enumerate(zip(records, reasons, strict=True)):
        pid = rec.get("prompt_id") if isinstance(rec, dict) else None
        rows.append(
            {
                "stage": stage,
                "source": (rec.get("source") if isinstance(rec, dict) else None) or source,
                "line": lines[i] if lines else None,
                "prompt_id": pid if isinstance(pid, str) else None,
                "reason": reason,
                "record": rec if isinstance(rec, str) else json.dumps(rec, default=str, ensure_ascii=False),
            }
        )
    return pa.Table.from_pylist(rows, schema=QUARANTINE_ROW)
