"""Duplicate sets over a stage's whole input, for dedup: which rows repeat an earlier one.

Every row has `_order`, its position in the stage's input, and one or more bucket keys (an exact hash; a MinHash
band). Rows sharing a bucket are linked to the bucket's earliest row (`later_rows`); near-duplicate links are then
verified on their signatures and joined into sets (`components`), whose earliest row is kept. Both steps depend
only on `_order` and the keys, so the kept rows are the same for any shard, worker or node count.

`later_rows` has two backends with one meaning: polars' streaming engine over the shards' key files on one
machine (a group-by and a join; it holds the key columns, not the rows), and Ray Data's hash-shuffle aggregate
and join on a cluster (each node holds its partitions). What comes back to the driver is one row per duplicate
link, so its size grows with the duplicates found, not with the corpus.

Not a stage: the helpers stages/dedup.py uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa


#: bucket keys one pass of the local decision groups at most (tens of MB of polars hash table)
PART_KEYS = 1_000_000


@dataclass
class Keys:
    """A stage's key rows: the key files its shards wrote (a run), or one in-memory table (a stage called alone)."""

    files: list[str] | None = None
    table: pa.Table | None = None

    def scan(self, columns: list[str]):
        import polars as pl

        if self.table is not None:
            return pl.from_arrow(self.table.select(columns)).lazy()
        if not self.files:
            return pl.LazyFrame(schema={c: pl.Int64 for c in columns}).head(0)
        return pl.scan_parquet(self.files).select(columns)

    def rows(self) -> int:
        """Key rows in all (from the files' footers)."""
        import pyarrow.parquet as pq

        if self.table is not None:
            return self.table.num_rows
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files or [])

    def width(self, column: str) -> int:
        """Values per row of a fixed-size list column (MinHash: bands per row)."""
        import pyarrow.parquet as pq

        if self.table is not None:
            return self.table.schema.field(column).type.list_size
        if not self.files:
            return 1
        return pq.read_schema(self.files[0]).field(column).type.list_size

    def rows_of(self, orders: np.ndarray, columns: list[str]):
        """The key rows whose `_order` is in `orders` (a small set: the rows of duplicate links)."""
        import polars as pl

        return (self.scan(["_order", *columns]).filter(pl.col("_order").is_in(pl.Series(orders)))
                .collect(engine="streaming").sort("_order"))

    def ray(self, columns: list[str]):
        """A Ray Dataset of the key rows, each file read by a task on whichever node runs it (not
        `ray.data.read_parquet`: its path resolution imports fsspec's HTTP filesystem, which fails without aiohttp)."""
        import ray

        if self.table is not None:
            return ray.data.from_arrow(self.table.select(columns))

        def read(batch: dict) -> pa.Table:
            import pyarrow.parquet as pq

            return pa.concat_tables([pq.read_table(str(p), columns=columns) for p in batch["path"]])

        files = ray.data.from_items([{"path": f} for f in self.files], override_num_blocks=max(1, len(self.files)))
        return files.map_batches(read, batch_size=1, batch_format="numpy")


def later_rows(keys: Keys, key_columns: list[str], explode: str | None, distributed: bool):
    """(_order, _first) for every row whose bucket key an earlier row has, `_first` being the bucket's earliest
    row; a row in several shared buckets has one link per bucket (unique pairs). `explode` names a list column
    of bucket keys (MinHash bands: one bucket per band); else `key_columns` hold one key per row."""
    import polars as pl

    cols = ["_order", explode] if explode else ["_order", *key_columns]
    on = [explode] if explode else key_columns
    if distributed:
        return _later_rows_ray(keys, cols, on, explode)
    frame = keys.scan(cols)
    if explode:
        frame = frame.explode(explode)
    # The group-by holds every distinct bucket key: in partitions of the keys' hash, each pass over the key files
    # holds one partition's keys (a bucket lies in one partition, so the links are the same), and the memory
    # stays about what PART_KEYS keys take whatever the corpus size.
    parts = max(1, -(-keys.rows() * (keys.width(explode) if explode else 1) // PART_KEYS))
    out = []
    for part in range(parts):
        piece = frame if parts == 1 else frame.filter(pl.struct(on).hash(seed=0) % parts == part)
        firsts = piece.group_by(on).agg(pl.col("_order").min().alias("_first"))
        out.append(piece.join(firsts, on=on).filter(pl.col("_order") != pl.col("_first"))
                   .select("_order", "_first").unique().collect(engine="streaming"))
    return out[0] if parts == 1 else pl.concat(out).unique()


def _later_rows_ray(keys: Keys, cols: list[str], on: list[str], explode: str | None):
    import polars as pl
    import pyarrow.compute as pc
    import ray
    from ray.data.aggregate import Min

    ds = keys.ray(cols)
    if explode:
        def long(batch: pa.Table) -> pa.Table:
            lists = batch[explode].combine_chunks()
            return pa.table({"_order": pc.take(batch["_order"], pc.list_parent_indices(lists)),
                             explode: pc.list_flatten(lists)})

        ds = ds.map_batches(long, batch_format="pyarrow", batch_size=None)
    parts = max(2, int(ray.cluster_resources().get("CPU", 2)))
    firsts = ds.groupby(on).aggregate(Min("_order", alias_name="_first"))
    joined = ds.join(firsts, join_type="inner", num_partitions=parts, on=tuple(on))

    def links(batch: pa.Table) -> pa.Table:
        keep = pc.not_equal(batch["_order"], batch["_first"])
        return batch.filter(keep).select(["_order", "_first"])

    tables = [b for b in joined.map_batches(links, batch_format="pyarrow").iter_batches(batch_format="pyarrow")]
    if not tables:
        return pl.DataFrame(schema={"_order": pl.Int64, "_first": pl.Int64})
    return pl.from_arrow(pa.concat_tables(tables)).unique()


def components(links: Any) -> Any:
    """Join links (_order, _first) into duplicate sets: (_order, _first) for every row of a set but its earliest,
    `_first` being the set's earliest row (scipy's connected components; links are few: one per duplicate)."""
    import polars as pl
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if links.height == 0:
        return pl.DataFrame(schema={"_order": pl.Int64, "_first": pl.Int64})
    a, b = links["_order"].to_numpy(), links["_first"].to_numpy()
    nodes, idx = np.unique(np.concatenate([a, b]), return_inverse=True)
    n = len(nodes)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (idx[: len(a)], idx[len(a):])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    first = np.full(label.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, label, nodes)  # nodes are sorted: the minimum is the earliest row
    roots = first[label]
    later = nodes != roots
    return pl.DataFrame({"_order": nodes[later], "_first": roots[later]})
