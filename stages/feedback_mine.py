"""feedback_mine: preference pairs from real conversations (WildFeedback style). In a chat log (rows loaded with
`load: {conversation_field: ...}`), every assistant turn followed by a user message is checked for the user's
reaction:
  patterns   cheap regular expressions ("that's wrong", "not what I asked", "thanks, perfect", ...), and
  llm        a judge with the `feedback_signal_v1` rubric (kind: feedback), which quotes its evidence.
`agree: any` takes a signal either detector gives (opposite signals conflict and count for nothing); `agree: all`
needs every detector to give it. An LLM output that does not parse is counted as unparsed and never read as
neutral or as a signal. An LLM quote that is not in the user's message is not kept as evidence.

Pairs, with the conversation up to the judged turn as the prompt:
  dissatisfied  rejected = the answer the user rejected; chosen = a regeneration that is told the answer and the
                user's reaction (`chosen_from: regenerate`), or the assistant's next turn, after the complaint
                (`chosen_from: later`, the "later-corrected" answer)
  satisfied     (with `satisfied: regenerate`) chosen = the answer the user approved; rejected = a plain
                regeneration of the same turn
Each pair keeps `feedback_signal`, `feedback_evidence` (the words that show it), `feedback_turn` (the judged
assistant turn's index) and `feedback_source` (which detectors gave it). A conversation with no signal is
dropped with the reason; the run's summary reports turns examined, signals by kind and by detector, conflicts
and unparsed LLM outputs.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Literal

import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator, model_validator

from curate.engines.base import Request
from curate.engines.spec import SamplingConfig
from curate.judges.calls import ask, judge_name
from curate.judges.templates import load_template, template_path, template_ref
from curate.schemas.records import PAIR_ROW
from curate.schemas.validate import quarantine_table
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec
from curate.schemas.records import prompt_id
from curate.schemas.rows import PAIR_HEAD, PAIR_HEAD_CARRIED, pair_head, content_id

# what users write when an answer missed; anchored on words, case-insensitive
DISSATISFIED = [
    r"\b(that'?s|that is|this is|you'?re|you are|it'?s|it is) (wrong|not right|incorrect|not true|not helpful|"
    r"useless|not what i)",
    r"\bnot what i (asked|meant|wanted|said)\b",
    r"\byou (didn'?t|did not|don'?t|do not) (answer|understand|get it|listen)",
    r"\bthat (doesn'?t|does not|didn'?t) (help|make sense|answer)",
    r"\bi (already|just) (said|told you|asked)\b",
    r"\byou'?re not (helping|listening|answering)\b",
    r"\bthat'?s not (it|right|correct|true|helpful)\b",
    r"\bi didn'?t ask\b",
    r"\byou misunderstood\b",
]
SATISFIED = [
    r"\b(thanks|thank you|ty)\b(?! for nothing| anyway)",
    r"\b(perfect|exactly what i|that helps|that'?s helpful|very helpful|great (idea|answer|advice)|"
    r"good (idea|answer|advice)|that'?s (right|correct|great))\b",
]
REGENERATE = ("An earlier answer to this conversation left the user dissatisfied.\n\n[Earlier answer]\n{answer}\n\n"
              "[The user's reaction]\n{reaction}\n\nWrite a better answer to the user's last message, one that "
              "meets their reaction. Do not mention the earlier answer.")
Signal = Literal["dissatisfied", "satisfied"]


class Config(StageConfig):
    #: how signals are found: regular expressions, an LLM judge, or both
    detectors: list[Literal["patterns", "llm"]] = Field(default_factory=lambda: ["patterns", "llm"], min_length=1)
    #: any: a signal from either detector counts (opposite signals conflict); all: every detector must give it
    agree: Literal["any", "all"] = "any"
    engine: str = "default"
    template: str = "feedback_signal_v1"
    sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_tokens=96)
    retries: int = Field(1, ge=0)
    grammar: bool = True
    #: regular expressions (case-insensitive); default: the built-in lists above
    dissatisfied_patterns: list[str] = Field(default_factory=lambda: list(DISSATISFIED))
    satisfied_patterns: list[str] = Field(default_factory=lambda: list(SATISFIED))
    #: the chosen answer of a dissatisfied turn: regenerated with the reaction in view, or the assistant's next turn
    chosen_from: Literal["regenerate", "later"] = "regenerate"
    #: satisfied turns: no pair (skip), or the approved answer against a plain regeneration
    satisfied: Literal["skip", "regenerate"] = "skip"
    #: the engine and sampling of regenerations
    generator: str = "default"
    generate_sampling: SamplingConfig = SamplingConfig(temperature=0.7, max_tokens=256)
    #: the regeneration's system prompt for dissatisfied turns: {answer} (the rejected one), {reaction}
    regenerate_prompt: str = REGENERATE

    @field_validator("template")
    @classmethod
    def _template(cls, value: str, info: ValidationInfo) -> str:
        return template_ref(value, (info.context or {}).get("base_dir"), stage="feedback_mine")

    @field_validator("dissatisfied_patterns", "satisfied_patterns")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for p in value:
            try:
                re.compile(p)
            except re.error as err:
                raise ValueError(f"pattern {p!r} is not a regular expression: {err}") from None
        return value

    @field_validator("regenerate_prompt")
    @classmethod
    def _fields(cls, value: str) -> str:
        used = {f for _, f, _, _ in string.Formatter().parse(value) if f}
        if used - {"answer", "reaction"}:
            raise ValueError(f"unknown fields {sorted(used - {'answer', 'reaction'})}; allowed: answer, reaction")
        return value

    @model_validator(mode="after")
    def _uses(self):
        if len(set(self.detectors)) != len(self.detectors):
            raise ValueError("list each detector once")
        return self

    def engines_used(self) -> list[str]:
        used = ["llm" in self.detectors and self.engine,
                (self.chosen_from == "regenerate" or self.satisfied == "regenerate") and self.generator]
        return list(dict.fromkeys(e for e in used if e))


def _sentence(text: str, start: int, end: int) -> str:
    """The sentence of `text` around a match: the evidence a reader can check."""
    left = max((text.rfind(c, 0, start) for c in ".!?\n"), default=-1) + 1
    rights = [i for c in ".!?\n" if (i := text.find(c, end)) != -1]
    return text[left:(min(rights) + 1) if rights else len(text)].strip()


def pattern_signal(reply: str, cfg: Config) -> tuple[Signal | None, str | None]:
    """The first dissatisfied pattern that matches wins over satisfied ones ("thanks, but that's wrong")."""
    for label, patterns in (("dissatisfied", cfg.dissatisfied_patterns), ("satisfied", cfg.satisfied_patterns)):
        for p in patterns:
            m = re.search(p, reply, re.I)
            if m:
                return label, _sentence(reply, m.start(), m.end())  # type: ignore[return-value]
    return None, None


def turns(messages: list[dict]) -> list[int]:
    """Indexes of assistant turns that answer a user turn and are followed by a user message."""
    return [j for j in range(1, len(messages) - 1) if messages[j]["role"] == "assistant"
            and messages[j + 1]["role"] == "user" and messages[j - 1]["role"] == "user"]


def transcript(messages: list[dict]) -> str:
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in messages)


def combine(found: dict[str, tuple[Signal | None, str | None]], cfg: Config) -> tuple[Signal | None, str, str | None]:
    """(signal, detectors that gave it or why none, evidence) from each detector's (signal, evidence)."""
    labels = {d: s for d, (s, _) in found.items() if s is not None}
    if len(set(labels.values())) > 1:
        return None, "conflict", None
    if not labels or (cfg.agree == "all" and len(labels) < len(cfg.detectors)):
        return None, "none", None
    signal = next(iter(labels.values()))
    evidence = next((found[d][1] for d in ("patterns", "llm") if d in labels and found[d][1]), None)
    return signal, "+".join(d.replace("patterns", "pattern") for d in ("patterns", "llm") if d in labels), evidence


