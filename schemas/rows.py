"""Row logic more than one stage needs: the conversation a row shows a model, and the prompt fields every pair
row carries. Stages import these from here, never from each other."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def chat(row: dict, system: str | None = None, persona_prompt: str | None = None,
         instruction: str | None = None) -> list[dict[str, str]]:
    """The row's conversation with one system message: the row's (or the spec's) system prompt, then the
    persona prompt for rows with a persona, then a generation instruction (verbalized sampling)."""
    persona = persona_prompt.format(persona=row["persona"]) if persona_prompt and row.get("persona") else None
    sys_text = "\n\n".join(part for part in (row.get("system") or system, persona, instruction) if part)
    head = [{"role": "system", "content": sys_text}] if sys_text else []
    return head + [{"role": m["role"], "content": m["content"]} for m in row["messages"]]


#: the columns every pair row has, whichever stage made it (pairs, refine, retrieval_pairs, feedback_mine)
PAIR_HEAD = frozenset({"prompt_id", "prompt", "messages", "system", "source", "persona", "documents", "chosen",
                       "rejected", "chosen_model", "rejected_model", "chosen_id", "rejected_id", "judge"})
#: of those, the ones a pair only carries when the prompt rows had them
PAIR_HEAD_CARRIED = {"persona": "persona", "documents": "documents"}


def pair_head(row: dict) -> dict:
    """The prompt's fields every pair row of it carries (pairs, retrieval_pairs, refine, feedback_mine)."""
    return {"prompt_id": row["prompt_id"], "prompt": row["prompt"], "messages": row["messages"],
            "system": row.get("system"), "source": row.get("source"), "persona": row.get("persona"),
            "documents": row.get("documents")}


def swap_sides(row: dict) -> dict:
    """The same pair with chosen and rejected exchanged: every `chosen_X` trades places with `rejected_X` (and
    `chosen` with `rejected`), the margins change sign, and what was written about one order only (the
    rationale, `safer`, `strength`) is cleared, since it no longer holds."""
    out = dict(row)
    for key in row:
        if key == "chosen" or key.startswith("chosen_"):
            other = "rejected" + key.removeprefix("chosen")
            if other in row:
                out[key], out[other] = row[other], row[key]
    for key in ("margin", "ref_margin", "ref_margin_norm"):
        if out.get(key) is not None:
            out[key] = -out[key]
    for key in ("rationale", "rejected_rationale", "strength"):
        if key in out:
            out[key] = None
    if out.get("safer") in ("chosen", "rejected"):
        out["safer"] = "rejected" if out["safer"] == "chosen" else "chosen"
    return out


def content_id(*parts: Any, sort_keys: bool = False) -> str:
    """A 16-hex id from what identifies a thing (the JSON of `parts`): the same parts give the same id in every
    run, shard and worker. Candidates, loaded responses and mined pairs are all named this way."""
    return hashlib.sha256(json.dumps(list(parts), sort_keys=sort_keys).encode()).hexdigest()[:16]


def candidate(candidate_id: str, model: str | None, response: str | None, gen_params: str, *,
              finish_reason: str | None = None, n_tokens: int | None = None, image: dict | None = None,
              judgments: list[dict] | None = None) -> dict:
    """One candidate as schemas.records.CANDIDATE holds it; `gen_params` is the JSON the caller wrote (its bytes
    are part of the stage's output)."""
    return {"candidate_id": candidate_id, "model": model, "response": response, "finish_reason": finish_reason,
            "n_tokens": n_tokens, "gen_params": gen_params, "judgments": list(judgments or []), "image": image}
