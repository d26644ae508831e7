"""What a run costs: tokens per stage and engine from the served model's own `usage`, priced by the pipeline's
`prices:`; a cached rerun shows what the cache saved; `budget_usd` stops a run before it spends more, and
`--resume --budget-usd MORE` finishes it without asking anything twice. The model is the embedded SmolLM2 behind
llama-cpp-python's OpenAI-compatible server (a real served model); the prices are the user's own entries."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from conftest import accounted, curate

PROMPTS = ["Name a fruit and say why people like it.", "Explain what a planet is in one sentence.",
           "Give one tip for learning to cook.", "What is the capital of France?"]
#: USD per million tokens: made-up prices, large enough that a few hundred tokens cost cents
PRICES = {"smollm2": {"input": 100.0, "output": 400.0}, "smollm2-judge": {"input": 50.0, "output": 200.0}}


def priced_pipeline(tmp_path: Path, base_url: str, cache: Path, **top) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    engine = {"kind": "openai_http", "base_url": base_url, "concurrency": 4, "grammar_param": "grammar"}
    pipeline = {
        "name": "priced", "cache_dir": str(cache), "prices": PRICES, **top,
        "engines": {"gen": {**engine, "model": "smollm2"}, "judge": {**engine, "model": "smollm2-judge"}},
        "stages": [{"load": {"path": str(prompts), "shard_size": 2}},
                   {"generate": {"models": [{"engine": "gen", "k": 3, "max_tokens": 24, "seed": 3}]}},
                   {"judge": {"engine": "judge", "template": "mt_bench_single_v1",
                              "sampling": {"temperature": 1.0, "max_tokens": 160}}},
                   {"pairs": {"min_margin": 1, "allow_truncated": True}},
                   {"export": {"format": "trl"}}],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


def usd(tokens_in: int, tokens_out: int, model: str) -> float:
    return tokens_in * PRICES[model]["input"] / 1e6 + tokens_out * PRICES[model]["output"] / 1e6


def test_tokens_and_cost_per_stage_and_engine_then_a_cached_rerun_shows_what_it_saved(llama_server, tmp_path):
    path = priced_pipeline(tmp_path, llama_server, tmp_path / "cache")
    first = curate("run", path, "--run-dir", tmp_path / "run")
    assert first.returncode == 0, first.stdout + first.stderr
    m = accounted(tmp_path / "run")
    gen, judge = m["stages"][1], m["stages"][2]
    for stage, engine, model in ((gen, "gen", "smollm2"), (judge, "judge", "smollm2-judge")):
        e = stage["cost"]["engines"][engine]
        assert e["model"] == model and e["calls"] == stage["model_calls"] > 0 and e["hits"] == 0
        assert e["prompt_tokens"] > 0 and e["completion_tokens"] > 0
        assert e["usd"] == pytest.approx(usd(e["prompt_tokens"], e["completion_tokens"], model), abs=1e-6)
        assert stage["cost"]["usd"] == e["usd"] and stage["tokens"]["prompt_tokens"] == e["prompt_tokens"]
        assert e["price"] == "pipeline" and e["batch_price"] is False
    # generation answers 12 requests of at most 24 tokens
    assert gen["tokens"]["completion_tokens"] <= 12 * 24
    cost = m["cost"]
    assert cost["usd"] == pytest.approx(gen["cost"]["usd"] + judge["cost"]["usd"], abs=1e-6)
    exported = m["stages"][-1]["rows_out"]
    assert exported > 0 and cost["per_exported_row_usd"] == pytest.approx(cost["usd"] / exported, rel=1e-4)
    assert cost["saved_usd"] == 0
    assert "cost" in first.stdout and f"${cost['usd']:.4f}" in first.stdout

    shown = curate("show", tmp_path / "run")
    assert f"${gen['cost']['usd']:.4f}" in shown.stdout and f"${judge['cost']['usd']:.4f}" in shown.stdout

    # the same pipeline again, same cache: no call is made, nothing is spent, the cache saved the first run's cost
    again = curate("run", path, "--run-dir", tmp_path / "again")
    assert again.returncode == 0, again.stdout + again.stderr
    m2 = accounted(tmp_path / "again")
    assert m2["cost"]["usd"] == 0 and all(s["model_calls"] == 0 for s in m2["stages"])
    assert m2["stages"][1]["cost"]["saved_usd"] == pytest.approx(gen["cost"]["usd"], abs=1e-6)
    assert m2["cost"]["saved_usd"] == pytest.approx(cost["usd"], abs=1e-6)


def ledger_usd(run_dir: Path) -> float:
    with sqlite3.connect(run_dir / "_work" / "spend.sqlite") as db:
        return db.execute("SELECT COALESCE(SUM(usd), 0) FROM spend").fetchone()[0]


def test_a_budget_stops_the_run_then_resume_with_a_larger_budget_finishes_it_paying_nothing_twice(
        llama_server, tmp_path):
    # what the whole run costs, and asks, without a budget (its own cache)
    (tmp_path / "f").mkdir()
    full = curate("run", priced_pipeline(tmp_path / "f", llama_server, tmp_path / "f" / "cache"),
                  "--run-dir", tmp_path / "f" / "run")
    assert full.returncode == 0, full.stdout + full.stderr
    whole = accounted(tmp_path / "f" / "run")
    calls = sum(s["model_calls"] for s in whole["stages"])
    gen_usd = whole["stages"][1]["cost"]["usd"]

    # a budget that covers about half the generation: the run stops in it, having spent no more than the budget
    budget = round(gen_usd / 2, 6)
    path = priced_pipeline(tmp_path, llama_server, tmp_path / "cache", budget_usd=budget)
    stopped = curate("run", path, "--run-dir", tmp_path / "run")
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr
    assert "stopped: budget" in stopped.stderr and "--budget-usd" in stopped.stderr
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["status"] == "stopped" and m["stopped"] == "budget" and "budget reached" in m["error"]
    assert 0 < ledger_usd(tmp_path / "run") <= budget + 1e-9
    with sqlite3.connect(tmp_path / "cache" / "responses.sqlite") as db:
        answered = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    assert 0 < answered < 12

    # a resume with a larger budget goes on: the answers already paid for come from the cache
    resumed = curate("run", "--resume", tmp_path / "run", "--budget-usd", "100")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    m = accounted(tmp_path / "run")
    assert sum(s["model_calls"] for s in m["stages"]) + answered == calls
    assert m["stages"][1]["cache_hits"] == answered
    assert ledger_usd(tmp_path / "run") <= 100


@pytest.mark.fast
def test_a_budget_on_a_model_without_a_price_is_refused_before_anything_runs(tmp_path):
    path = priced_pipeline(tmp_path, "http://127.0.0.1:9/v1", tmp_path / "cache", budget_usd=1.0)
    data = yaml.safe_load(path.read_text())
    data["prices"] = {"smollm2": PRICES["smollm2"]}  # the judge's model has no price anywhere
    path.write_text(yaml.safe_dump(data))
    res = curate("validate", path)
    assert res.returncode == 2
    assert "engine 'judge' (model 'smollm2-judge') has no known price" in res.stderr


@pytest.mark.fast
def test_the_ledger_reserves_what_fits_every_limit_and_settles_to_what_was_spent(tmp_path):
    """Two workers of one run share the ledger: a reservation takes the longest prefix of requests that keeps
    both the run's and the stage's limit, and settling replaces the most by the real cost."""
    from curate.engines.base import Completion, Request, Sampling
    from curate.engines.budget import Budget, Ledger
    from curate.engines.prices import Price

    price = Price(input=1e6, output=1e6)  # a dollar a token: the arithmetic is easy to read
    limits = {None: 200.0, "02_generate": 150.0}
    one, two = (Budget(Ledger(tmp_path / "spend.sqlite"), "02_generate", limits, price, False) for _ in range(2))
    # at most 8 + 2 x 16 (template) prompt tokens and 10 completion tokens
    ask = Request([{"role": "user", "content": "x" * 8}], Sampling(max_tokens=10))
    assert one.most(ask) == 50.0
    rid, fits = one.reserve([ask] * 5)
    assert fits == 3  # 150 of the stage's limit
    assert two.reserve([ask])[1] == 0  # the other worker sees the reservation
    one.settle(rid, [Completion("a", prompt_tokens=20, completion_tokens=10)] * 3)  # 90 spent, 60 left
    rid2, fits = two.reserve([ask] * 2)
    assert fits == 1 and one.ledger.spent("02_generate") == 140.0 and one.ledger.spent() == 140.0
    assert "stage 02_generate $140.0000 of $150" in str(two.exhausted(ask))
    # the batch price is half the list price when the table gives none
    assert Price(input=2, output=4).cost(1_000_000, 1_000_000, batch=True) == 3.0


def test_the_report_and_the_card_show_the_cost(llama_server, tmp_path):
    from curate.pipelines.publish import build_card

    path = priced_pipeline(tmp_path, llama_server, tmp_path / "cache")
    res = curate("run", path, "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stdout + res.stderr
    m = accounted(tmp_path / "run")
    total = f"${m['cost']['usd']:.4f}"
    rep = curate("report", tmp_path / "run")
    assert rep.returncode == 0, rep.stdout + rep.stderr
    page = (tmp_path / "run" / "report.html").read_text()
    assert "<h2>Cost</h2>" in page and total in page and "smollm2-judge" in page
    assert f"${m['stages'][1]['cost']['usd']:.4f}" in page
    card = build_card(tmp_path / "run", "org/priced", {"preference": ["data/preference/part-0.parquet"]}, "other")
    assert "What the model calls cost" in card and total in card and "| 03_judge | judge | smollm2-judge |" in card


def test_estimate_predicts_the_calls_and_prompt_tokens_a_run_then_records(tmp_path, monkeypatch):
    """The README's example on the embedded model: `curate estimate` (no model called, nothing written) names the
    requests each stage makes and their prompt tokens (the model's tokenizer and chat template); the run then
    records the same requests, generation's prompt tokens within 10%, and no more than the estimate's upper
    bounds (the judge reads candidates at most max_tokens long; answers at most max_tokens)."""
    from conftest import EXAMPLES

    env = {"CURATE_CACHE_DIR": str(tmp_path / "cache")}
    monkeypatch.setenv("CURATE_CACHE_DIR", env["CURATE_CACHE_DIR"])
    pipeline = EXAMPLES / "mt_bench_pairs.yaml"
    est = curate("estimate", pipeline, "--limit", "2", env=env)
    assert est.returncode == 0, est.stdout + est.stderr
    from curate.pipelines.config import load_pipeline
    from curate.pipelines.estimate import estimate

    predicted = {s["id"]: s["engines"].get("default") for s in estimate(load_pipeline(pipeline).with_limit(2))["stages"]}
    assert f"total: {sum(p['requests'] for p in predicted.values() if p)} requests" in est.stdout
    res = curate("run", pipeline, "--limit", "2", "--run-dir", tmp_path / "run", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    m = accounted(tmp_path / "run")
    gen, judge = (next(s for s in m["stages"] if s["id"] == sid) for sid in ("02_generate", "03_judge"))
    assert predicted["02_generate"]["requests"] == gen["model_calls"] == 8
    # a judge asks again when an output does not parse (up to `retries`: 1 here), which the estimate names apart
    assert predicted["03_judge"]["requests"] <= judge["model_calls"] <= 2 * predicted["03_judge"]["requests"]
    recorded = gen["tokens"]["prompt_tokens"]
    assert abs(predicted["02_generate"]["prompt_tokens"] - recorded) <= 0.1 * recorded
    assert gen["tokens"]["completion_tokens"] <= predicted["02_generate"]["completion_tokens_at_most"]
    per_judge_call = judge["tokens"]["prompt_tokens"] / judge["model_calls"]
    assert per_judge_call <= 1.1 * predicted["03_judge"]["prompt_tokens"] / predicted["03_judge"]["requests"]
    # a second estimate finds every answer in the cache: nothing left to pay
    again = estimate(load_pipeline(pipeline).with_limit(2))
    assert again["cached"] == again["requests"] and again["prompt_tokens"] == 0
