"""dedup: drop exact and near-duplicate rows across the whole input, keeping the earliest; each dropped row names
the row it duplicates (`duplicate of <id>` in its reason).

  exact    normalized text (lowercase, punctuation and extra spaces dropped), hashed
  minhash  MinHash-LSH over word n-grams: rows sharing a band bucket are candidates, a candidate link counts when
           the signatures' estimated Jaccard is >= `threshold`, linked rows form sets (connected components)
  semantic sentence embeddings (the packaged all-MiniLM-L6-v2, or `model:` a local folder), clustered by k-means;
           within a cluster, rows whose cosine similarity is >= `threshold` are linked (SemDeDup); linked rows
           form sets. Embeddings go through the response cache: a rerun embeds nothing twice

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
    method: Literal["exact", "minhash", "semantic"] = "minhash"
    #: the text column(s) compared (prompt, chosen, rejected, ...); with several, rows are duplicates when all agree
    field: str | list[str] = "prompt"
    #: the column that identifies a row in the reasons
    id_field: str = "prompt_id"
    #: minhash: the estimated Jaccard similarity; semantic: the cosine similarity (default 0.9) at or above which
    #: two rows are duplicates
    threshold: float | None = Field(None, gt=0, le=1)
    num_perm: int = Field(128, ge=16, le=1024)
    ngram: int = Field(3, ge=1)
    #: semantic: a local sentence-transformers folder (default: the packaged all-MiniLM-L6-v2)
    model: str | None = None
    #: semantic: k-means clusters (default: about the square root of the row count); near-duplicates are only
    #: looked for within a cluster, so fewer clusters find more and cost more (a cluster of m rows: m^2 / 2 dot
    #: products)
    clusters: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1)

    @property
    def similarity(self) -> float:
        return self.threshold if self.threshold is not None else 0.9 if self.method == "semantic" else 0.8

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
    if cfg.method == "semantic":
        from curate.engines import embed

        model = ctx.state.get(("embedder", cfg.model))
        if model is None:
            model = ctx.state[("embedder", cfg.model)] = embed.load(cfg.model)
        vecs = embed.encode_cached(ctx.calls, cfg.model, model, [t or "" for t in texts], cfg.batch_size)
        flat = pa.array(vecs.astype(np.float32).reshape(-1), pa.float32())
        return pa.table({**base, "_emb": pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1])})
    sigs = MinHasher(cfg.num_perm).signatures(texts, cfg.ngram)
    bands, rows = lsh_params(cfg.similarity, cfg.num_perm)
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
    elif cfg.method == "semantic":
        drops, similarity = semantic_sets(source, cfg)
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
                                          >= cfg.similarity))
        drops = components(verified).sort("_order")
        similarity = jaccard(drops["_order"].to_numpy(), drops["_first"].to_numpy())
    drops = drops.sort("_order")
    ids = source.rows_of(np.unique(drops["_first"].to_numpy()), ["_id"])
    twin = drops.join(ids.rename({"_order": "_first"}), on="_first", how="left", maintain_order="left")["_id"]
    reasons = [f"{cfg.method} duplicate of {cfg.id_field} {t} ({what})" for t in twin.to_list()]
    if similarity is not None:
        measure = "cosine similarity" if cfg.method == "semantic" else "estimated Jaccard"
        reasons = [f"{r}, {measure} {s:.2f} to it" for r, s in zip(reasons, similarity, strict=True)]
    return pa.table({"_order": pa.array(drops["_order"].to_numpy(), pa.int64()),
                     "reason": pa.array(reasons, pa.string())})


def semantic_sets(source: Keys, cfg: Config):
    """SemDeDup: k-means over the unit embeddings; each row joins its two nearest clusters (with one, a fifth
    of the pairs at cosine >= 0.9 fell on two sides of a border, benchmarks/semantic_dedup.py); within each
    cluster every row is linked to the earliest row at cosine >= the threshold; links joined into sets. Returns
    (drops, each drop's cosine to its set's earliest row). The embeddings are held in memory (4 bytes x
    dimensions a row: 150 MB for 100k rows of MiniLM), the similarities one cluster at a time."""
    import polars as pl
    from sklearn.cluster import MiniBatchKMeans

    frame = source.scan(["_order", "_emb"]).collect().sort("_order")
    orders = frame["_order"].to_numpy()
    if len(orders) < 2:
        return components(pl.DataFrame(schema={"_order": pl.Int64, "_first": pl.Int64})), np.zeros(0)
    vecs = np.stack(frame["_emb"].to_numpy()).astype(np.float32)
    k = min(len(orders), cfg.clusters or max(1, round(len(orders) ** 0.5)))
    if k > 1:
        centers = MiniBatchKMeans(n_clusters=k, random_state=0, n_init=3, batch_size=4096).fit(vecs).cluster_centers_
        members = nearest_two(vecs, centers.astype(np.float32))
    else:
        members = [np.arange(len(orders))]
    a_parts, b_parts = [], []
    for idx in members:  # ascending: earliest first
        later, first = earliest_close(vecs[idx], cfg.similarity)
        a_parts.append(orders[idx[later]])
        b_parts.append(orders[idx[first]])
    links = pl.DataFrame({"_order": np.concatenate(a_parts) if a_parts else np.zeros(0, np.int64),
                          "_first": np.concatenate(b_parts) if b_parts else np.zeros(0, np.int64)}).unique()
    drops = components(links).sort("_order")
    at = np.searchsorted(orders, drops["_order"].to_numpy()), np.searchsorted(orders, drops["_first"].to_numpy())
    return drops, (vecs[at[0]] * vecs[at[1]]).sum(axis=1)


def earliest_close(v: np.ndarray, similarity: float, cells: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """Rows (of `v`, in order) with an earlier row at cosine >= `similarity`, and that earliest row of each;
    the similarities a block of columns at a time (about `cells` floats), so a large cluster stays in bounds."""
    later, first = [], []
    step = max(1, cells // max(1, len(v)))
    for lo in range(1, len(v), step):
        hi = min(len(v), lo + step)
        close = (v[:hi] @ v[lo:hi].T) >= similarity  # (earlier row i, row j of this block)
        close &= np.arange(hi)[:, None] < np.arange(lo, hi)[None, :]
        has = np.flatnonzero(close.any(axis=0))
        later.append(lo + has)
        first.append(close[:, has].argmax(axis=0))
    none = np.zeros(0, np.int64)
    return (np.concatenate(later) if later else none), (np.concatenate(first) if first else none)


def nearest_two(vecs: np.ndarray, centers: np.ndarray, chunk: int = 65536) -> list[np.ndarray]:
    """Each cluster's members (row positions, ascending) when every row joins its two nearest centers."""
    half_norms = 0.5 * (centers * centers).sum(axis=1)
    tops = []
    for lo in range(0, len(vecs), chunk):  # squared distance = |x|^2 - 2 (x.c - |c|^2 / 2): the largest score wins
        score = vecs[lo:lo + chunk] @ centers.T - half_norms
        tops.append(np.argpartition(-score, 1, axis=1)[:, :2])
    top = np.concatenate(tops)
    rows = np.repeat(np.arange(len(vecs)), 2)
    cluster = top.reshape(-1)
    order = np.lexsort((rows, cluster))
    bounds = np.searchsorted(cluster[order], np.arange(len(centers) + 1))
    return [rows[order[bounds[c]:bounds[c + 1]]] for c in range(len(centers))]


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
    doc="Drop exact, MinHash-LSH or semantic (embedding) near-duplicates (of prompts, responses or several fields) across the whole "
    "input, keeping the earliest; each dropped row names the row it duplicates. Decided in parallel steps "
    "(keys per shard, a shuffle by key, drops per shard): Ray Data on a cluster, polars on one machine.",
    process=process,
    decides=GlobalDecision(keys=keys, decide=decide),
    keeps_model=lambda cfg: cfg.method == "semantic",
    # embeddings in calls of 1024 texts: 185 rows/s vs 142 in calls of 64 (8k prompts, 2 cores, model load included)
    batch_rows=lambda cfg: 1024 if cfg.method == "semantic" else None,
)