def detect(rows: list[dict], items: list[tuple[int, int]], cfg: Config, ctx: StageContext,
           stats: dict) -> tuple[list[tuple], str | None]:
    """Each followed-up turn's signal from the detectors (patterns, the LLM judge), combined:
    ([(item index, signal, source, evidence)], the LLM judge's name or None)."""
    found: list[dict] = [{} for _ in items]
    if "patterns" in cfg.detectors:
        for k, (r, j) in enumerate(items):
            found[k]["patterns"] = pattern_signal(rows[r]["messages"][j + 1]["content"], cfg)
            stats["pattern_hits"] += found[k]["patterns"][0] is not None
    judge = None
    if "llm" in cfg.detectors and items:
        engine = ctx.engine(cfg.engine)
        template = load_template(template_path(cfg.template))
        judge = judge_name(engine, template, None)
        prompts = []
        for r, j in items:
            msgs = rows[r]["messages"]
            prompts.append(template.fill(transcript(msgs[:j]), answer=msgs[j]["content"], reply=msgs[j + 1]["content"]))
        for k, (comp, parsed) in enumerate(ask(engine, template, prompts, cfg.sampling.sampling(), cfg.retries,
                                               cfg.grammar)):
            if parsed is None or not parsed.ok:
                stats["llm_failed" if parsed is None else "llm_unparsed"] += 1
                found[k]["llm"] = (None, None)  # recorded as unparsed, never read as a signal or as neutral
                continue
            label = parsed.verdict if parsed.verdict in ("dissatisfied", "satisfied") else None
            reply = rows[items[k][0]]["messages"][items[k][1] + 1]["content"]
            evidence = parsed.evidence if parsed.evidence and parsed.evidence.lower() in reply.lower() else None
            found[k]["llm"] = (label, evidence)
            stats["llm_signals"] += label is not None
    signals = []
    for k in range(len(items)):
        signal, source, evidence = combine(found[k], cfg)
        stats["conflicts"] += source == "conflict"
        if signal:
            stats[signal] += 1
            signals.append((k, signal, source, evidence))
    return signals, judge


