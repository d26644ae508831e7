"""Row logic the judging stages share (`judge` and `debate`; `curate judge-eval` builds the same items): what a
judge is shown of a row (the question, the template's extra fields), every pair of a row's candidates as
pairwise items, and how the judgments go back onto the candidates. Not a stage: stages import it, never each
other."""

from __future__ import annotations

import json
from itertools import combinations

import pyarrow as pa

from schemas.records import PROMPT_ROW_WITH_CANDIDATES
from schemas.validate import quarantine_table
from stages.base import StageResult


def _meta_value(row: dict, key: str | None) -> str | None:
    if key is None:
        return None
    value = json.loads(row.get("meta") or "{}").get(key)
    if isinstance(value, list):  # MT-Bench's reference is a list per turn: the first turn's
        value = value[0] if value else None
    return None if value is None else str(value)


def question(row: dict, cfg) -> str:
    if cfg.question == "last_turn" or len(row.get("messages") or []) < 2:
        return row["prompt"]
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in row["messages"])


def extras(row: dict, cfg) -> dict:
    """The template fields besides the answers: reference answer, rubric, and the user's persona/context."""
    context = _meta_value(row, cfg.context_key) if cfg.context_key else row.get("persona")
    return {"reference": _meta_value(row, cfg.reference_key), "rubric": cfg.rubric_text(), "context": context,
            "documents": row.get("documents")}


def candidate_pairs(rows: list[dict], cfg) -> tuple[list[tuple], list[tuple[int, int, int]]]:
    """Every pair of each row's candidates as pairwise items, and where each came from (row, a, b)."""
    items, where = [], []
    for r, row in enumerate(rows):
        cands = row["candidates"] or []
        for a, b in combinations(range(len(cands)), 2):
            items.append((question(row, cfg), cands[a]["response"], cands[b]["response"],
                          cands[a]["candidate_id"], cands[b]["candidate_id"], extras(row, cfg)))
            where.append((r, a, b))
    return items, where


def settle_pairs(rows: list[dict], where: list[tuple[int, int, int]], results: list, stage: str,
                 failed: dict[int, list[str]] | None = None) -> StageResult:
    """Append each pair's judgments to its two candidates; rows with a failed call are quarantined whole."""
    failed = {} if failed is None else failed
    for (r, a, b), res in zip(where, results, strict=True):
        if isinstance(res, tuple):
            for c, js in ((a, res[0]), (b, res[1])):
                cand = rows[r]["candidates"][c]
                cand["judgments"] = list(cand.get("judgments") or []) + js
        else:
            failed.setdefault(r, []).append(f"candidates {a} vs {b}: {res.error}")
    return finish(rows, failed, stage)


def finish(rows: list[dict], failed: dict[int, list[str]], stage: str) -> StageResult:
    good = [row for r, row in enumerate(rows) if r not in failed]
    bad = [rows[r] for r in sorted(failed)]
    return StageResult(
        out=pa.Table.from_pylist(good, schema=PROMPT_ROW_WITH_CANDIDATES),
        quarantined=quarantine_table(stage, bad, [f"{stage} call failed: " + "; ".join(failed[r]) for r in sorted(failed)]),
    )
