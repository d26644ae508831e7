"""A run's tokens and money: what each stage's model calls cost per engine (from the engines' own token counts
and engines/prices.py), what the response cache saved, the run's total and its cost per exported row; and the
budget a stage's workers keep (engines/budget.py)."""

from __future__ import annotations

from typing import Any

from curate.engines.prices import engine_price, is_batch

TOKEN_KEYS = ("prompt_tokens", "completion_tokens", "saved_prompt_tokens", "saved_completion_tokens")


def add_usage(into: dict[str, dict[str, int]], usage: dict[str, dict[str, int]]) -> None:
    """Sum a shard's per-engine usage (a marker's `usage`) into a stage's."""
    for engine, counts in usage.items():
        mine = into.setdefault(engine, {})
        for k, v in counts.items():
            mine[k] = mine.get(k, 0) + v


def stage_cost(usage: dict[str, dict[str, int]], pipeline) -> dict[str, Any]:
    """The manifest's `tokens` and `cost` of one stage: per engine (its model, the price's source, batch or list
    price), the calls' USD and the USD the cache hits saved; `usd` is None when a served model has no price."""
    if not usage:
        return {}
    by_engine: dict[str, Any] = {}
    usd: float | None = 0.0
    saved: float | None = 0.0
    for name, u in sorted(usage.items()):
        cfg = pipeline.engines.get(name)
        price = engine_price(name, cfg, pipeline.prices) if cfg is not None else None
        batch = cfg is not None and is_batch(cfg)
        entry = {"model": getattr(cfg, "model", None) or getattr(cfg, "kind", None), **u}
        if price is None:
            entry["usd"] = None
            usd = saved = None
        else:
            cost = price.cost(u.get("prompt_tokens", 0), u.get("completion_tokens", 0), batch)
            spared = price.cost(u.get("saved_prompt_tokens", 0), u.get("saved_completion_tokens", 0), batch)
            entry |= {"usd": round(cost, 6), "saved_usd": round(spared, 6), "price": price.source,
                      "batch_price": batch}
            if usd is not None:
                usd, saved = usd + cost, saved + spared
        by_engine[name] = entry
    tokens = {k: sum(u.get(k, 0) for u in usage.values()) for k in TOKEN_KEYS}
    return {"tokens": tokens, "cost": {"usd": None if usd is None else round(usd, 6),
                                       "saved_usd": None if saved is None else round(saved, 6), "engines": by_engine}}


def run_cost(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's run-level `cost`: USD and tokens of all stages, saved USD, and per exported row (the last
    stage's output rows)."""
    priced = [s for s in stages if s.get("cost")]
    if not priced:
        return {}
    known = all(s["cost"]["usd"] is not None for s in priced)
    usd = sum(s["cost"]["usd"] or 0.0 for s in priced)
    saved = sum(s["cost"]["saved_usd"] or 0.0 for s in priced)
    rows = stages[-1].get("rows_out") or stages[-1].get("out") or 0
    return {"usd": round(usd, 6) if known else None, "saved_usd": round(saved, 6),
            "per_exported_row_usd": round(usd / rows, 8) if known and rows else None,
            "tokens": {k: sum(s["tokens"][k] for s in priced) for k in TOKEN_KEYS},
            "by_stage": {s["id"]: s["cost"]["usd"] for s in priced}}


def worker_budget(st, pipeline, engines: list[str]) -> dict[str, Any] | None:
    """What a stage's workers need to keep its budgets: the limits (the run's, under None; the stage's, under
    its id) and the price of each engine whose calls cost money."""
    limits = [[scope, usd] for scope, usd in ((None, pipeline.budget_usd), (st.id, st.run.budget_usd))
              if usd is not None]
    if not limits:
        return None
    prices = {}
    for name in engines:
        price = engine_price(name, pipeline.engines[name], pipeline.prices)
        if price is not None and (price.input or price.output):
            prices[name] = price.model_dump()
    return {"limits": limits, "prices": prices} if prices else None


COST_COLUMNS = ["stage", "engine", "model", "calls", "prompt tokens", "completion tokens", "cost", "saved", "price"]


def money(usd: float | None) -> str:
    return "unpriced" if usd is None else f"${usd:.4f}"


def cost_rows(manifest: dict[str, Any]) -> list[list[str]]:
    """One row per stage and engine (COST_COLUMNS), as `curate run`/`show`, the report and the card show it."""
    rows = []
    for s in manifest.get("stages", []):
        for name, e in (s.get("cost") or {}).get("engines", {}).items():
            price = "-" if e["usd"] is None else e["price"] + (" (batch price)" if e.get("batch_price") else "")
            rows.append([s["id"], name, str(e["model"]), str(e["calls"]), str(e["prompt_tokens"]),
                         str(e["completion_tokens"]), money(e["usd"]), money(e.get("saved_usd")), price])
    return rows


def cost_line(manifest: dict[str, Any]) -> str:
    """The run's total, per exported row, and what the cache saved, in one sentence ("" without model calls)."""
    cost = manifest.get("cost")
    if not cost:
        return ""
    per_row = cost.get("per_exported_row_usd")
    return (f"cost: {money(cost['usd'])} for this run" + (f", ${per_row:.6f} per exported row" if per_row is not None
                                                          else "")
            + (f"; the cache saved {money(cost['saved_usd'])}" if cost.get("saved_usd") else ""))
