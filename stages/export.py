"""export: write the formats trainers load (TRL's dataset formats).

  trl      explicit-prompt preference: `prompt`, `chosen`, `rejected` (DPOTrainer, ORPO, CPO, ...)
  reward   implicit-prompt preference: `chosen`, `rejected` each holding the whole exchange (RewardTrainer)
  kto      unpaired: `prompt`, `completion`, `label` (True for chosen, False for rejected; KTOTrainer)
  ranked   listwise: `prompt`, `responses` (best first), `rank`, `ranking_score`, per-judge `scores`
  diffusion  image pairs for Diffusion-DPO / DCPO: `caption` (the prompt), `jpg_0` (the preferred image), `jpg_1`,
           `label_0` (1.0), and with the caption stage `caption_0` / `caption_1` (each image's own caption); the
           images are embedded as bytes in `datasets`' Image layout ({bytes, path}), so `load_dataset` gives PIL
           images and the Hub viewer shows them

`conversational: true` writes message lists (`[{"role": ..., "content": ...}]`, a system message first when the
prompt has one) instead of strings, and TRL applies the model's chat template. Provenance columns (scores,
margin, models, ids, judge, source) follow; `columns` picks them.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa

from curate.schemas.records import MESSAGES
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec

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
    "diffusion": ["prompt_id", "chosen_model", "rejected_model", "chosen_id", "rejected_id", "judge", "source"],
}
MAIN = {
    "trl": {"prompt", "chosen", "rejected", "messages", "system"},
    "reward": {"prompt", "chosen", "rejected", "messages", "system"},
    "kto": {"prompt", "chosen", "rejected", "messages", "system"},
    "ranked": {"prompt", "messages", "system", "responses", "rank", "ranking_score"},
    "diffusion": {"prompt", "chosen_image", "rejected_image"},
}

OUTPUT = {
    "trl": {"prompt", "chosen", "rejected"},
    "reward": {"chosen", "rejected"},
    "kto": {"prompt", "completion", "label"},
    "ranked": {"prompt", "responses", "rank", "ranking_score"},
    "diffusion": {"caption", "jpg_0", "jpg_1", "label_0"},
}
#: `datasets`' Image feature as Arrow stores it
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


class Config(StageConfig):
    format: Literal["trl", "reward", "kto", "ranked", "diffusion"] = "trl"
    conversational: bool = False
    #: columns carried after the format's own (default: the format's provenance columns that some stage of the
    #: pipeline writes, resolved when the pipeline loads)
    columns: list[str] | None = None
    #: diffusion: write `caption_0` / `caption_1` (default: when a caption stage made them)
    captions: bool | None = None

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


def columnar(table: pa.Table, cfg: Config, extra: list[str]) -> StageResult:
    """The string formats as column operations (no row becomes a Python object): trl and ranked select columns,
    reward joins prompt and answer, kto interleaves each pair's two rows."""
    import pyarrow.compute as pc

    def col(name: str) -> pa.ChunkedArray:
        return table.column(name).cast(pa.string())

    carried = {c: table.column(c) for c in extra}
    out_sources = None
    if cfg.format == "trl":
        main = {"prompt": col("prompt"), "chosen": col("chosen"), "rejected": col("rejected")}
    elif cfg.format == "reward":
        main = {side: pc.binary_join_element_wise(col("prompt"), col(side), "\n\n") for side in ("chosen", "rejected")}
    elif cfg.format == "ranked":
        main = {"prompt": col("prompt"), "responses": table.column("responses").cast(pa.list_(pa.string())),
                "rank": table.column("rank").cast(pa.list_(pa.int32())),
                "ranking_score": table.column("ranking_score").cast(pa.list_(pa.float64()))}
    else:  # kto: each pair's chosen row, then its rejected row
        import numpy as np

        n = table.num_rows
        both = pa.concat_tables([
            pa.table({"prompt": col("prompt"), "completion": col(side),
                      "label": pa.array(np.full(n, side == "chosen")), **carried}) for side in ("chosen", "rejected")])
        order = np.stack([np.arange(n), np.arange(n) + n], axis=1).ravel()
        return StageResult(out=both.take(pa.array(order)), out_sources=n)
    return StageResult(out=pa.table({**main, **carried}), out_sources=out_sources)


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    if not cfg.conversational and cfg.format != "diffusion":
        return columnar(table, cfg, cfg.extra())
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
    elif cfg.format == "diffusion":
        return diffusion(rows, cfg, table.schema, extra)
    else:
        fields = [pa.field("prompt", text), pa.field("responses", pa.list_(text)),
                  pa.field("rank", pa.list_(pa.int32())), pa.field("ranking_score", pa.list_(pa.float64()))]
        data = [{"prompt": _prompt(r, conv), "responses": [_reply(x, conv) for x in r["responses"]],
                 "rank": r["rank"], "ranking_score": r["ranking_score"], **{c: r[c] for c in extra}} for r in rows]
    schema = pa.schema(fields + [table.schema.field(c) for c in extra])
    return StageResult(out=pa.Table.from_pylist(data, schema=schema), out_sources=out_sources)


