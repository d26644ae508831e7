"""The stage contract.

A stage is a frozen pydantic config (`extra="forbid"`), the columns it `reads` and `writes`, and a function from
one Arrow batch (+ config, + a context that hands out engines) to a `StageResult`: the rows that go on, the rows
it filtered (`dropped`, with a reason) and the rows it could not process (`quarantined`, with the error).
Stage functions know nothing about Ray, shards or files: the runner does that wiring, so a stage is testable
on a small `pa.Table`.

To add a stage: write `stages/<name>.py` with a `Config` and a `STAGE = StageSpec(...)`, and list it in
`stages/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from curate.schemas.records import QUARANTINE_ROW


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class StageResult:
    out: pa.Table
    dropped: pa.Table = field(default_factory=QUARANTINE_ROW.empty_table)
    quarantined: pa.Table = field(default_factory=QUARANTINE_ROW.empty_table)
    #: source rows accounted as "out" (differs from out.num_rows for stages that expand or collapse rows)
    out_sources: int | None = None
    #: source rows accounted as "dropped", when `dropped` also records finer-grained drops (candidate pairs of
    #: a prompt that still produced other pairs)
    dropped_sources: int | None = None
    #: rows read from the input, for source stages whose input is not a table (a file's lines)
    rows_in: int | None = None
    #: numbers the stage measured on this batch, summed over shards by the runner (see StageSpec.summarize)
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def n_out(self) -> int:
        return self.out.num_rows if self.out_sources is None else self.out_sources

    @property
    def n_dropped(self) -> int:
        return self.dropped.num_rows if self.dropped_sources is None else self.dropped_sources


class StageContext:
    """What a stage may use besides its batch: engines by name (created on first use, cached per worker)."""

    def __init__(self, engines: dict[str, Any] | None = None, cache: Any = None):
        from curate.engines.cache import CachedCalls

        self.engines = engines or {}
        #: reward and embedding models' calls through the response cache (`calls.map`), counted like engines'
        self.calls = CachedCalls(cache)
        #: per-worker state that outlives one batch (a loaded model or benchmark n-gram set, a dedup decision)
        self.state: dict[str, Any] = {}

    def engine(self, name: str):
        try:
            return self.engines[name]
        except KeyError:
            raise KeyError(f"engine {name!r} is not defined in the pipeline's engines block") from None


Columns = Callable[[Any], set[str]]


@dataclass(frozen=True)
class GlobalDecision:
    """How a stage that decides over its whole input (global dedup) splits its work so each part scales out.

    1. `keys`: one batch (with `_order`, the row's position in the stage's input, added by the runner) -> the few
       columns the decision needs (`_order`, `_id` and hashes, signatures or embeddings), per shard in parallel;
    2. `decide`: every shard's keys (a polars LazyFrame over their files) and whether the run is on a Ray cluster
       -> the rows to drop (`_order`, `reason`): group-bys and joins on polars' streaming engine on one machine,
       Ray Data's hash shuffles on a cluster;
    3. the stage's `process` then drops those rows shard by shard, in parallel (`ctx.state["decisions"]`).
    "First" is the lowest `_order`, so the kept rows do not depend on shard, worker or node counts.
    """

    keys: Callable[[pa.Table, Any, StageContext], pa.Table]
    decide: Callable[[Any, Any, bool], pa.Table]


def fixed(*names: str) -> Columns:
    return lambda cfg: set(names)


@dataclass(frozen=True)
class StageSpec:
    name: str
    config: type[StageConfig]
    reads: Columns
    writes: Columns
    doc: str
    #: batch -> result; None for a source stage
    process: Callable[[pa.Table, Any, StageContext], StageResult] | None = None
    #: config -> batches of results; only the first stage of a pipeline (load) is a source
    source: Callable[[Any], Iterator[StageResult]] | None = None
    #: the output rows have a new shape (prompt rows -> pair rows): upstream columns do not carry over
    reshapes: bool = False
    #: the stage keeps or drops rows by a decision over its whole input, made in parallel steps (GlobalDecision)
    decides: GlobalDecision | None = None
    #: the stage loads a model of its own (an embedder): run it as an actor pool, so the model outlives a shard
    keeps_model: bool | Callable[[Any], bool] = False
    #: rows the runner hands `process` (or a global decision's `keys`) at once, when the run sets no
    #: `batch_size`; None: 64 for a stage with a model (what a kill can cost beyond the cache), a whole shard
    #: for a pure one. An embedding model wants large calls: it sorts a call's texts by length, so it pads less
    batch_rows: Callable[[Any], int | None] = lambda cfg: None
    #: the engine names a config uses (model-backed stages run as actor pools, one engine per actor)
    engines: Callable[[Any], list[str]] = lambda cfg: []
    #: summed `stats` -> the figures the run reports (e.g. {"ranking_accuracy": correct / pairs})
    summarize: Callable[[dict[str, float]], dict[str, float]] | None = None
    #: engine capabilities every engine the stage uses must have (engines/config.py: CAPABILITIES), or a function
    #: (config, engine name) -> capabilities when they differ by engine (caption's vision engine reads images);
    #: checked by `curate validate`, so a stage on an engine that cannot serve it fails before anything runs
    needs: frozenset[str] | Callable[[Any, str], frozenset[str]] = frozenset()

    def uses_model(self, cfg: Any) -> bool:
        """The stage loads a model of its own under this config (dedup does only with `method: semantic`)."""
        return self.keeps_model(cfg) if callable(self.keeps_model) else self.keeps_model

    def needs_of(self, cfg: Any, engine: str) -> frozenset[str]:
        return self.needs(cfg, engine) if callable(self.needs) else self.needs
    #: output columns the stage writes only when an upstream stage wrote the column named here (pairs carry
    #: `strength` from strength judges' `candidates.judgments.strength`, `persona` from a prompt's persona): the
    #: column flow (and so the export's default columns) then holds exactly what this pipeline fills
    derived_from: dict[str, str] = field(default_factory=dict)
    #: config defaults that depend on the columns upstream stages write: (config, available columns) -> config
    #: (export picks the provenance columns this pipeline made); applied when the pipeline loads
    resolve: Callable[[Any, set[str]], Any] | None = None
    #: the files that shape the stage's output, hashed by content into its fingerprint (None: every file the
    #: config points at, found by pipelines.fingerprint.input_files)
    inputs: Callable[[Any], list[Any]] | None = None


def existing_path(value: Any, info) -> Any:
    """Pydantic validator body: resolve a path against the YAML file's folder and require that it exists.

    Runs when the pipeline is loaded, so a missing file is reported with its YAML path before any work starts.
    """
    from pathlib import Path

    if value is None:
        return value
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir") if info is not None else None
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    if not path.exists():
        raise ValueError(f"file not found: {path}")
    return path.resolve()
