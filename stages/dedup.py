"""dedup: drop exact and near-duplicate rows across the whole input, keeping the earliest; each dropped row names
the row it duplicates (`duplicate of <id>` in its reason).

  exact    normalized text (lowercase, punctuation and extra spaces dropped), hashed
  minhash  MinHash-LSH over word n-grams: rows sharing a band bucket are candidates, a candidate link counts when
           the signatures' estimated Jaccard is >= `threshold`, linked rows form sets (connected components)

Works on prompt rows (dedup prompts before paying for generation) or pair rows (`field: chosen`), on one column
or several (`field: [prompt, chosen]`: rows are duplicates when the fields together are), across every source
of the input. The stage decides globally in three parallel steps (stages/base.GlobalDecision): each shard's
keys (hashes or signatures), the duplicate sets (a shuffle by key: polars on one machine, Ray Data on a cluster),
then each shard drops its rows in those sets. "Earliest" is the row's position in the input, so the kept rows
are the same for any shard, worker or node count.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.schemas.validate import quarantine_arrow
from curate.stages.base import GlobalDecision, StageConfig, StageContext, StageResult, StageSpec
from curate.stages.dupsets import Keys, components, later_rows
from curate.stages.textsig import MinHasher, band_hashes, lsh_params, word_hashes


class Config(StageConfig):
    method: Literal["exact", "minhash"] = "minhash"
    #: the text column(s) compared (prompt, chosen, rejected, ...); with several, rows are duplicates when all agree
    field: str | list[str] = "prompt"
    #: the column that identifies a row in the reasons
    id_field: str = "prompt_id"
    threshold: float = Field(0.8, gt=0, le=1)
    num_perm: int = Field(128, ge=16, le=1024)
    ngram: int = Field(3, ge=1)

    @property
    def fields(self) -> list[str]:
        return [self.field] if isinstance(self.field, str) else list(self.field)


def exact_hashes(texts: list[str]) -> np.ndarray:
    """One uint64 per text: an order-sensitive fold of its normalized words' hashes and its word count, for the
    whole batch at once (numpy segment reductions, no per-row Python)."""
    flat, offsets = word_hashes(texts)
    counts = np.diff(offsets)
    out = np.zeros(len(texts), dtype=np.uint64)
    if len(flat):
        row = np.repeat(np.arange(len(texts)), counts)
        pos = (np.arange(len(flat)) - offsets[row]).astype(np.uint64)
        with np.errstate(over="ignore"):
            vals = flat * (pos * np.uint64(2) + np.uint64(0x9E3779B97F4A7C15))
            nonempty = counts > 0
            out[nonempty] = np.bitwise_xor.reduceat(vals, offsets[:-1][nonempty])
    with np.errstate(over="ignore"):
        return out ^ (counts.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))


def _texts(table: pa.Table, name: str) -> list[str]:
    return table[name].to_pylist() if table.num_rows else []


def keys(table: pa.Table, cfg: Config, ctx: StageContext) -> pa.Table:
    """What the decision needs of each row: `_order`, `_id` and its hash (exact) or band keys and signature."""
    base = {"_order": table["_order"], "_id": pc.cast(table[cfg.id_field], pa.string())}
    if cfg.method == "exact":
        key = np.zeros(table.num_rows, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for name in cfg.fields:  # fields fold in order: (a, b) and (b, a) differ
                key = key * np.uint64(0x100000001B3) ^ exact_hashes(_texts(table, name))
        return pa.table({**base, "_key": pa.array(key, pa.uint64())})
    texts = _texts(table, cfg.fields[0])
    for name in cfg.fields[1:]:
        texts = [f"{a or ''} {b or ''}" for a, b in zip(texts, _texts(table, name), strict=True)]
    sigs = MinHasher(cfg.num_perm).signatures(texts, cfg.ngram)
    bands, rows = lsh_params(cfg.threshold, cfg.num_perm)
    flat_bands = pa.array(band_hashes(sigs, bands, rows).reshape(-1), pa.uint64())
    flat_sigs = pa.array(sigs.astype(np.uint32).reshape(-1), pa.uint32())
    return pa.table({**base, "_bands": pa.FixedSizeListArray.from_arrays(flat_bands, bands),
                     "_sig": pa.FixedSizeListArray.from_arrays(flat_sigs, cfg.num_perm)})


def decide(source: Keys, cfg: Config, distributed: bool) -> pa.Table:
    """(_order, reason) of every row to drop, sorted by `_order`."""
    import polars as pl

    what = "+".join(cfg.fields)
    if cfg.method == "exact":
        drops = later_rows(source, ["_key"], None, distributed)
        similarity = None
    else:
        links = later_rows(source, [], "_bands", distributed)
        nodes = np.unique(np.concatenate([links["_order"].to_numpy(), links["_first"].to_numpy()]))
        sig_rows = source.rows_of(nodes, ["_sig"])
        sigs = np.stack(sig_rows["_sig"].to_numpy()) if sig_rows.height else np.zeros((0, cfg.num_perm))
        sig_orders = sig_rows["_order"].to_numpy()

        def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            """The share of equal signature values: MinHash's estimate of the two rows' Jaccard similarity."""
            ia, ib = np.searchsorted(sig_orders, a), np.searchsorted(sig_orders, b)
            return (sigs[ia] == sigs[ib]).mean(axis=1) if len(ia) else np.zeros(0)

        verified = links.filter(pl.Series(jaccard(links["_order"].to_numpy(), links["_first"].to_numpy())
                                          >= cfg.threshold))
        drops = components(verified)
        similarity = jaccard(drops["_order"].to_numpy(), drops["_first"].to_numpy())
    drops = drops.sort("_order")
    ids = source.rows_of(np.unique(drops["_first"].to_numpy()), ["_id"])
    twin = drops.join(ids.rename({"_order": "_first"}), on="_first", how="left", maintain_order="left")["_id"]
    reasons = [f"{cfg.method} duplicate of {cfg.id_field} {t} ({what})" for t in twin.to_list()]
    if similarity is not None:
        reasons = [f"{r}, estimated Jaccard {s:.2f} to it" for r, s in zip(reasons, similarity, strict=True)]
    return pa.table({"_order": pa.array(drops["_order"].to_numpy(), pa.int64()),
                     "reason": pa.array(reasons, pa.string())})


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    """Drop the batch's rows the decision names. Called alone (no runner: a test, a notebook) the batch is the
    whole input, decided here."""
    if "_order" not in table.column_names:
        table = table.append_column("_order", pa.array(np.arange(table.num_rows), pa.int64()))
        decisions = decide(Keys(table=keys(table, cfg, ctx)), cfg, False)
    else:
        decisions = ctx.state.get("decisions")
        if decisions is None:
            import pyarrow.parquet as pq

            decisions = ctx.state["decisions"] = pq.read_table(ctx.state["decisions_path"])
    orders = decisions["_order"].to_numpy()
    batch_orders = table["_order"].to_numpy()
    drop = np.isin(batch_orders, orders)
    reasons = decisions["reason"].take(pa.array(np.searchsorted(orders, batch_orders[drop])))
    rows = table.drop_columns(["_order"])
    dropped = rows.filter(pa.array(drop))
    return StageResult(out=rows.filter(pa.array(~drop)), dropped=quarantine_arrow(dropped, reasons))


STAGE = StageSpec(
    name="dedup",
    config=Config,
    reads=lambda cfg: {*cfg.fields, cfg.id_field},
    writes=lambda cfg: set(),
    doc="Drop exact or MinHash-LSH near-duplicates (of prompts, responses or several fields) across the whole "
    "input, keeping the earliest; each dropped row names the row it duplicates. Decided in parallel steps "
    "(keys per shard, a shuffle by key, drops per shard): Ray Data on a cluster, polars on one machine.",
    process=process,
    decides=GlobalDecision(keys=keys, decide=decide),
)
