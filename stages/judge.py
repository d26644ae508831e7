"""judge: grade every candidate of every prompt, pointwise (a score per candidate; MT-Bench single-v1 by
default) or pairwise (every pair of candidates, in both orders; mt_bench_pair_v2), as the template says.

Judgments are appended to each candidate's `judgments` list, so several judge stages (other templates or
models) accumulate on the same candidates. The judge sees the final user turn as the question.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator

from engines.config import SamplingConfig
from judges.pairwise import compare
from judges.pointwise import grade
from judges.templates import TEMPLATE_DIR, load_template, template_path
from schemas.records import PROMPT_ROW_WITH_CANDIDATES
from schemas.validate import quarantine_table
from stages.base import StageConfig, StageContext, StageResult, StageSpec, fixed


class Config(StageConfig):
    engine: str = "default"
    #: the judge's label on its judgments (default "<model>:<template>"); name two judges apart when they
    #: share a model and template but differ in sampling
    name: str | None = None
    #: a built-in template name (see `curate stages`) or a path to a template YAML
    template: str = "mt_bench_single_v1"
    sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_tokens=512)
    #: extra tries for an output that does not parse
    retries: int = Field(1, ge=0)
    #: force the template's output grammar where the engine supports constrained decoding
    grammar: bool = True
    #: pairwise templates: what a verdict that flips under the position swap becomes
    inconsistent: Literal["tie", "drop"] = "tie"

    @field_validator("template")
    @classmethod
    def _template_exists(cls, value: str, info: ValidationInfo) -> str:
        base = (info.context or {}).get("base_dir")
        path = template_path(value, Path(base) if base else None)
        load_template(path)  # a broken template fails at load time, with this field's path
        return value if path.parent == TEMPLATE_DIR.resolve() else str(path)

    def resolved_template(self):
        return load_template(template_path(self.template))


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    template = cfg.resolved_template()
    engine = ctx.engine(cfg.engine)
    rows = table.to_pylist()
    sampling = cfg.sampling.sampling()
    failed: dict[int, list[str]] = {}

    def add(r: int, c: int, judgments: list[dict]) -> None:
        cand = rows[r]["candidates"][c]
        cand["judgments"] = list(cand.get("judgments") or []) + judgments

    if template.kind == "pointwise":
        items, where = [], []
        for r, row in enumerate(rows):
            for c, cand in enumerate(row["candidates"] or []):
                items.append((row["prompt"], cand["response"]))
                where.append((r, c))
        for (r, c), res in zip(where, grade(engine, template, items, sampling, cfg.retries, cfg.grammar,
                                            name=cfg.name), strict=True):
            if isinstance(res, dict):
                add(r, c, [res])
            else:
                failed.setdefault(r, []).append(f"candidate {c}: {res.error}")
    else:  # every pair of candidates, in both orders
        items, where = [], []
        for r, row in enumerate(rows):
            cands = row["candidates"] or []
            for a, b in combinations(range(len(cands)), 2):
                items.append((row["prompt"], cands[a]["response"], cands[b]["response"],
                              cands[a]["candidate_id"], cands[b]["candidate_id"]))
                where.append((r, a, b))
        results = compare(engine, template, items, sampling, cfg.retries, cfg.grammar, name=cfg.name,
                          inconsistent=cfg.inconsistent)
        for (r, a, b), res in zip(where, results, strict=True):
            if isinstance(res, tuple):
                add(r, a, res[0])
                add(r, b, res[1])
            else:
                failed.setdefault(r, []).append(f"candidates {a} vs {b}: {res.error}")
    good = [row for r, row in enumerate(rows) if r not in failed]
    bad = [rows[r] for r in sorted(failed)]
    return StageResult(
        out=pa.Table.from_pylist(good, schema=PROMPT_ROW_WITH_CANDIDATES),
        quarantined=quarantine_table("judge", bad, ["judge call failed: " + "; ".join(failed[r]) for r in sorted(failed)]),
    )


STAGE = StageSpec(
    name="judge",
    config=Config,
    reads=fixed("prompt", "candidates", "candidates.response"),
    writes=fixed("candidates.judgments", "candidates.judgments.score", "candidates.judgments.parse_ok"),
    doc="Grade candidates: pointwise (MT-Bench single-v1 by default) or pairwise with position swap "
    "(mt_bench_pair_v2); unparsable outputs are kept with parse_ok=false after retries, never given a score.",
    process=process,
    engines=lambda cfg: [cfg.engine],
)
