"""export: write the formats trainers load (TRL's dataset formats).

  trl      explicit-prompt preference: `prompt`, `chosen`, `rejected` (DPOTrainer, ORPO, CPO, ...)
  reward   implicit-prompt preference: `chosen`, `rejected` each holding the whole exchange (RewardTrainer)
  kto      unpaired: `prompt`, `completion`, `label` (True for chosen, False for rejected; KTOTrainer)
  ranked   listwise: `prompt`, `responses` (best first), `rank`, `ranking_score`, per-judge `scores`

`conversational: true` writes message lists (`[{"role": ..., "content": ...}]`, a system message first when the
prompt has one) instead of strings, and TRL applies the model's chat template. Provenance columns (scores,
margin, models, ids, judge, source) follow; `columns` picks them.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa

from schemas.records import MESSAGES
from stages.base import StageConfig, StageContext, StageResult, StageSpec

PROVENANCE = ["prompt_id", "chosen_score", "rejected_score", "margin", "strength", "agreement", "disagreement",
              "difficulty", "rationale", "rejected_rationale", "persona", "goal_score", "augmented",
              "chosen_harmless", "rejected_harmless", "safer", "ref_margin", "ref_margin_norm", "critique",
              "edit_distance", "documents", "chosen_grounded", "rejected_grounded", "feedback_signal",
              "feedback_evidence", "feedback_turn", "feedback_source", "chosen_truncated", "rejected_truncated",
              "chosen_model", "rejected_model", "chosen_id",
              "rejected_id", "judge", "source"]
DEFAULT_COLUMNS = {
    "trl": PROVENANCE,
    "reward": PROVENANCE,
    "kto": ["prompt_id", "source"],
    "ranked": ["prompt_id", "models", "judges", "scores", "candidate_ids", "source"],
}
MAIN = {
    "trl": {"prompt", "chosen", "rejected", "messages", "system"},
    "reward": {"prompt", "chosen", "rejected", "messages", "system"},
    "kto": {"prompt", "chosen", "rejected", "messages", "system"},
    "ranked": {"prompt", "messages", "system", "responses", "rank", "ranking_score"},
}

OUTPUT = {
    "trl": {"prompt", "chosen", "rejected"},
    "reward": {"chosen", "rejected"},
    "kto": {"prompt", "completion", "label"},
    "ranked": {"prompt", "responses", "rank", "ranking_score"},
}


class Config(StageConfig):
    format: Literal["trl", "reward", "kto", "ranked"] = "trl"
    conversational: bool = False
    #: columns carried after the format's own (default: the format's provenance columns that some stage of the
    #: pipeline writes, resolved when the pipeline loads)
    columns: list[str] | None = None

    def extra(self) -> list[str]:
        return list(DEFAULT_COLUMNS[self.format] if self.columns is None else self.columns)


def _prompt(r: dict, conversational: bool):
    if not conversational:
        return r["prompt"]
    return ([{"role": "system", "content": r["system"]}] if r.get("system") else []) + r["messages"]


def _reply(text: str, conversational: bool):
    return [{"role": "assistant", "content": text}] if conversational else text


def _exchange(r: dict, text: str, conversational: bool):
    """The whole exchange for implicit-prompt formats."""
    if conversational:
        return _prompt(r, True) + [{"role": "assistant", "content": text}]
    return f"{r['prompt']}\n\n{text}"


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    rows = table.to_pylist()
    conv = cfg.conversational
    text = MESSAGES if conv else pa.string()
    extra = cfg.extra()
    out_sources = None
    if cfg.format == "trl":
        fields = [pa.field("prompt", text), pa.field("chosen", text), pa.field("rejected", text)]
        data = [{"prompt": _prompt(r, conv), "chosen": _reply(r["chosen"], conv),
                 "rejected": _reply(r["rejected"], conv), **{c: r[c] for c in extra}} for r in rows]
    elif cfg.format == "reward":
        fields = [pa.field("chosen", text), pa.field("rejected", text)]
        data = [{"chosen": _exchange(r, r["chosen"], conv), "rejected": _exchange(r, r["rejected"], conv),
                 **{c: r[c] for c in extra}} for r in rows]
    elif cfg.format == "kto":
        fields = [pa.field("prompt", text), pa.field("completion", text), pa.field("label", pa.bool_())]
        data = [{"prompt": _prompt(r, conv), "completion": _reply(r[side], conv), "label": side == "chosen",
                 **{c: r[c] for c in extra}} for r in rows for side in ("chosen", "rejected")]
        out_sources = len(rows)
    else:
        fields = [pa.field("prompt", text), pa.field("responses", pa.list_(text)),
                  pa.field("rank", pa.list_(pa.int32())), pa.field("ranking_score", pa.list_(pa.float64()))]
        data = [{"prompt": _prompt(r, conv), "responses": [_reply(x, conv) for x in r["responses"]],
                 "rank": r["rank"], "ranking_score": r["ranking_score"], **{c: r[c] for c in extra}} for r in rows]
    schema = pa.schema(fields + [table.schema.field(c) for c in extra])
    return StageResult(out=pa.Table.from_pylist(data, schema=schema), out_sources=out_sources)


def resolve(cfg: Config, available: set[str]) -> Config:
    """With no `columns`, the format's provenance columns that some stage of this pipeline writes (a column no
    stage fills would be null in every row); the choice is stored in the run's config."""
    if cfg.columns is not None:
        return cfg
    return cfg.model_copy(update={"columns": [c for c in DEFAULT_COLUMNS[cfg.format] if c in available]})


STAGE = StageSpec(
    name="export",
    config=Config,
    reads=lambda cfg: MAIN[cfg.format] | set(cfg.extra()),
    writes=lambda cfg: OUTPUT[cfg.format] | set(cfg.extra()),
    doc="Write TRL formats: trl (explicit-prompt preference), reward (implicit prompt), kto (unpaired), ranked "
    "(listwise); standard strings or conversational messages; provenance columns.",
    process=process,
    reshapes=True,
    resolve=resolve,
)
