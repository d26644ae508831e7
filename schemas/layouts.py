"""Published preference layouts as data: which fields hold the prompt, the responses and the labels.

A layout is a small declarative mapping (`Layout`), one YAML file per named layout in `schemas/layouts/`
(`trl.yaml`, `ultrafeedback.yaml`, ...): adding a layout is adding a file. A pipeline names one (`layout: trl`)
or writes its own mapping inline (`mapping: {prompt: question, responses: [a, b], labels: [...]}`). Layouts that
a mapping cannot say (OpenAssistant's reply trees) name a Python reader in `reader:`.

Every record becomes one prompt row whose candidates are the responses, and every label of the source becomes a
judgment on those candidates, named after the source (`source:ultrafeedback/helpfulness`), so `pairs`, `rank`,
`jury` and `judge-eval` use them beside new judges:

  choice    one response wins (a fixed position, an index, a name such as Arena's `model_a`), or a tie:
            kind `pairwise` (safety choices: kind `safety`), score 1 for the winner, 0 for the other, 0.5 each in
            a tie; `pairs` with its defaults then makes exactly the source's pair
  rating    a number per response (UltraFeedback's aspects, HelpSteer2's attributes, a TRL export's scores):
            kind `pointwise`, the number as it is (a `range` outside which the row is quarantined), with the
            source's rationale as feedback
  rank      a rank per response (Nectar, OpenAssistant; `best` is the best rank's value): kind `rank`, score
            n - (rank - best); a rank list with gaps, repeats or holes is quarantined
  strength  a signed strength between two responses (HelpSteer2-Preference, -3..3): kind `strength`, winner 1 /
            loser 0 (0.5 each at 0), and the strength itself in the judgment's `strength`
  flag      a yes/no per response (PKU-SafeRLHF's `is_response_0_safe`, KTO's `label`): kind `pointwise` (or
            `safety`), score 1 or 0

Bytes are never rewritten: a value of the wrong type, an index out of range, a tie where the layout has none is
the row's quarantine reason, never a guess.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.schemas.messages import as_messages, split_response
from curate.schemas.rows import content_id
from curate.schemas.sources import dig

LAYOUT_DIR = Path(__file__).parent / "layouts"
MISSING = object()


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    #: the label's name: its judge is `source:<source>/<name>`, unless `judge_field` names one per row
    name: str
    type: Literal["choice", "rating", "rank", "strength", "flag"]
    #: the judgment kind (default by type: choice pairwise, rating and flag pointwise, rank rank, strength strength)
    kind: Literal["pointwise", "pairwise", "rank", "strength", "safety"] | None = None
    aspect: str = "overall"
    #: choice and strength: the row's field holding the label (absent: `winner` is fixed)
    field: str | None = None
    #: choice: the winning response's position when the layout fixes it (chosen/rejected layouts: 0)
    winner: int | None = None
    #: choice: a raw value (as text) -> the winning position, or "tie"; without it the value is the position
    values: dict[str, int | Literal["tie"]] | None = None
    #: rating, rank, flag: the value's path inside each response item (list layouts), or one path per response
    per_response: str | list[str] | None = None
    #: rating: the source's rationale (same addressing as per_response)
    feedback: str | list[str] | None = None
    #: rating: the allowed range; a value outside it quarantines the row
    range: tuple[float, float] | None = None
    #: rating: numbers written as text ("4": UltraFeedback's ratings) are read as numbers
    numeric_text: bool = False
    #: rating: values that mean "no rating" for that response (UltraFeedback's "N/A"): it gets no judgment
    na: list[str] = Field(default_factory=list)
    #: rank: the best rank's value (Nectar 1, OpenAssistant 0)
    best: int = 1
    #: strength: which position a positive value favours (HelpSteer2-Preference: 1, the second response)
    positive: int = 1
    #: a field naming the judge per row (curate's own exports keep it in `judge`)
    judge_field: str | None = None
    #: a row without this label is fine (it gets no judgment from it); otherwise the row is quarantined
    optional: bool = False
    #: use this label only when no other label of the layout gave the row a judgment
    fallback: bool = False

    @property
    def judgment_kind(self) -> str:
        return self.kind or {"choice": "pairwise", "rating": "pointwise", "rank": "rank", "strength": "strength",
                             "flag": "pointwise"}[self.type]

    @model_validator(mode="after")
    def _addressing(self):
        if self.type in ("rating", "rank", "flag") and self.per_response is None:
            raise ValueError(f"a {self.type} label needs `per_response` (where each response's value is)")
        if self.type == "choice" and self.field is None and self.winner is None:
            raise ValueError("a choice label needs `field` (where the choice is) or a fixed `winner`")
        if self.type == "strength" and self.field is None:
            raise ValueError("a strength label needs `field`")
        return self


class Layout(BaseModel):
    """Where a record's prompt, responses and labels are. Paths are dotted (`messages.-1.content`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = "mapping"
    doc: str = ""
    #: the prompt: a string, a message list ({role, content} or ShareGPT's {from, value}), or a Human/Assistant
    #: transcript; absent: the shared beginning of the responses' conversations (TRL's implicit prompt)
    prompt: str | list[str] | None = None
    #: Alpaca-style input: appended to a text prompt after a blank line when it is not empty (PandaLM, Alpaca)
    input: str | None = None
    #: a system prompt field (a system message at the head of the prompt's messages is used too)
    system: str | None = None
    #: the source's own row id (kept as `source_id`)
    id: str | None = None
    #: the responses, one path each (`[chosen, rejected]`, `[response_0, response_1]`); each a string, a message,
    #: or a whole conversation ending with the assistant's turn
    responses: list[str] | None = None
    #: or: a list field holding the responses (`completions`), with the text's path inside each item
    each: str | None = None
    text: str = "response"
    #: the model of each response: a path inside each item (`each` layouts), or one path per response
    model: str | list[str] | None = None
    #: each response's own candidate id, where the source keeps one (curate's exports: chosen_id, rejected_id)
    candidate_id: list[str] | None = None
    #: one response per record (HelpSteer2, KTO): consecutive records with the same prompt become one prompt row
    group: bool = False
    #: a record with fewer responses than this is quarantined
    min_responses: int = Field(2, ge=1)
    labels: list[Label] = Field(default_factory=list)
    #: `module:function` for a layout a mapping cannot say: record -> list of (row parts, problem)
    reader: str | None = None

    @model_validator(mode="after")
    def _responses(self):
        if self.reader is None and (self.responses is None) == (self.each is None):
            raise ValueError("a layout names its responses with `responses: [paths]` or `each: list field`")
        if self.group and (self.responses is None or len(self.responses) != 1):
            raise ValueError("a grouped layout (one response per record) names exactly one response path")
        return self

    def fields(self) -> set[str]:
        """The top-level fields this layout reads (the rest go to `meta`)."""
        paths = [self.prompt, self.input, self.system, self.id, self.each, *(self.responses or []), *(self.candidate_id or [])]
        paths += self.prompt if isinstance(self.prompt, list) else []
        paths += self.model if isinstance(self.model, list) else []
        for lab in self.labels:
            paths += [lab.field, lab.judge_field]
            if self.each is None:
                for p in (lab.per_response, lab.feedback):
                    paths += p if isinstance(p, list) else [p]
        return {p.split(".")[0] for p in paths if isinstance(p, str)}


