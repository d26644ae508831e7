"""retrieval_pairs: hard negatives by retrieval (Re-Align style). For each prompt, `chosen` is its answer (the
best-scored candidate, else the candidate of `chosen_model`, else the first) and `rejected` is the answer to the
most similar *different* prompt in a pool: fluent and on a nearby topic, but an answer to another question.

Prompts and pool prompts are embedded with sentence-transformers (the packaged all-MiniLM-L6-v2 by default, or
any local model folder) and searched exactly with numpy (the pool's unit vectors times each shard's, in chunks).
The pool is a side file of {prompt, response} records (dotted field paths, so an Arena-Hard answer file works
as is); its embeddings are built once per worker and held in memory (384 float32 per pool row). A pool prompt
counts as "the same prompt" when its similarity is at least `same_prompt`, and is skipped. Pairs whose chosen
and rejected responses are near-identical (cosine >= `max_response_similarity`, 0.95 as in Re-Align) are
dropped with the reason, as are prompts with no candidate.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from pydantic import Field, field_validator

from curate.judges.jury import mean_score
from curate.schemas.records import PAIR_ROW
from curate.schemas.rows import PAIR_HEAD, PAIR_HEAD_CARRIED, pair_head
from curate.schemas.validate import quarantine_table
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec, existing_path, fixed


class Pool(StageConfig):
    path: Path
    prompt_field: str = "prompt"
    response_field: str = "response"
    #: the pool answers' model: a fixed name, or a field
    model: str | None = None
    model_field: str | None = None
    id_field: str | None = None

    _exists = field_validator("path")(existing_path)


class Config(StageConfig):
    pool: Pool
    #: a local sentence-transformers folder; default: the packaged all-MiniLM-L6-v2
    model: str | None = None
    #: which candidate is chosen when none is scored
    chosen_model: str | None = None
    #: pool prompts at least this similar to the prompt are the same prompt, not a negative
    same_prompt: float = Field(0.98, gt=0, le=1)
    max_response_similarity: float = Field(0.95, gt=0, le=1)
    batch_size: int = Field(64, ge=1)


def _pool(cfg: Config, ctx: StageContext):
    """(pool vectors, pool records) for this worker, built once."""

    from curate.engines import embed
    from curate.schemas.sources import dig, records as source_rows

    key = ("retrieval_pool", str(cfg.pool.path), cfg.model)
    if key not in ctx.state:
        if ("embedder", cfg.model) not in ctx.state:
            ctx.state[("embedder", cfg.model)] = embed.load(cfg.model)
        model = ctx.state[("embedder", cfg.model)]
        prompts, records = [], []
        for row in source_rows(cfg.pool.path):
            n, rec = row.number, row.record
            if row.error or not isinstance(rec, dict):
                continue
            prompt, response = dig(rec, cfg.pool.prompt_field), dig(rec, cfg.pool.response_field)
            if not (isinstance(prompt, str) and isinstance(response, str) and response.strip()):
                continue
            model_name = cfg.pool.model or (str(dig(rec, cfg.pool.model_field)) if cfg.pool.model_field else cfg.pool.path.stem)
            rid = str(dig(rec, cfg.pool.id_field)) if cfg.pool.id_field else f"{cfg.pool.path.name}:{n}"
            prompts.append(prompt)
            records.append((prompt, response, model_name, rid))
        vectors = embed.encode_cached(ctx.calls, cfg.model, model, prompts, cfg.batch_size)
        ctx.state[key] = (vectors, records)
    return ctx.state[("embedder", cfg.model)], *ctx.state[key]


def chosen_candidate(row: dict, cfg: Config) -> dict | None:
    cands = row.get("candidates") or []
    scored = [(m, c) for c in cands if (m := mean_score(c)) is not None]
    if scored:
        return max(scored, key=lambda t: (t[0], t[1]["candidate_id"]))[1]
    if cfg.chosen_model:
        return next((c for c in cands if c["model"] == cfg.chosen_model), None)
    return cands[0] if cands else None


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    import numpy as np

    from curate.engines import embed

    model, pool_vecs, pool = _pool(cfg, ctx)
    rows = table.to_pylist()
    chosen = [chosen_candidate(row, cfg) for row in rows]
    live = [i for i, c in enumerate(chosen) if c is not None]
    out, dropped, reasons = [], [], []
    for i, row in enumerate(rows):
        if chosen[i] is None:
            dropped.append(row)
            reasons.append("no candidate to be chosen" + (f" (none from {cfg.chosen_model})" if cfg.chosen_model else ""))
    if live and len(pool):
        q = embed.encode_cached(ctx.calls, cfg.model, model, [rows[i]["prompt"] for i in live], cfg.batch_size)
        sims = q @ pool_vecs.T  # shard x pool; a shard is small, the pool is held anyway
        picks = []
        for k, i in enumerate(live):
            order = np.argsort(-sims[k])
            j = next((int(j) for j in order if sims[k, j] < cfg.same_prompt and pool[j][0] != rows[i]["prompt"]), None)
            picks.append(j)
        pairs = [(i, j) for i, j in zip(live, picks, strict=True) if j is not None]
        for i, j in zip(live, picks, strict=True):
            if j is None:
                dropped.append(rows[i])
                reasons.append("no different prompt in the pool")
        if pairs:
            a = embed.encode_cached(ctx.calls, cfg.model, model, [chosen[i]["response"] for i, _ in pairs],
                                    cfg.batch_size)
            b = embed.encode_cached(ctx.calls, cfg.model, model, [pool[j][1] for _, j in pairs], cfg.batch_size)
            cos = np.sum(a * b, axis=1)
            for (i, j), c in zip(pairs, cos, strict=True):
                row, cand, (p_prompt, p_resp, p_model, p_id) = rows[i], chosen[i], pool[j]
                if c >= cfg.max_response_similarity:
                    dropped.append(row)
                    reasons.append(f"near-identical responses: cosine {c:.3f} >= {cfg.max_response_similarity:g}")
                    continue
                out.append(pair_head(row) | {
                    "chosen": cand["response"], "rejected": p_resp,
                    "chosen_model": cand["model"], "rejected_model": f"retrieved:{p_model}",
                    "chosen_id": cand["candidate_id"], "rejected_id": p_id, "judge": "retrieval",
                    "retrieved_prompt": p_prompt, "prompt_similarity": float(sims[live.index(i), j]),
                    "response_similarity": float(c),
                })
    elif live:
        for i in live:
            dropped.append(rows[i])
            reasons.append(f"the pool {cfg.pool.path.name} has no usable records")
    return StageResult(out=pa.Table.from_pylist(out, schema=PAIR_ROW),
                       dropped=quarantine_table(dropped, reasons))


STAGE = StageSpec(
    name="retrieval_pairs",
    config=Config,
    reads=fixed("prompt_id", "prompt", "messages", "candidates", "candidates.response"),
    writes=lambda cfg: set(PAIR_HEAD) | {"retrieved_prompt", "prompt_similarity", "response_similarity"},
    derived_from=PAIR_HEAD_CARRIED,
    doc="Hard negatives by retrieval: chosen = the prompt's answer, rejected = the answer to the most similar "
    "different prompt in a pool (sentence-transformers + exact numpy search); near-identical pairs dropped.",
    process=process,
    reshapes=True,
    keeps_model=True,
)
