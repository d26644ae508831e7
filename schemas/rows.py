"""Row logic more than one stage needs: the conversation a row shows a model, and the prompt fields every pair
row carries. Stages import these from here, never from each other."""

from __future__ import annotations


def chat(row: dict, system: str | None = None, persona_prompt: str | None = None,
         instruction: str | None = None) -> list[dict[str, str]]:
    """The row's conversation with one system message: the row's (or the spec's) system prompt, then the
    persona prompt for rows with a persona, then a generation instruction (verbalized sampling)."""
    persona = persona_prompt.format(persona=row["persona"]) if persona_prompt and row.get("persona") else None
    sys_text = "\n\n".join(part for part in (row.get("system") or system, persona, instruction) if part)
    head = [{"role": "system", "content": sys_text}] if sys_text else []
    return head + [{"role": m["role"], "content": m["content"]} for m in row["messages"]]


def pair_head(row: dict) -> dict:
    """The prompt's fields every pair row of it carries (pairs, retrieval_pairs, refine, feedback_mine)."""
    return {"prompt_id": row["prompt_id"], "prompt": row["prompt"], "messages": row["messages"],
            "system": row.get("system"), "source": row.get("source"), "persona": row.get("persona"),
            "documents": row.get("documents")}