def regenerate(rows: list[dict], items: list[tuple[int, int]], regen: list[tuple[int, str]], cfg: Config,
               ctx: StageContext) -> dict[int, tuple]:
    """New answers for the turns that need one (a dissatisfied turn's better answer, or a satisfied turn's
    worse one), in one batch: item index -> (completion, model name)."""
    if not regen:
        return {}
    gen = ctx.engine(cfg.generator)
    requests = []
    for k, s in regen:
        r, j = items[k]
        msgs, system = rows[r]["messages"], rows[r].get("system")
        hint = (cfg.regenerate_prompt.format(answer=msgs[j]["content"], reaction=msgs[j + 1]["content"])
                if s == "dissatisfied" else None)
        sys_text = "\n\n".join(p for p in (system, hint) if p)
        requests.append(Request(([{"role": "system", "content": sys_text}] if sys_text else []) + msgs[:j],
                                cfg.generate_sampling.sampling(seed=cfg.generate_sampling.seed + j)))
    return {k: (comp, gen.model_name) for (k, _), comp in zip(regen, gen.complete(requests), strict=True)}


def mined_pair(row: dict, j: int, signal: str, source: str, evidence: str | None, other: str, other_model: str,
               judge: str | None) -> dict:
    """The pair a signal on turn `j` makes: the turn's answer against the other one, the better one chosen."""
    msgs = row["messages"]
    log = f"log:{row.get('source') or 'chat'}"
    original = msgs[j]["content"]
    if signal == "dissatisfied":
        chosen, chosen_model, rejected, rejected_model = other, other_model, original, log
    else:
        chosen, chosen_model, rejected, rejected_model = original, log, other, other_model
    context = msgs[:j]
    pid = prompt_id(context, row.get("system"), row.get("persona"))
    return pair_head(row) | {
        "prompt_id": pid, "prompt": context[-1]["content"], "messages": context,
        "chosen": chosen, "rejected": rejected, "chosen_model": chosen_model, "rejected_model": rejected_model,
        "chosen_id": content_id(pid, chosen_model, chosen), "rejected_id": content_id(pid, rejected_model, rejected),
        "judge": "+".join({"pattern": "patterns", "llm": judge}[d] for d in source.split("+")),
        "feedback_signal": signal, "feedback_evidence": evidence, "feedback_turn": j, "feedback_source": source,
    }


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    rows = table.to_pylist()
    items = [(r, j) for r, row in enumerate(rows) for j in turns(row["messages"] or [])]
    stats = {"turns": len(items), "dissatisfied": 0, "satisfied": 0, "pattern_hits": 0, "llm_signals": 0,
             "llm_unparsed": 0, "conflicts": 0, "llm_failed": 0}
    signals, judge = detect(rows, items, cfg, ctx, stats)
    wanted = [(k, s, src, ev) for k, s, src, ev in signals if s == "dissatisfied" or cfg.satisfied == "regenerate"]
    generated = regenerate(rows, items, [(k, s) for k, s, _, _ in wanted
                                         if s == "satisfied" or cfg.chosen_from == "regenerate"], cfg, ctx)
    pairs, problems, made = [], {r: [] for r in range(len(rows))}, {r: 0 for r in range(len(rows))}
    for k, signal, source, evidence in wanted:
        r, j = items[k]
        msgs = rows[r]["messages"]
        if k in generated:
            comp, model = generated[k]
            if not comp.ok or not (comp.text or "").strip():
                problems[r].append(f"turn {j}: regeneration failed: {comp.error or 'empty answer'}")
                continue
            other, other_model = comp.text.strip(), model
        else:  # chosen_from: later
            if j + 2 >= len(msgs) or msgs[j + 2]["role"] != "assistant":
                problems[r].append(f"turn {j}: dissatisfied, but no later assistant turn to be chosen")
                continue
            other, other_model = msgs[j + 2]["content"], f"log:{rows[r].get('source') or 'chat'}"
        pairs.append(mined_pair(rows[r], j, signal, source, evidence, other, other_model, judge))
        made[r] += 1
    records, reasons = account(rows, items, signals, problems, made)
    n_out = sum(1 for v in made.values() if v)
    return StageResult(out=pa.Table.from_pylist(pairs, schema=PAIR_ROW),
                       dropped=quarantine_table(records, reasons),
                       out_sources=n_out, dropped_sources=len(rows) - n_out, stats=stats)