def _hf_image(ref: dict) -> dict:
    from pathlib import Path

    from curate.schemas.images import image_bytes, suffix

    name = Path(ref["path"]).name if ref.get("path") else f"{ref['sha256'][:16]}{suffix(ref)}"
    return {"bytes": image_bytes(ref), "path": name}


def diffusion(rows: list[dict], cfg: Config, upstream: pa.Schema, extra: list[str]) -> StageResult:
    """The Diffusion-DPO / DCPO layout, with `datasets`' features in the schema's metadata so the image columns
    load as images."""
    import json

    from datasets import Features, Image

    fields = [pa.field("caption", pa.string())]
    fields += [pa.field("caption_0", pa.string()), pa.field("caption_1", pa.string())] if cfg.captions else []
    fields += [pa.field("jpg_0", HF_IMAGE), pa.field("jpg_1", HF_IMAGE), pa.field("label_0", pa.float64())]
    data = [{"caption": r["prompt"], "jpg_0": _hf_image(r["chosen_image"]), "jpg_1": _hf_image(r["rejected_image"]),
             "label_0": 1.0, **({"caption_0": r["chosen_caption"], "caption_1": r["rejected_caption"]}
                                if cfg.captions else {}), **{c: r[c] for c in extra}} for r in rows]
    schema = pa.schema(fields + [upstream.field(c) for c in extra])
    features = Features.from_arrow_schema(schema)
    features["jpg_0"] = features["jpg_1"] = Image()
    schema = schema.with_metadata({"huggingface": json.dumps({"info": {"features": features.to_dict()}})})
    return StageResult(out=pa.Table.from_pylist(data, schema=schema))


def resolve(cfg: Config, available: set[str]) -> Config:
    """With no `columns`, the format's provenance columns that some stage of this pipeline writes (a column no
    stage fills would be null in every row); the choice is stored in the run's config."""
    if cfg.format == "diffusion" and cfg.captions is None:
        cfg = cfg.model_copy(update={"captions": "chosen_caption" in available})
    if cfg.columns is not None:
        return cfg
    return cfg.model_copy(update={"columns": [c for c in DEFAULT_COLUMNS[cfg.format] if c in available]})


STAGE = StageSpec(
    name="export",
    config=Config,
    reads=lambda cfg: MAIN[cfg.format] | set(cfg.extra())
    | ({"chosen_caption", "rejected_caption"} if cfg.format == "diffusion" and cfg.captions else set()),
    writes=lambda cfg: OUTPUT[cfg.format] | set(cfg.extra())
    | ({"caption_0", "caption_1"} if cfg.format == "diffusion" and cfg.captions else set()),
    doc="Write TRL formats: trl (explicit-prompt preference), reward (implicit prompt), kto (unpaired), ranked "
    "(listwise); standard strings or conversational messages; provenance columns; diffusion (Diffusion-DPO / "
    "DCPO image pairs with embedded images).",
    process=process,
    reshapes=True,
    resolve=resolve,
)
