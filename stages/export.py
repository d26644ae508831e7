"""export: write pairs in the format TRL's trainers load.

`trl` (explicit prompt): `prompt`, `chosen`, `rejected` as strings, or with `conversational: true` as message
lists (`prompt` = the conversation up to the user turn, `chosen`/`rejected` = one assistant message), which is
what DPOTrainer applies the chat template to. Score, margin and provenance columns follow (`columns`).
"""

from __future__ import annotations

import pyarrow as pa
from pydantic import Field

from schemas.records import MESSAGES, PAIR_ROW
from stages.base import StageConfig, StageContext, StageResult, StageSpec

PROVENANCE = ["prompt_id", "chosen_score", "rejected_score", "margin", "chosen_model", "rejected_model",
              "chosen_id", "rejected_id", "judge", "source"]


class Config(StageConfig):
    format: str = Field("trl", pattern="^trl$")
    conversational: bool = False
    #: columns carried after prompt/chosen/rejected
    columns: list[str] = Field(default_factory=lambda: list(PROVENANCE))


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    rows = table.to_pylist()
    if cfg.conversational:
        def prompt_of(r):
            head = [{"role": "system", "content": r["system"]}] if r.get("system") else []
            return head + r["messages"]

        def reply(text):
            return [{"role": "assistant", "content": text}]

        fields = [pa.field("prompt", MESSAGES), pa.field("chosen", MESSAGES), pa.field("rejected", MESSAGES)]
        data = {"prompt": [prompt_of(r) for r in rows], "chosen": [reply(r["chosen"]) for r in rows],
                "rejected": [reply(r["rejected"]) for r in rows]}
    else:
        fields = [pa.field("prompt", pa.string()), pa.field("chosen", pa.string()), pa.field("rejected", pa.string())]
        data = {k: table[k] for k in ("prompt", "chosen", "rejected")}
    schema = pa.schema(fields + [table.schema.field(c) for c in cfg.columns])
    data |= {c: table[c] for c in cfg.columns}
    return StageResult(out=pa.table(data, schema=schema))


STAGE = StageSpec(
    name="export",
    config=Config,
    reads=lambda cfg: {"prompt", "chosen", "rejected", "messages", "system"} | set(cfg.columns),
    writes=lambda cfg: {"prompt", "chosen", "rejected"} | set(cfg.columns),
    doc="Write TRL explicit-prompt preference data (standard strings or conversational messages) with "
    "score/margin/provenance columns.",
    process=process,
    reshapes=True,
)
