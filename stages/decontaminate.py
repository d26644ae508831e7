"""decontaminate: drop rows whose text shares a word n-gram (13 by default) with a benchmark's prompts.

Benchmarks are files read like `load` reads prompts (JSONL, JSON, Parquet, saved `datasets`), every string of
the mapped field counted (all MT-Bench turns, not only the first). The dropped row's reason names the benchmark
and the matching span. A text shorter than n words matches only a benchmark text that is, normalized, the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curate.schemas.validate import quarantine_table
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec, existing_path
from curate.stages.textsig import ngram_hashes


class Benchmark(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    path: Path
    #: the field holding the benchmark's prompt text, or a list of texts (MT-Bench `turns`)
    field: str = "prompt"

    _exists = field_validator("path")(existing_path)


class Config(StageConfig):
    benchmarks: list[Benchmark] = Field(min_length=1)
    #: the text columns checked
    fields: list[str] = Field(default_factory=lambda: ["prompt"])
    ngram: int = Field(13, ge=3)


def benchmark_texts(bench: Benchmark):
    from curate.schemas.sources import records

    for row in records(bench.path):
        rec = row.record
        if row.error or not isinstance(rec, dict):
            continue
        value = rec.get(bench.field)
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and text.strip():
                yield text


def build_index(cfg: Config) -> dict[int, tuple[str, str]]:
    """n-gram hash -> (benchmark, one of its texts); built once per worker."""
    index: dict[int, tuple[str, str]] = {}
    for bench in cfg.benchmarks:
        batch: list[str] = []
        for text in [*benchmark_texts(bench), None]:
            if text is not None:
                batch.append(text)
            if batch and (text is None or len(batch) >= 1024):
                grams, offsets = ngram_hashes(batch, cfg.ngram)
                for i, t in enumerate(batch):
                    for g in grams[offsets[i]:offsets[i + 1]].tolist():
                        index.setdefault(g, (bench.name, t))
                batch = []
    return index


def matching_span(text: str, bench_text: str, n: int) -> str:
    """The first run of n words of `text` that also occurs in `bench_text` (for the reason, human-readable)."""
    words = text.split()
    norm = " ".join(bench_text.lower().split())
    for i in range(max(1, len(words) - n + 1)):
        span = " ".join(words[i:i + n])
        if " ".join(span.lower().split()) in norm:
            return span
    return " ".join(words[:n])


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    if "benchmarks" not in ctx.state:
        index = ctx.state["benchmarks"] = build_index(cfg)
        ctx.state["benchmark_grams"] = np.fromiter(index.keys(), dtype=np.uint64, count=len(index))
    index, bench_grams = ctx.state["benchmarks"], ctx.state["benchmark_grams"]
    hit: list[str | None] = [None] * table.num_rows
    for field in cfg.fields:
        texts = table[field].to_pylist()
        grams, offsets = ngram_hashes(texts, cfg.ngram)
        hits = np.flatnonzero(np.isin(grams, bench_grams))  # vectorized; only rows with a hit go through Python
        rows = np.searchsorted(offsets, hits, side="right") - 1  # the text each matching gram belongs to
        first = {}
        for i, g in zip(rows.tolist(), hits.tolist()):
            first.setdefault(i, g)
        for i, g in first.items():
            if hit[i] is None:
                name, bench_text = index[int(grams[g])]
                span = matching_span(texts[i], bench_text, cfg.ngram)
                hit[i] = f"contaminated: {field} shares a {cfg.ngram}-gram with {name}: {span!r}"
    keep = pa.array([h is None for h in hit], type=pa.bool_())
    dropped = table.filter(pa.compute.invert(keep)).to_pylist()
    return StageResult(out=table.filter(keep),
                       dropped=quarantine_table(dropped, [h for h in hit if h is not None]))


STAGE = StageSpec(
    name="decontaminate",
    config=Config,
    reads=lambda cfg: set(cfg.fields),
    writes=lambda cfg: set(),
    doc="Drop rows sharing a word n-gram (13 by default) with benchmark prompt files; the reason names the "
    "benchmark and the matching span.",
    process=process,
)
