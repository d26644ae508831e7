"""load: read prompts from JSONL, JSON arrays, Parquet or a `datasets` dataset saved to disk into prompt rows.

Reads stream (line by line, Parquet row groups, Arrow record batches), so a large file never becomes one Python
list. A malformed row (broken JSON, no prompt, a non-string or empty prompt) is quarantined with the reason and
its source line; the rest of the file goes on.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curate.schemas.records import PROMPT_ROW, PROMPT_ROW_WITH_CANDIDATES, numbered_documents
from curate.schemas.records import prompt_id
from curate.schemas.sources import dig, records
from curate.schemas.validate import prompt_problem, quarantine_table
from curate.stages.base import StageConfig, StageResult, StageSpec, existing_path, fixed


class CandidateSource(BaseModel):
    """Responses that already exist (another model's answers), joined to the prompts by id, as candidates."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: Path
    #: the join key in the answer file; it must equal the prompt file's `id_field` value
    id_field: str
    #: where the response text sits, as a dotted path (`messages.-1.content.answer` for Arena-Hard)
    response_field: str = "response"
    #: the model's name: a fixed string, or read from `model_field`
    model: str | None = None
    model_field: str | None = None

    _exists = field_validator("path")(existing_path)


class TranscriptPair(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    chosen: str = "chosen"
    rejected: str = "rejected"


class ImagePairs(BaseModel):
    """Image preference data: the candidates are images. Layouts:

      pick_a_pic    `caption`, `jpg_0`, `jpg_1` (paths or bytes), `label_0` (1: image 0 preferred, 0: image 1,
                    0.5: a tie, kept with no human choice); `model_0`/`model_1` name the generators when present
      image_reward  `prompt`, `generations` (image paths), `ranking` (one rank per image, 1 = best)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    layout: Literal["pick_a_pic", "image_reward"]
    #: the folder relative image paths are read from (default: the data file's folder)
    folder: Path | None = None

    _exists = field_validator("folder")(existing_path)


DOCUMENTS_PROMPT = ("Answer the user's question using only the documents below. Say so when they do not hold the "
                    "answer.\n\n{documents}")


class Config(StageConfig):
    path: Path
    format: Literal["auto", "jsonl", "json", "parquet", "hf"] = "auto"
    #: the field holding the prompt text (Arena-Hard: `prompt`)
    prompt_field: str = "prompt"
    #: a field holding a list of user turns (MT-Bench: `turns`); the first turn becomes the prompt and the
    #: later turns (which need the model's earlier answers) are kept in `meta`
    turns_field: str | None = None
    #: a field holding a chat as a list of {role, content}; it must end with the user turn to answer
    messages_field: str | None = None
    system_field: str | None = None
    #: the source's own id (kept as `source_id`; `prompt_id` is always a content hash)
    id_field: str | None = None
    #: fields copied into `meta` (JSON); default: every field not mapped above
    meta_fields: list[str] | None = None
    limit: int | None = Field(None, ge=0)
    #: rows per shard: the unit of parallelism and of a stage's output files for every later stage. Large by
    #: default, so pure stages run at columnar speed and a run writes few files; model stages lose nothing to it
    #: (each answer is cached as it arrives, a resume asks for none twice, progress is shown within shards)
    shard_size: int = Field(4096, ge=1)
    #: a field holding the asker's persona or context (kept as `persona`; judges and generation can use it)
    persona_field: str | None = None
    #: personas to cross with every prompt: one prompt row per (prompt, persona), so each user's label is kept
    personas: list[str] | None = None
    #: Anthropic HH-RLHF layout: two transcripts ("\n\nHuman: ... \n\nAssistant: ...") that share the
    #: conversation and differ in the last assistant turn; the conversation becomes the prompt, the two last
    #: turns its candidates, and the human preference is kept in `meta.human_chosen`
    transcripts: TranscriptPair | None = None
    #: chat logs: a field holding a whole conversation (a list of {role, content}, or a Human/Assistant
    #: transcript string); the row keeps every turn in `messages` (ending wherever the log ends), for
    #: `feedback_mine`. The prompt is the first user turn.
    conversation_field: str | None = None
    #: grounded (RAG) prompts: a field holding the retrieved documents (a string, a list of strings, or a list of
    #: objects with `text`/`content`); kept as `documents` and rendered into the system prompt with
    #: `documents_prompt`, so generation, judges and the exported prompt all see the same documents
    documents_field: str | None = None
    documents_prompt: str = DOCUMENTS_PROMPT
    #: existing responses to attach as candidates (joined on `id_field`; each file's answers are held as a
    #: dict keyed by id while loading, so these are side files, not the main stream)
    candidates: list[CandidateSource] = Field(default_factory=list)
    #: image preference data (Pick-a-Pic, ImageReward layouts): each row's images become its candidates, each
    #: carrying the image (path or bytes, and sha256) instead of a response; the human's choice goes to
    #: `meta.human_chosen` as with `transcripts`
    images: ImagePairs | None = None

    _exists = field_validator("path")(existing_path)

    @model_validator(mode="after")
    def _join_key(self):
        if self.candidates and not self.id_field:
            raise ValueError("`candidates` are joined on the prompts' id: set `id_field`")
        if self.candidates and self.transcripts:
            raise ValueError("`transcripts` bring their own two candidates; drop `candidates` or `transcripts`")
        if self.conversation_field and (self.transcripts or self.candidates or self.messages_field):
            raise ValueError("`conversation_field` reads whole chat logs; it does not combine with `transcripts`, "
                             "`candidates` or `messages_field`")
        if self.images and (self.transcripts or self.candidates or self.conversation_field):
            raise ValueError("`images` bring their own candidates; they do not combine with `transcripts`, "
                             "`candidates` or `conversation_field`")
        if "{documents}" not in self.documents_prompt:
            raise ValueError("`documents_prompt` must contain {documents}")
        return self


#: the fields an image layout reads (kept out of `meta`: image bytes do not belong in a JSON column)
IMAGE_FIELDS = {"pick_a_pic": {"caption", "jpg_0", "jpg_1", "label_0", "model_0", "model_1"},
                "image_reward": {"prompt", "generations", "ranking"}}

_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_transcript(text: str) -> list[dict[str, str]] | None:
    """"\n\nHuman: hi\n\nAssistant: hello" -> messages; None when it is not in that layout."""
    parts = _TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2], strict=True)]


def transcript_pair(rec: dict, spec: TranscriptPair) -> tuple[list[dict], list[str], str | None]:
    """(shared conversation, [chosen last turn, rejected last turn], problem)."""
    chats = []
    for key in (spec.chosen, spec.rejected):
        text = rec.get(key)
        chat = parse_transcript(text) if isinstance(text, str) else None
        if not chat or chat[-1]["role"] != "assistant":
            return [], [], f"field {key!r} is not a Human/Assistant transcript ending with an Assistant turn"
        chats.append(chat)
    if chats[0][:-1] != chats[1][:-1]:
        return [], [], "the two transcripts differ before their last Assistant turn"
    return chats[0][:-1], [chats[0][-1]["content"], chats[1][-1]["content"]], None


def image_candidates(rec: dict, spec: ImagePairs, folder: Path) -> tuple[str | None, list[tuple], int | None, str | None]:
    """(prompt, [(image, model)], index of the human's choice or None, problem) for one image-pair record."""
    from curate.schemas.images import image_ref

    if spec.layout == "pick_a_pic":
        prompt, values = rec.get("caption"), [rec.get("jpg_0"), rec.get("jpg_1")]
        models = [rec.get("model_0"), rec.get("model_1")]
        label = rec.get("label_0")
        if label not in (0, 1, 0.5, 0.0, 1.0):
            return None, [], None, f"label_0 is {label!r}, not 1, 0 or 0.5"
        chosen = None if label == 0.5 else (0 if label == 1 else 1)
    else:
        prompt, values, ranking = rec.get("prompt"), rec.get("generations"), rec.get("ranking")
        if not isinstance(values, list) or len(values) < 2:
            return None, [], None, "generations is not a list of two or more images"
        if not (isinstance(ranking, list) and len(ranking) == len(values)
                and all(isinstance(r, int) for r in ranking)):
            return None, [], None, "ranking is not one integer rank per generation"
        best = min(ranking)
        chosen = ranking.index(best) if ranking.count(best) == 1 else None
        models = [None] * len(values)
    if not isinstance(prompt, str) or not prompt.strip():
        return None, [], None, "no prompt (caption) text"
    images = []
    for i, value in enumerate(values):
        ref, problem = image_ref(value, folder)
        if problem:
            return None, [], None, f"image {i}: {problem}"
        images.append((ref, models[i]))
    return prompt, images, chosen, None


def image_candidate(pid: str, i: int, image: dict, model: str | None) -> dict:
    return {"candidate_id": hashlib.sha256(json.dumps([pid, i, image["sha256"]]).encode()).hexdigest()[:16],
            "model": model or "image", "response": None, "finish_reason": None, "n_tokens": None,
            "gen_params": json.dumps({"source": "image", "index": i}), "judgments": [], "image": image}


def conversation(value: Any) -> tuple[list[dict] | None, str | None]:
    """A chat log (message list or Human/Assistant transcript) -> (messages, None) or (None, why not)."""
    if isinstance(value, str):
        chat = parse_transcript(value)
        if chat is None:
            return None, "not a Human/Assistant transcript"
    elif isinstance(value, list) and all(isinstance(m, dict) for m in value):
        chat = value
    else:
        return None, f"conversation is {type(value).__name__}, not a message list or a transcript"
    for i, m in enumerate(chat):
        if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            return None, f"message {i} is not a {{role, content}} turn of system, user or assistant"
    roles = [m["role"] for m in chat if m["role"] != "system"]
    if "user" not in roles or "assistant" not in roles:
        return None, "the conversation has no user turn or no assistant turn"
    return [{"role": m["role"], "content": m["content"]} for m in chat], None


def documents(value: Any) -> tuple[list[str] | None, str | None]:
    """Retrieved documents -> (list of texts, None) or (None, why not)."""
    items = [value] if isinstance(value, (str, dict)) else value
    if not isinstance(items, list) or not items:
        return None, "documents are missing or empty"
    texts = []
    for i, item in enumerate(items):
        text = item if isinstance(item, str) else (item.get("text") or item.get("content")) if isinstance(item, dict) else None
        if not isinstance(text, str) or not text.strip():
            return None, f"document {i} is not text (a string, or an object with text/content)"
        texts.append(text.strip())
    return texts, None


def to_prompt_row(rec: Any, cfg: Config, source: str) -> tuple[dict | None, str | None]:
    """One source record -> (prompt row, None) or (None, why it is unusable)."""
    if not isinstance(rec, dict):
        return None, f"row is {type(rec).__name__}, not an object"
    system = rec.get(cfg.system_field) if cfg.system_field else None
    answers: list[str] = []
    images: list[tuple] = []
    if cfg.images:
        text, images, human, problem = image_candidates(rec, cfg.images, cfg.images.folder or cfg.path.parent)
        if problem:
            return None, problem
        messages = [{"role": "user", "content": text}]
    elif cfg.transcripts:
        messages, answers, problem = transcript_pair(rec, cfg.transcripts)
        if problem:
            return None, problem
    elif cfg.conversation_field:
        messages, problem = conversation(rec.get(cfg.conversation_field))
        if problem:
            return None, f"field {cfg.conversation_field!r}: {problem}"
        if messages[0]["role"] == "system" and system is None:
            system, messages = messages[0]["content"], messages[1:]
    elif cfg.messages_field:
        if cfg.messages_field not in rec:
            return None, f"no prompt: field {cfg.messages_field!r} is missing"
        messages = rec[cfg.messages_field]
        if isinstance(messages, list) and messages and isinstance(messages[0], dict):
            if messages[0].get("role") == "system" and system is None:
                system, messages = messages[0].get("content"), messages[1:]
    elif cfg.turns_field:
        turns = rec.get(cfg.turns_field)
        if not isinstance(turns, list) or not turns:
            return None, f"no prompt: field {cfg.turns_field!r} is missing or not a non-empty list"
        messages = [{"role": "user", "content": turns[0]}]
    else:
        if cfg.prompt_field not in rec or rec[cfg.prompt_field] is None:
            return None, f"no prompt: field {cfg.prompt_field!r} is missing"
        text = rec[cfg.prompt_field]
        if not isinstance(text, str):
            return None, f"prompt field {cfg.prompt_field!r} is {type(text).__name__}, not a string"
        messages = [{"role": "user", "content": text}]
    problem = None if cfg.conversation_field else prompt_problem(messages, system)
    if problem:
        return None, problem
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    docs = None
    if cfg.documents_field:
        docs, problem = documents(rec.get(cfg.documents_field))
        if problem:
            return None, f"field {cfg.documents_field!r}: {problem}"
        system = "\n\n".join(part for part in (system, cfg.documents_prompt.format(documents=numbered_documents(docs))) if part)
    persona = rec.get(cfg.persona_field) if cfg.persona_field else None
    if persona is not None and not isinstance(persona, str):
        persona = json.dumps(persona, ensure_ascii=False, sort_keys=True)
    mapped = {cfg.prompt_field, cfg.turns_field, cfg.messages_field, cfg.system_field, cfg.id_field,
              cfg.persona_field, cfg.conversation_field, cfg.documents_field} | ({cfg.transcripts.chosen, cfg.transcripts.rejected} if cfg.transcripts else set()) | (IMAGE_FIELDS[cfg.images.layout] if cfg.images else set())
    keys = cfg.meta_fields if cfg.meta_fields is not None else [k for k in rec if k not in mapped]
    meta = {k: rec[k] for k in keys if k in rec}
    if cfg.turns_field and len(rec[cfg.turns_field]) > 1:
        meta["later_turns"] = rec[cfg.turns_field][1:]
    source_id = rec.get(cfg.id_field) if cfg.id_field else None
    row = {
        "prompt_id": prompt_id(messages, system, persona),
        "prompt": next(m["content"] for m in messages if m["role"] == "user") if cfg.conversation_field
        else messages[-1]["content"],
        "messages": messages,
        "system": system,
        "source": source,
        "source_id": None if source_id is None else str(source_id),
        "meta": json.dumps(meta, ensure_ascii=False, default=str),
        "persona": persona,
        "documents": docs,
    }
    if images:
        row["candidates"] = [image_candidate(row["prompt_id"], i, im, model) for i, (im, model) in enumerate(images)]
        if human is not None:
            meta["human_chosen"] = row["candidates"][human]["candidate_id"]
        row["meta"] = json.dumps(meta, ensure_ascii=False, default=str)
    if answers:
        row["candidates"] = [transcript_candidate(row["prompt_id"], label, text)
                             for label, text in zip(("chosen", "rejected"), answers, strict=True)]
        row["meta"] = json.dumps(meta | {"human_chosen": row["candidates"][0]["candidate_id"]}, ensure_ascii=False,
                                 default=str)
    return row, None


def transcript_candidate(pid: str, label: str, text: str) -> dict:
    return {"candidate_id": hashlib.sha256(json.dumps([pid, label]).encode()).hexdigest()[:16],
            "model": f"human-labeled:{label}", "response": text, "finish_reason": None, "n_tokens": None,
            "gen_params": json.dumps({"source": "transcript", "human_label": label}), "judgments": []}


def with_personas(row: dict, personas: list[str]) -> Iterator[dict]:
    """One row per persona; the id covers the persona, so each (prompt, persona) keeps its own label."""
    for persona in personas:
        yield row | {"persona": persona, "prompt_id": prompt_id(row["messages"], row["system"], persona)}


def answer_table(src: CandidateSource) -> dict[str, tuple[str, Any]]:
    """join key -> (model, response) for one answer file."""
    table: dict[str, tuple[str, Any]] = {}
    for row in records(src.path):
        rec = row.record
        if row.error or not isinstance(rec, dict) or rec.get(src.id_field) is None:
            continue
        model = src.model or (str(rec.get(src.model_field)) if src.model_field else src.path.stem)
        table[str(rec[src.id_field])] = (model, dig(rec, src.response_field))
    return table


def attach_candidates(row: dict, answers: list[tuple[CandidateSource, dict]]) -> str | None:
    """Add the joined responses to a prompt row as candidates; the reason when one is missing or not text."""
    cands = []
    for i, (src, table) in enumerate(answers):
        got = table.get(row["source_id"])
        if got is None:
            return f"no answer for id {row['source_id']!r} in {src.path.name}"
        model, response = got
        if not isinstance(response, str) or not response.strip():
            return f"answer for id {row['source_id']!r} in {src.path.name} at {src.response_field!r} is not text"
        key = json.dumps([row["prompt_id"], model, i, src.path.name])
        cands.append({"candidate_id": hashlib.sha256(key.encode()).hexdigest()[:16], "model": model,
                      "response": response, "finish_reason": None, "n_tokens": None,
                      "gen_params": json.dumps({"source": src.path.name}), "judgments": []})
    row["candidates"] = cands
    return None


def read(cfg: Config) -> Iterator[StageResult]:
    """Shards of prompt rows, each with the rows it quarantined (and the blank lines it dropped: every line of
    the file is accounted for); `limit` counts usable rows."""
    source = cfg.path.name
    answers = [(src, answer_table(src)) for src in cfg.candidates]
    schema = PROMPT_ROW_WITH_CANDIDATES if answers or cfg.transcripts or cfg.images else PROMPT_ROW
    good: list[dict] = []
    bad: list[Any] = []
    reasons: list[str] = []
    lines: list[int | None] = []
    blanks: list[int] = []
    seen = kept = sources = 0  # sources: source rows kept in this shard (personas expand one into several)

    def flush() -> StageResult:
        nonlocal good, bad, reasons, lines, blanks, seen, sources
        result = StageResult(
            out=pa.Table.from_pylist(good, schema=schema),
            dropped=quarantine_table("load", [""] * len(blanks), ["blank line"] * len(blanks), source=source,
                                     lines=blanks),
            quarantined=quarantine_table("load", bad, reasons, source=source, lines=lines),
            rows_in=seen,
            out_sources=sources,
        )
        good, bad, reasons, lines, blanks, seen, sources = [], [], [], [], [], 0, 0
        return result

    for src_row in records(cfg.path, cfg.format):
        if cfg.limit is not None and kept >= cfg.limit:
            break
        seen += 1
        if src_row.blank:
            blanks.append(src_row.number)
            continue
        rec = src_row.record
        row, error = (None, src_row.error) if src_row.error else to_prompt_row(rec, cfg, source)
        if row is not None and answers:
            error = attach_candidates(row, answers)
            row = None if error else row
        if row is None:
            bad.append(rec)
            reasons.append(error)
            lines.append(src_row.number)
        else:
            good.extend(with_personas(row, cfg.personas) if cfg.personas else [row])
            kept += 1
            sources += 1
        if len(good) >= cfg.shard_size or len(bad) + len(blanks) >= 4096:
            yield flush()
    if seen or not kept:
        yield flush()


STAGE = StageSpec(
    name="load",
    config=Config,
    reads=fixed(),
    writes=lambda cfg: {"prompt_id", "prompt", "messages", "system", "source", "source_id", "meta"}
    | ({"persona"} if cfg.persona_field or cfg.personas else set())
    | ({"documents"} if cfg.documents_field else set())
    | ({"candidates", "candidates.response", "candidates.model", "candidates.candidate_id"}
       if cfg.candidates or cfg.transcripts else set())
    | ({"candidates", "candidates.image", "candidates.model", "candidates.candidate_id"} if cfg.images else set()),
    doc="Read prompts (JSONL, JSON array, Parquet, saved `datasets`) into prompt rows; quarantine malformed rows.",
    source=read,
)
