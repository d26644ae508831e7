"""Conversations as sources write them, read into curate's messages ([{role, content}]) without rewriting text.

Sources spell a turn four ways: OpenAI's {role, content}; ShareGPT's {from, value} (human, gpt, system);
content as a list of typed parts ([{type: text, text | value}], LLaMA-Factory v1, OpenAI); and Anthropic's
Human/Assistant transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ..."). A turn that is none of these, or a
part that is not text, is a problem with a reason, never skipped.
"""

from __future__ import annotations

import re
from typing import Any

ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
         "model": "assistant", "system": "system", "prompter": "user"}
_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_transcript(text: str) -> list[dict[str, str]] | None:
    """"\\n\\nHuman: hi\\n\\nAssistant: hello" -> messages; None when it is not in that layout."""
    parts = _TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2], strict=True)]


def turn(value: Any) -> tuple[dict[str, str] | None, str | None]:
    """One turn -> ({role, content}, None) or (None, why not)."""
    if not isinstance(value, dict):
        return None, f"a turn is {type(value).__name__}, not an object"
    role = value.get("role", value.get("from"))
    content = value.get("content", value.get("value"))
    if not isinstance(role, str) or role.lower() not in ROLES:
        return None, f"role {role!r} is not one of {', '.join(sorted(set(ROLES)))}"
    if isinstance(content, list):
        texts = []
        for part in content:
            text = part.get("text", part.get("value")) if isinstance(part, dict) else None
            if not isinstance(part, dict) or part.get("type", "text") != "text" or not isinstance(text, str):
                return None, f"content part {part!r:.60} is not text"
            texts.append(text)
        content = "".join(texts)
    if not isinstance(content, str):
        return None, f"content is {type(content).__name__}, not text"
    return {"role": ROLES[role.lower()], "content": content}, None


def as_messages(value: Any) -> tuple[list[dict[str, str]] | None, str | None]:
    """A prompt as a source writes it (text, transcript, one turn, a list of turns) -> (messages, None) or
    (None, why not). Plain text is one user turn."""
    if isinstance(value, str):
        chat = parse_transcript(value)
        if chat and chat[-1] == {"role": "assistant", "content": ""}:  # "...\n\nAssistant:" leaves the slot open
            chat = chat[:-1]
        return chat or [{"role": "user", "content": value}], None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        return None, f"is {type(value).__name__}, not text or a non-empty list of turns"
    out = []
    for i, item in enumerate(value):
        got, problem = turn(item)
        if problem:
            return None, f"turn {i}: {problem}"
        out.append(got)
    return out, None


def split_response(value: Any) -> tuple[str | None, list[dict[str, str]] | None, str | None]:
    """A response as a source writes it -> (its text, the conversation before it or None, problem).

    Text is the response itself (a Human/Assistant transcript: its last Assistant turn, the rest before it); a
    turn or a list of turns must end with the assistant's."""
    if value is None:
        return None, None, "missing"
    if isinstance(value, str):
        chat = parse_transcript(value)
        if chat is None:
            return value, None, None
    else:
        chat, problem = as_messages(value)
        if problem:
            return None, None, problem
    if chat[-1]["role"] != "assistant":
        return None, None, f"the last turn is the {chat[-1]['role']}'s, not the assistant's"
    return chat[-1]["content"], (chat[:-1] or None), None
