"""reference_margin: how a reference model already ranks each pair. Chosen and rejected are scored under the
reference model (log-probability of the response after the prompt, in its chat template; summed, and per token)
into `ref_logp_chosen`, `ref_logp_rejected`, `ref_margin` and `ref_margin_norm`.

"Preference learning algorithms do not learn rankings" shows that the reference model's ranking accuracy (the
share of pairs with ref_margin > 0) bounds what DPO learns; the run reports it (summed and per token). `keep:
hard` keeps only pairs the reference ranks wrong (what there is to learn), and `max_abs_margin` drops pairs whose
per-token margin is extreme (often formatting or length artefacts); each dropped pair says why. A response the
engine cannot score (too long for its context) quarantines its pair with the error.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field

from curate.schemas.records import PAIR_ROW
from curate.schemas.validate import quarantine_table
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec
from curate.schemas.rows import chat


class Config(StageConfig):
    #: a llama.cpp engine (the reference model; the embedded model by default)
    engine: str = "default"
    keep: Literal["all", "hard"] = "all"
    #: drop pairs whose per-token margin is larger than this in absolute value
    max_abs_margin: float | None = Field(None, gt=0)


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    engine = ctx.engine(cfg.engine)
    rows = table.to_pylist()
    items = []
    for row in rows:
        context = chat(row)
        items += [(context, row["chosen"]), (context, row["rejected"])]
    scores = engine.logprobs(items)
    out, dropped, reasons, bad, errors = [], [], [], [], []
    stats = {"pairs": 0.0, "ranked_right": 0.0, "ranked_right_norm": 0.0}
    for n, row in enumerate(rows):
        c, r = scores[2 * n], scores[2 * n + 1]
        if isinstance(c, str) or isinstance(r, str):
            bad.append(row)
            errors.append("reference scoring failed: " + "; ".join(x for x in (c, r) if isinstance(x, str)))
            continue
        (lc, nc), (lr, nr) = c, r
        norm = lc / max(nc, 1) - lr / max(nr, 1)
        row.update(ref_logp_chosen=lc, ref_logp_rejected=lr, ref_margin=lc - lr, ref_margin_norm=norm)
        stats["pairs"] += 1
        stats["ranked_right"] += float(lc > lr)
        stats["ranked_right_norm"] += float(norm > 0)
        if cfg.keep == "hard" and norm > 0:
            dropped.append(row)
            reasons.append(f"easy for the reference model: per-token margin {norm:.3f} > 0")
        elif cfg.max_abs_margin is not None and abs(norm) > cfg.max_abs_margin:
            dropped.append(row)
            reasons.append(f"extreme reference margin: |{norm:.3f}| > {cfg.max_abs_margin:g} per token")
        else:
            out.append(row)
    return StageResult(out=pa.Table.from_pylist(out, schema=PAIR_ROW),
                       dropped=quarantine_table(dropped, reasons),
                       quarantined=quarantine_table(bad, errors), stats=stats)


def summarize(stats: dict[str, float]) -> dict[str, float]:
    n = stats.get("pairs", 0)
    if not n:
        return {}
    return {"ranking_accuracy": stats["ranked_right"] / n, "ranking_accuracy_per_token": stats["ranked_right_norm"] / n,
            "pairs_scored": int(n)}


STAGE = StageSpec(
    name="reference_margin",
    config=Config,
    reads=lambda cfg: {"messages", "system", "chosen", "rejected"},
    writes=lambda cfg: {"ref_logp_chosen", "ref_logp_rejected", "ref_margin", "ref_margin_norm"},
    doc="Score chosen and rejected under a reference model (llama.cpp log-probs); report its ranking accuracy; "
    "optionally keep only the pairs it ranks wrong or drop extreme margins.",
    process=process,
    engines=lambda cfg: [cfg.engine],
    needs=frozenset({"logprobs"}),
    summarize=summarize,
)
