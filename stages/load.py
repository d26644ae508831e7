"""load: read prompts, or existing preference data in any published layout, into prompt rows.

Prompts come from JSONL, JSON arrays, Parquet or a `datasets` dataset saved to disk. Existing preference data
names its layout (`layout: trl`, `ultrafeedback`, `pku_saferlhf`, ...: schemas/layouts/) or maps its fields
(`mapping:`): its responses become candidates and its labels judgments named after the source. Several sources
(files, folders of parts, globs, Hub datasets by name) load in one stage with `sources:`; every row keeps its
source, and the manifest accounts for each source apart.

Reads stream (line by line, Parquet row groups, Arrow record batches, Hub datasets streamed), so a large source
never becomes one Python list. A malformed row is quarantined with the reason, its source and its line; the rest
goes on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curate.schemas.layouts import Layout, Mapped, candidate_id
from curate.schemas.layouts import layout as named_layout
from curate.schemas.layouts import reader as layout_reader
from curate.schemas.messages import parse_transcript
from curate.schemas.records import PROMPT_ROW, PROMPT_ROW_WITH_CANDIDATES, numbered_documents, prompt_id
from curate.schemas.rows import candidate, content_id
from curate.schemas.sources import SourceRow, dig, files_of, hub_records, records
from curate.schemas.validate import prompt_problem, quarantine_table
from curate.stages import load_columnar
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
    #: the folder relative image paths are read from (default: the data file's folder); a path that leaves it is
    #: refused (the row is quarantined with the reason)
    folder: Path | None = None
    #: folders an absolute image path may point into (default: none: absolute paths are refused)
    allowed_roots: list[Path] = Field(default_factory=list)

    _exists = field_validator("folder")(existing_path)
    _roots_exist = field_validator("allowed_roots")(lambda v, info: [existing_path(p, info) for p in v])


class Source(BaseModel):
    """One source of a `load` stage: a file, a folder of parts or a glob (`path`), or a Hub dataset (`hf`), read
    as prompts or, with a `layout` or `mapping`, as existing preference data."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: a file, a folder of JSONL/JSON/Parquet parts (an export folder), a saved `datasets` folder, or a glob
    path: str | None = None
    #: a dataset on the Hugging Face Hub by name (`ORG/NAME`), streamed; with its `config`, `split`, `revision`
    hf: str | None = None
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    format: Literal["auto", "jsonl", "json", "parquet", "hf"] = "auto"
    #: a named layout (schemas/layouts/: trl, ultrafeedback, helpsteer2, pku_saferlhf, nectar, oasst, ...)
    layout: str | None = None
    #: or a layout of your own: which fields hold the prompt, the responses and the labels (schemas/layouts.py)
    mapping: Layout | None = None
    #: the source's name on every row, in the accounting, the judges of its labels and the card (default: the
    #: Hub name, or the file or folder name)
    source: str | None = None
    #: the source's license, for the dataset card (`curate publish` lists every source with it)
    license: str | None = None
    #: at most this many usable rows of this source
    limit: int | None = Field(None, ge=0)
    #: keep this share of the source's rows (a seeded, reproducible sample; the rest are dropped with a reason)
    weight: float = Field(1.0, gt=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _one_place(self):
        if (self.path is None) == (self.hf is None):
            raise ValueError("a source is a `path` or an `hf` dataset name (one of them)")
        if self.layout is not None and self.mapping is not None:
            raise ValueError("give a source's `layout` by name or its `mapping`, not both")
        if self.layout is not None:
            named_layout(self.layout)  # an unknown name fails here, naming the layouts there are
        return self

    @property
    def name(self) -> str:
        if self.source:
            return self.source
        return self.hf if self.hf else Path(self.path).name

    @property
    def shape(self) -> Layout | None:
        return self.mapping or (named_layout(self.layout) if self.layout else None)


def resolve_source(src: Source, base: Path | None) -> Source:
    """The source with its path made absolute (against the YAML's folder); a path that names nothing fails."""
    if src.path is None:
        return src
    path = Path(src.path).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    if not files_of(path):
        raise ValueError(f"no file found at {path}" + (" (a folder with no JSONL, JSON or Parquet part)"
                                                       if path.is_dir() else ""))
    src = src.model_copy(update={"path": str(path.resolve()) if path.exists() else str(path)})
    check_first_row(src)
    return src


def check_first_row(src: Source) -> None:
    """The layout's fields against the source's first row, before anything runs: a layout named for the wrong
    data fails with the fields it looked for and the row's own (later rows are checked as they are read)."""
    shape = src.shape
    if shape is None or shape.reader or src.path is None:
        return
    first = files_of(src.path)[0]
    try:
        row = next((r for r in records(first, src.format if first.is_file() else "hf") if not r.blank), None)
    except (OSError, ValueError):
        return  # an unreadable file is the reader's to report, row by row
    if row is None or row.error or not isinstance(row.record, dict):
        return
    # the responses and the labels every row must have (a prompt may be implicit: TRL's conversations)
    needed = [shape.each] if shape.each else list(shape.responses or [])
    needed += [lab.field for lab in shape.labels if lab.field and not lab.optional]
    missing = [f for f in needed if dig(row.record, f) is None]
    if missing:
        raise ValueError(f"layout {shape.name!r} reads {', '.join(map(repr, missing))}, which row {row.number} of "
                         f"{first.name} does not have (its fields: {', '.join(list(row.record)[:12])})")


DOCUMENTS_PROMPT = ("Answer the user's question using only the documents below. Say so when they do not hold the "
                    "answer.\n\n{documents}")


class Config(StageConfig):
    #: a prompt file (JSONL, JSON array, Parquet, a saved `datasets` folder); or, for existing preference data, a
    #: file, folder of parts or glob read with `layout`/`mapping` (one source: the fields of `Source` below work
    #: here too; several: `sources`)
    path: Path | None = None
    hf: str | None = None
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    layout: str | None = None
    mapping: Layout | None = None
    source: str | None = None
    #: several sources in one stage, each with its own layout, name, limit and weight
    sources: list[Source] = Field(default_factory=list)
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

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value: Any, info) -> Any:
        """A prompt file must exist; a layout's `path` may also be a folder of parts or a glob (checked with
        the sources)."""
        if value is None or any(ch in str(value) for ch in "*?["):
            return value
        return existing_path(value, info)

    @field_validator("sources", mode="after")
    @classmethod
    def _sources(cls, value: list[Source], info) -> list[Source]:
        base = (info.context or {}).get("base_dir")
        out = []
        for i, src in enumerate(value):
            try:
                out.append(resolve_source(src, base))
            except ValueError as exc:
                raise ValueError(f"[{i}] ({src.name}): {exc}") from None
        return out

    @model_validator(mode="before")
    @classmethod
    def _path_or_sources(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("sources") and (data.get("path") or data.get("hf")):
            raise ValueError("give `sources:` or one `path`/`hf`, not both")
        if isinstance(data, dict) and not data.get("sources") and not data.get("path") and not data.get("hf"):
            raise ValueError("`load` needs a `path`, an `hf` dataset name, or `sources`")
        return data

    def all_sources(self, base: Path | None = None) -> list[Source]:
        """The stage's sources: `sources`, or the one source its own fields describe (None for a plain prompt
        file, which the prompt reader handles)."""
        if self.sources:  # `limit` (curate run --limit) caps each source
            return [src if self.limit is None else src.model_copy(update={"limit": min(
                n for n in (src.limit, self.limit) if n is not None)}) for src in self.sources]
        if self.path is not None and self.layout is None and self.mapping is None and self.hf is None:
            return []
        fields = dict(path=None if self.path is None else str(self.path), hf=self.hf, config=self.config,
                      split=self.split, revision=self.revision, format=self.format, layout=self.layout,
                      mapping=self.mapping, source=self.source, limit=self.limit)
        return [resolve_source(Source(**fields), base)]

    @property
    def existing_data(self) -> bool:
        return any(src.shape is not None for src in self.all_sources())

    @model_validator(mode="after")
    def _join_key(self):
        if (self.layout or self.mapping or self.sources or self.hf) and (
                self.transcripts or self.candidates or self.images or self.conversation_field or self.personas):
            raise ValueError("`layout`/`mapping`/`sources`/`hf` read whole sources; `transcripts`, `candidates`, "
                             "`images`, `conversation_field` and `personas` belong to a prompt file")
        self.all_sources()  # a layout source's path (a folder, a glob) must name files
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
        ref, problem = image_ref(value, folder, spec.allowed_roots)
        if problem:
            return None, [], None, f"image {i}: {problem}"
        images.append((ref, models[i]))
    return prompt, images, chosen, None


def image_candidate(pid: str, i: int, image: dict, model: str | None) -> dict:
    return candidate(content_id(pid, i, image["sha256"]), model or "image", None,
                     json.dumps({"source": "image", "index": i}), image=image)


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


class Prompt(NamedTuple):
    """What a layout reader takes from one record: the conversation up to the prompt (without `lead`, a leading
    system message, which becomes the row's system prompt unless a `system_field` gave one), and the answers
    (transcript pairs) or images (image pairs) it carries."""

    messages: list[dict]
    lead: dict | None = None
    answers: list[str] = []
    images: list[tuple] = []
    human: int | None = None


PromptReader = Callable[[dict, "Config"], "tuple[Prompt | None, str | None]"]


def image_prompt(rec: dict, cfg: Config) -> tuple[Prompt | None, str | None]:
    text, images, human, problem = image_candidates(rec, cfg.images, cfg.images.folder or cfg.path.parent)
    return (None, problem) if problem else (Prompt([{"role": "user", "content": text}], images=images, human=human), None)


def transcript_prompt(rec: dict, cfg: Config) -> tuple[Prompt | None, str | None]:
    messages, answers, problem = transcript_pair(rec, cfg.transcripts)
    return (None, problem) if problem else (Prompt(messages, answers=answers), None)


def conversation_prompt(rec: dict, cfg: Config) -> tuple[Prompt | None, str | None]:
    messages, problem = conversation(rec.get(cfg.conversation_field))
    if problem:
        return None, f"field {cfg.conversation_field!r}: {problem}"
    if messages[0]["role"] == "system":
        return Prompt(messages[1:], lead=messages[0]), None
    return Prompt(messages), None


def messages_prompt(rec: dict, cfg: Config) -> tuple[Prompt | None, str | None]:
    if cfg.messages_field not in rec:
        return None, f"no prompt: field {cfg.messages_field!r} is missing"
    messages = rec[cfg.messages_field]
    if isinstance(messages, list) and messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
        return Prompt(messages[1:], lead=messages[0]), None
    return Prompt(messages), None


def turns_prompt(rec: dict, cfg: Config) -> tuple[Prompt | None, str | None]:
    turns = rec.get(cfg.turns_field)
    if not isinstance(turns, list) or not turns:
        return None, f"no prompt: field {cfg.turns_field!r} is missing or not a non-empty list"
    return Prompt([{"role": "user", "content": turns[0]}]), None


def field_prompt(rec: dict, cfg: Config) -> tuple[Prompt | None, str | None]:
    if cfg.prompt_field not in rec or rec[cfg.prompt_field] is None:
        return None, f"no prompt: field {cfg.prompt_field!r} is missing"
    text = rec[cfg.prompt_field]
    if not isinstance(text, str):
        return None, f"prompt field {cfg.prompt_field!r} is {type(text).__name__}, not a string"
    return Prompt([{"role": "user", "content": text}]), None


def prompt_reader(cfg: Config) -> PromptReader:
    """The reader of the config's record layout (image pairs, transcripts, a conversation, messages, turns, a
    prompt field), chosen once."""
    if cfg.images:
        return image_prompt
    if cfg.transcripts:
        return transcript_prompt
    if cfg.conversation_field:
        return conversation_prompt
    if cfg.messages_field:
        return messages_prompt
    if cfg.turns_field:
        return turns_prompt
    return field_prompt


def to_prompt_row(rec: Any, cfg: Config, source: str, reader: PromptReader | None = None) -> tuple[dict | None, str | None]:
    """One source record -> (prompt row, None) or (None, why it is unusable); `reader`: prompt_reader(cfg)."""
    if not isinstance(rec, dict):
        return None, f"row is {type(rec).__name__}, not an object"
    system = rec.get(cfg.system_field) if cfg.system_field else None
    got, problem = (reader or prompt_reader(cfg))(rec, cfg)
    if problem:
        return None, problem
    messages, answers, images, human = got.messages, got.answers, got.images, got.human
    if got.lead is not None:
        if system is None:
            system = got.lead.get("content")
        else:
            messages = [got.lead, *messages]
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
    return candidate(content_id(pid, label), f"human-labeled:{label}", text,
                     json.dumps({"source": "transcript", "human_label": label}))


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
        cands.append(candidate(content_id(row["prompt_id"], model, i, src.path.name), model, response,
                               json.dumps({"source": src.path.name})))
    row["candidates"] = cands
    return None


def read(cfg: Config) -> Iterator[StageResult]:
    """Shards of prompt rows: from one prompt file, or from the stage's sources (existing data, Hub datasets,
    several files)."""
    sources = cfg.all_sources()
    if len(sources) == 1 and (found := load_columnar.applies(sources[0])) is not None:  # TRL pairs, on columns
        yield from load_columnar.shards(found, sources[0], cfg.shard_size)
        return
    yield from (read_sources(cfg, sources) if sources else read_prompts(cfg))


class Shard:
    """One shard's rows being collected, with every input row's fate and each source's counts."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.good: list[dict] = []
        self.side = {"dropped": ([], [], [], []), "quarantined": ([], [], [], [])}  # records, reasons, lines, sources
        self.seen = self.kept = 0
        self.stats: dict[str, float] = {}

    def count(self, source: str, what: str, n: int = 1) -> None:
        key = f"source:{source}:{what}"
        self.stats[key] = self.stats.get(key, 0) + n

    def put(self, kind: str, source: str, label: str, rec: Any, reason: str, line: int | None) -> None:
        for column, value in zip(self.side[kind], (rec, reason, line, label), strict=True):
            column.append(value)
        self.count(source, kind)

    def flush(self) -> StageResult:
        (dr, dre, dl, ds), (qr, qre, ql, qs) = self.side["dropped"], self.side["quarantined"]
        result = StageResult(out=pa.Table.from_pylist(self.good, schema=self.schema),
                             dropped=quarantine_table(dr, dre, source=ds, lines=dl),
                             quarantined=quarantine_table(qr, qre, source=qs, lines=ql),
                             rows_in=self.seen, out_sources=self.kept, stats=self.stats)
        self.__init__(self.schema)
        return result


def source_rows(src: Source) -> Iterator[tuple[str, SourceRow]]:
    """(where, row) for every row of a source; `where` names the file within a source of several files."""
    if src.hf is not None:
        for row in hub_records(src.hf, src.config, src.split, src.revision):
            yield src.name, row
        return
    files = files_of(src.path)
    for path in files:
        where = src.name if len(files) == 1 else f"{src.name}/{path.name}"
        for row in records(path, src.format if len(files) == 1 else "auto"):
            yield where, row


def sampled(src: Source, where: str, number: int) -> bool:
    """Whether a row is in the source's `weight` sample: a hash of the seed, the file and the row number, so the
    sample does not depend on shards or on the other sources."""
    h = hashlib.sha256(f"{src.seed}:{where}:{number}".encode()).hexdigest()[:8]
    return int(h, 16) / 0x100000000 < src.weight


def mapped_row(m: Mapped, rec: dict, shape: Layout, source: str, where: str, number: int) -> dict:
    """A prompt row from what a layout read: the responses as candidates carrying the source's judgments."""
    pid = prompt_id(m.messages, m.system)
    ids = [r["candidate_id"] or candidate_id(pid, source, i, r["text"]) for i, r in enumerate(m.responses)]
    fields = shape.fields()
    extra = {k: v for k, v in rec.items() if k not in fields} if isinstance(rec, dict) else {}
    cands = []
    for i, (resp, judged) in enumerate(zip(m.responses, m.judgments, strict=True)):
        params = {"source": source, "layout": shape.name, "index": i, "row": number, "file": where}
        cands.append(candidate(ids[i], resp["model"], resp["text"],
                               json.dumps(params | ({"fields": extra} if shape.group else {}), ensure_ascii=False,
                                          default=str),
                               judgments=[j | {"opponent": None if j["opponent"] is None else ids[j["opponent"]]}
                                          for j in judged]))
    return {"prompt_id": pid, "prompt": m.messages[-1]["content"], "messages": m.messages, "system": m.system,
            "source": source, "source_id": m.source_id, "persona": None, "documents": None,
            "meta": json.dumps({} if shape.group else extra, ensure_ascii=False, default=str), "candidates": cands}


def regroup(pending: dict, row: dict, source: str) -> bool:
    """Add a one-response row to the pending row of the same prompt (grouped layouts: HelpSteer2, KTO); False
    when it is another prompt. A response the source gave no id gets one by its place in the group."""
    if pending["prompt_id"] != row["prompt_id"]:
        return False
    (cand,) = row["candidates"]
    position = len(pending["candidates"])
    if json.loads(cand["gen_params"])["index"] == 0 and cand["candidate_id"] == candidate_id(
            row["prompt_id"], source, 0, cand["response"]):
        cand = cand | {"candidate_id": candidate_id(row["prompt_id"], source, position, cand["response"])}
    pending["candidates"].append(cand)
    return True


def read_sources(cfg: Config, sources: list[Source]) -> Iterator[StageResult]:
    """Every source in turn, each row becoming a prompt row (a layout's rows carry candidates and judgments);
    a grouped layout's rows of one prompt become one row, never split across shards."""
    schema = PROMPT_ROW_WITH_CANDIDATES if any(src.shape for src in sources) else PROMPT_ROW
    shard = Shard(schema)
    for src in sources:
        name, shape = src.name, src.shape
        convert = layout_reader(shape, name) if shape else None
        reader = None if shape else prompt_reader(cfg)
        usable, pending, pending_rows = 0, None, 0
        for where, row in source_rows(src):
            if src.limit is not None and usable >= src.limit:
                break
            shard.seen += 1
            shard.count(name, "in")
            if row.blank:
                shard.put("dropped", name, where, "", "blank line", row.number)
                continue
            if src.weight < 1 and not sampled(src, where, row.number):
                shard.put("dropped", name, where, row.record, f"not in the source's sample (weight {src.weight:g})",
                          row.number)
                continue
            if row.error:
                shard.put("quarantined", name, where, row.record, row.error, row.number)
                continue
            if shape is None:
                got, error = to_prompt_row(row.record, cfg, name, reader)
                rows = [] if got is None else [got]
            else:
                mapped, error = convert(row.record)
                rows = [mapped_row(m, row.record, shape, name, where, row.number) for m in mapped]
            if error:
                shard.put("quarantined", name, where, row.record, error, row.number)
                continue
            usable += 1
            shard.count(name, "out")
            if shape is not None and shape.group:
                if pending is not None and regroup(pending, rows[0], name):
                    pending_rows += 1
                    continue
                if pending is not None:
                    shard.good.append(pending)
                    shard.kept += pending_rows
                pending, pending_rows = rows[0], 1
            else:
                shard.good.extend(rows)
                shard.kept += 1
            if len(shard.good) >= cfg.shard_size or len(shard.side["quarantined"][0]) >= 4096:
                carry = pending_rows if pending is not None else 0  # a pending group's rows count in its shard
                shard.seen -= carry
                yield shard.flush()
                shard.seen += carry
        if pending is not None:
            shard.good.append(pending)
            shard.kept += pending_rows
    yield shard.flush()


def read_prompts(cfg: Config) -> Iterator[StageResult]:
    """Shards of prompt rows from one prompt file, each with the rows it quarantined (and the blank lines it
    dropped: every line of the file is accounted for); `limit` counts usable rows."""
    source = cfg.path.name
    answers = [(src, answer_table(src)) for src in cfg.candidates]
    schema = PROMPT_ROW_WITH_CANDIDATES if answers or cfg.transcripts or cfg.images else PROMPT_ROW
    good: list[dict] = []
    bad: list[Any] = []
    reasons: list[str] = []
    lines: list[int | None] = []
    blanks: list[int] = []
    seen = kept = sources = 0  # sources: source rows kept in this shard (personas expand one into several)
    reader = prompt_reader(cfg)

    def flush() -> StageResult:
        nonlocal good, bad, reasons, lines, blanks, seen, sources
        result = StageResult(
            out=pa.Table.from_pylist(good, schema=schema),
            dropped=quarantine_table([""] * len(blanks), ["blank line"] * len(blanks), source=source,
                                     lines=blanks),
            quarantined=quarantine_table(bad, reasons, source=source, lines=lines),
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
        row, error = (None, src_row.error) if src_row.error else to_prompt_row(rec, cfg, source, reader)
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
    | ({"candidates", "candidates.response", "candidates.model", "candidates.candidate_id", "candidates.judgments",
        "candidates.judgments.score"} if cfg.existing_data else set())
    | ({"candidates.judgments.strength"} if any(lab.type == "strength" for src in cfg.all_sources() if src.shape
                                                 for lab in src.shape.labels) else set())
    | ({"persona"} if cfg.persona_field or cfg.personas else set())
    | ({"documents"} if cfg.documents_field else set())
    | ({"candidates", "candidates.response", "candidates.model", "candidates.candidate_id"}
       if cfg.candidates or cfg.transcripts else set())
    | ({"candidates", "candidates.image", "candidates.model", "candidates.candidate_id"} if cfg.images else set()),
    doc="Read prompts (JSONL, JSON array, Parquet, saved `datasets`), or existing preference data in a named layout "
    "or a mapping (labels become judgments), from files, folders, globs and Hub datasets; several sources at once; "
    "quarantine malformed rows.",
    source=read,
)