@functools.lru_cache(maxsize=None)
def named() -> dict[str, Path]:
    """Every named layout: its YAML file in schemas/layouts/."""
    return {p.stem: p for p in sorted(LAYOUT_DIR.glob("*.yaml"))}


@functools.lru_cache(maxsize=None)
def layout(name: str) -> Layout:
    files = named()
    if name not in files:
        raise ValueError(f"unknown layout {name!r}; one of {', '.join(files)} (or write a `mapping:`)")
    return Layout.model_validate({"name": name, **yaml.safe_load(files[name].read_text())})


class Mapped(BaseModel):
    """What one record says: the conversation to answer, and the responses with their labels."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    messages: list[dict]
    system: str | None
    source_id: str | None
    responses: list[dict]  # {text, model, candidate_id (or None)}
    judgments: list[list[dict]]  # per response


def reader(spec: Layout, source: str) -> Callable[[dict], tuple[list[Mapped], str | None]]:
    """record -> ([Mapped], None) or ([], why the record is unusable), for one source (its labels' judges are
    `source:<source>/<label>`)."""
    if spec.reader:
        module, _, fn = spec.reader.partition(":")
        return functools.partial(getattr(importlib.import_module(module), fn), spec, source)
    return functools.partial(map_record, spec, source)


def map_record(spec: Layout, source: str, rec: Any) -> tuple[list[Mapped], str | None]:
    if not isinstance(rec, dict):
        return [], f"row is {type(rec).__name__}, not an object"
    if spec.each is not None:
        items = dig(rec, spec.each)
        if not isinstance(items, list):
            return [], f"field {spec.each!r} is not a list of responses"
        raw = [dig(item, spec.text) if isinstance(item, dict) else MISSING for item in items]
        where = [f"{spec.each}.{i}.{spec.text}" for i in range(len(items))]
    else:
        items = [rec] * len(spec.responses)
        raw = [dig(rec, p) for p in spec.responses]
        where = list(spec.responses)
    prompt_value = first_present(rec, spec.prompt)
    extra = dig(rec, spec.input) if spec.input else None
    if isinstance(prompt_value, str) and isinstance(extra, str) and extra.strip():
        prompt_value = f"{prompt_value}\n\n{extra}"
    prompt, problem = (as_messages(prompt_value) if prompt_value is not None else (None, None))
    if problem:
        return [], f"prompt field {spec.prompt!r}: {problem}"
    texts, prefixes = [], []
    for path, value in zip(where, raw, strict=True):
        text, prefix, problem = split_response(value)
        if problem:
            return [], f"response {path!r}: {problem}"
        texts.append(text)
        prefixes.append(prefix)
    if prompt is None:  # the implicit prompt: what every response's conversation shares before its answer
        prompt = prefixes[0] if prefixes else None
        if not prompt:
            return [], "no prompt: no prompt field, and the responses are not conversations"
        if any(p != prompt for p in prefixes[1:]):
            return [], "the responses' conversations differ before their last assistant turn"
    system = dig(rec, spec.system) if spec.system else None
    if prompt and prompt[0]["role"] == "system":
        system, prompt = (system or prompt[0]["content"]), prompt[1:]
    if not prompt or prompt[-1]["role"] != "user":
        return [], "the prompt does not end with a user turn"
    if len(texts) < spec.min_responses:
        return [], f"{len(texts)} responses; the layout needs at least {spec.min_responses}"
    models = response_models(spec, rec, items)
    ids = [dig(rec, p) if spec.candidate_id else None for p in (spec.candidate_id or [None] * len(texts))]
    responses = [{"text": t, "model": m, "candidate_id": None if i is None else str(i)}
                 for t, m, i in zip(texts, models, ids, strict=True)]
    judgments: list[list[dict]] = [[] for _ in texts]
    for lab in spec.labels:
        if lab.fallback and any(judgments):
            continue
        got, problem = label_judgments(lab, rec, items, len(texts), source)
        if problem:
            if lab.optional and problem.startswith("missing"):
                continue
            return [], f"label {lab.name!r}: {problem}"
        for mine, new in zip(judgments, got, strict=True):
            mine.extend(new)
    source_id = dig(rec, spec.id) if spec.id else None
    return [Mapped(messages=prompt, system=system if isinstance(system, str) else None,
                   source_id=None if source_id is None else str(source_id), responses=responses,
                   judgments=judgments)], None


def first_present(rec: dict, paths: str | list[str] | None) -> Any:
    for path in [paths] if isinstance(paths, str) else paths or []:
        value = dig(rec, path)
        if value is not None:
            return value
    return None


def response_models(spec: Layout, rec: dict, items: list) -> list[str | None]:
    if spec.model is None:
        return [None] * len(items)
    if isinstance(spec.model, list):
        return [None if (v := dig(rec, p)) is None else str(v) for p in spec.model]
    return [None if (v := dig(item, spec.model)) is None else str(v) for item in items]


def per_response(lab: Label, path: str | list[str] | None, rec: dict, items: list, n: int) -> list[Any]:
    if path is None:
        return [None] * n
    if isinstance(path, list):
        return [dig(rec, p) for p in path]
    return [dig(item, path) if item is not rec else dig(rec, path) for item in items]


def label_judgments(lab: Label, rec: dict, items: list, n: int, source: str) -> tuple[list[list[dict]], str | None]:
    """Per response, the judgments this label gives (`opponent`: the other response's position, for the caller
    to turn into its candidate id); or the reason the record is unusable."""
    judge = dig(rec, lab.judge_field) if lab.judge_field else None
    judge = judge if isinstance(judge, str) and judge else f"source:{source}/{lab.name}"
    base = {"judge": judge, "kind": lab.judgment_kind,
            "aspect": lab.aspect, "verdict": None, "feedback": None, "position": None, "opponent": None,
            "parse_ok": True, "error": None, "strength": None, "judge_model": f"source:{source}", "members": None}
    if lab.type in ("rating", "rank", "flag"):
        values = per_response(lab, lab.per_response, rec, items, n)
        if len(values) != n:
            return [], f"{len(values)} values for {n} responses"
        if all(v is None for v in values):
            return [], "missing: no response has it"
        if lab.type == "flag":
            if not all(isinstance(v, bool) for v in values):
                return [], f"values {values!r} are not all true/false"
            return [[base | {"score": float(v), "verdict": "yes" if v else "no"}] for v in values], None
        keep = [not (isinstance(v, str) and v in lab.na) for v in values]
        if lab.numeric_text:
            values = [number(v) if isinstance(v, str) and k else v for v, k in zip(values, keep, strict=True)]
        if not all((isinstance(v, (int, float)) and not isinstance(v, bool)) or (v is None and lab.type == "rank")
                   for v, k in zip(values, keep, strict=True) if k):
            return [], f"values {values!r} are not all numbers"
        if lab.type == "rank":  # a response without a rank (an unranked reply) gets no rank judgment
            ranked = [v for v in values if v is not None]
            if sorted(ranked) != list(range(lab.best, lab.best + len(ranked))):
                return [], f"ranks {values!r} are not {lab.best}..{lab.best + len(ranked) - 1}, each once"
            return [[] if v is None else [base | {"score": float(len(ranked) - (v - lab.best))}] for v in values], None
        if lab.range and not all(lab.range[0] <= v <= lab.range[1] for v, k in zip(values, keep, strict=True) if k):
            return [], f"values {values!r} outside {lab.range[0]:g}..{lab.range[1]:g}"
        notes = per_response(lab, lab.feedback, rec, items, n)
        return [[base | {"score": float(v), "feedback": note if isinstance(note, str) else None}] if k else []
                for v, note, k in zip(values, notes, keep, strict=True)], None
    if n != 2:
        return [], f"a {lab.type} label compares two responses; the record has {n}"
    value = dig(rec, lab.field) if lab.field else None
    if lab.field and value is None:
        return [], f"missing: field {lab.field!r}"
    if lab.type == "strength":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return [], f"field {lab.field!r} is {value!r}, not a number"
        win = None if value == 0 else (lab.positive if value > 0 else 1 - lab.positive)
        size = abs(float(value))
    else:
        key = lab.winner if lab.field is None else value
        win = (lab.values or {}).get(str(key), MISSING) if lab.values is not None else key
        if win is MISSING or not (win == "tie" or (isinstance(win, int) and not isinstance(win, bool))):
            return [], f"field {lab.field!r} is {value!r}, not one of {', '.join(lab.values or ['0', '1'])}"
        if win != "tie" and win not in (0, 1):
            return [], f"field {lab.field!r} names response {win}; there are 2"
        win, size = (None if win == "tie" else win), None
    out = []
    for i in (0, 1):
        score = 0.5 if win is None else float(i == win)
        signed = None if size is None else (0.0 if win is None else size if i == win else -size)
        out.append([base | {"score": score, "verdict": "tie" if win is None else "win" if i == win else "loss",
                            "position": i, "opponent": 1 - i, "strength": signed}])
    return out, None


def number(text: str) -> float | str:
    """ "4" -> 4.0; text that is not a number stays as it is (and fails the numbers check with its value)."""
    try:
        return float(text)
    except ValueError:
        return text


def candidate_id(prompt_id: str, source: str, index: int, text: str | None) -> str:
    """A loaded response's id: its prompt, its source, its position and its text, so the same response of the
    same source has the same id in every run and shard."""
    return content_id(prompt_id, source, index, text)