def account(rows: list[dict], items: list[tuple[int, int]], signals: list[tuple], problems: dict[int, list[str]],
            made: dict[int, int]) -> tuple[list[dict], list[str]]:
    """Why each conversation gave no pair (dropped whole, with one reason), and which turns of the ones that did
    gave none (noted by prompt id)."""
    records, reasons = [], []
    turns_of = Counter(r for r, _ in items)
    signalled = {items[k][0] for k, *_ in signals}
    for r, row in enumerate(rows):
        n_turns = turns_of[r]
        if made[r]:
            for why in problems[r]:  # the conversation goes on; the turns that gave no pair are noted
                records.append({"prompt_id": row["prompt_id"]})
                reasons.append(why)
            continue
        if problems[r]:
            why = "; ".join(problems[r])
        elif not n_turns:
            why = "no assistant turn followed by a user message"
        elif r in signalled:
            why = "only satisfied turns (satisfied: skip)"
        else:
            why = f"no feedback signal in {n_turns} follow-up turn{'s' * (n_turns != 1)}"
        records.append(row)
        reasons.append(why)
    return records, reasons


def summarize(stats: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {k: int(stats.get(k, 0)) for k in (
        "turns", "dissatisfied", "satisfied", "pattern_hits", "llm_signals", "conflicts", "llm_unparsed")}
    if stats.get("turns"):
        out["signal_rate"] = (stats.get("dissatisfied", 0) + stats.get("satisfied", 0)) / stats["turns"]
    return out


STAGE = StageSpec(
    name="feedback_mine",
    config=Config,
    reads=lambda cfg: {"prompt_id", "messages"},
    writes=lambda cfg: set(PAIR_HEAD) | {"feedback_signal", "feedback_evidence", "feedback_turn", "feedback_source"},
    derived_from=PAIR_HEAD_CARRIED,
    doc="Pairs from chat logs: find where the user was (dis)satisfied with an assistant turn (patterns and/or an "
    "LLM judge, with evidence), and pair the rejected answer with a regenerated or later-corrected one.",
    process=process,
    reshapes=True,
    engines=lambda cfg: cfg.engines_used(),
    summarize=summarize,
)
