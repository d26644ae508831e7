"""OpenAssistant message trees: one record is a whole tree, which a flat mapping cannot say.

Every prompter message with assistant replies becomes a prompt row: the conversation from the root down to it,
its replies the candidates (each with its message id), their `rank` (0 = best, among the replies that were
ranked) the layout's rank judgment. Deeper turns make their own rows, so a tree of depth d gives one row per
prompter turn that was answered.
"""

from __future__ import annotations

from typing import Any

from curate.schemas.layouts import Layout, Mapped, label_judgments


def read_tree(spec: Layout, source: str, rec: Any) -> tuple[list[Mapped], str | None]:
    root = rec.get("prompt") if isinstance(rec, dict) else None
    if not isinstance(root, dict):
        return [], "no `prompt` message tree"
    out: list[Mapped] = []
    todo: list[tuple[dict, list[dict]]] = [(root, [])]
    while todo:
        node, history = todo.pop()
        role = {"prompter": "user", "assistant": "assistant"}.get(node.get("role"))
        if role is None or not isinstance(node.get("text"), str):
            return [], f"message {node.get('message_id')!r}: role {node.get('role')!r} or its text is not readable"
        chat = history + [{"role": role, "content": node["text"]}]
        replies = [r for r in node.get("replies") or [] if isinstance(r, dict)]
        if role == "user" and replies:
            if any(r.get("role") != "assistant" or not isinstance(r.get("text"), str) for r in replies):
                return [], f"message {node.get('message_id')!r}: a reply is not an assistant text"
            judgments: list[list[dict]] = [[] for _ in replies]
            for lab in spec.labels:
                got, problem = label_judgments(lab, node, replies, len(replies), source)
                if problem and not problem.startswith("missing"):
                    return [], f"message {node.get('message_id')!r}: label {lab.name!r}: {problem}"
                for mine, new in zip(judgments, got or [[] for _ in replies], strict=True):
                    mine.extend(new)
            out.append(Mapped(messages=chat, system=None, source_id=str(node.get("message_id")),
                              responses=[{"text": r["text"], "model": r.get("model_name"),
                                          "candidate_id": r.get("message_id")} for r in replies],
                              judgments=judgments))
        todo += [(r, chat) for r in reversed(replies)]
    return out, None
