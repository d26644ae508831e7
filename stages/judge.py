"""judge: grade every candidate of every prompt with a pointwise template (MT-Bench single-v1 by default).

Judgments are appended to each candidate's `judgments` list, so several judge stages (other templates or
models) accumulate on the same candidates. The judge sees the final user turn as the question.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator

from engines.config import SamplingConfig
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
    items, where = [], []
    for r, row in enumerate(rows):
        for c, cand in enumerate(row["candidates"] or []):
            items.append((row["prompt"], cand["response"]))
            where.append((r, c))
    results = grade(engine, template, items, cfg.sampling.sampling(), cfg.retries, cfg.grammar, name=cfg.name)
    failed: dict[int, list[str]] = {}
    for (r, c), res in zip(where, results, strict=True):
        if isinstance(res, dict):
            cand = rows[r]["candidates"][c]
            cand["judgments"] = list(cand.get("judgments") or []) + [res]
        else:
            failed.setdefault(r, []).append(f"candidate {c}: {res.error}")
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
    doc="Pointwise grading of every candidate (MT-Bench single-v1 by default); unparsable outputs are kept "
    "with parse_ok=false after retries, never given a score.",
    process=process,
    engines=lambda cfg: [cfg.engine],
)
