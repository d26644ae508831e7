"""Ranked lists and every export format: Arena-Hard's three real answers per prompt, judged by the embedded
model from YAML, become a ranked dataset and, from the same (cached) judgments, KTO and reward data."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from conftest import curate
from curate.schemas.records import PROMPT_ROW_WITH_CANDIDATES
from curate.stages import rank
from curate.stages.base import StageContext
from test_pairs_export import candidate, judgment, prompt_row

MODELS = ["gpt-4-0314", "gpt-4-0613", "gpt-3.5-turbo-0125"]


def test_rankdpo_phi_counts_wins_over_judges_and_halves_ties():
    row = prompt_row("p", candidate("a", "A", judgment(9, judge="j1"), judgment(7, judge="j2")),
                     candidate("b", "B", judgment(5, judge="j1"), judgment(7, judge="j2")),
                     candidate("c", "C", judgment(1, judge="j1"), judgment(2, judge="j2")),
                     candidate("d", "D", judgment(None, ok=False, judge="j1")))
    table = pa.Table.from_pylist([row], schema=PROMPT_ROW_WITH_CANDIDATES)
    (r,) = rank.process(table, rank.Config(), StageContext()).out.to_pylist()
    # a: j1 beats b, c; j2 ties b, beats c -> 3.5 / (2 * 2); b: 1 + 1.5 = 2.5/4; c: 0
    assert r["responses"] == ["A", "B", "C"] and r["rank"] == [1, 2, 3]
    assert r["ranking_score"] == [3.5 / 4, 2.5 / 4, 0.0]
    assert r["judges"] == ["j1", "j2"] and r["scores"][0] == [9.0, 7.0]


def arena_pipeline(tmp_path: Path, repo_data: Path, tail: list[dict]) -> Path:
    data = repo_data / "arena_hard_v0.1"
    pipeline = {
        "name": "arena_rank",
        "engines": {"default": {"kind": "llama_cpp", "n_ctx": 4096}},
        "stages": [
            {"load": {"path": str(data / "question.jsonl"), "id_field": "uid", "limit": 3, "candidates": [
                {"path": str(data / f"model_answer_{m}.jsonl"), "id_field": "uid",
                 "response_field": "messages.-1.content.answer", "model_field": "model"} for m in MODELS]}},
            {"judge": {"template": "mt_bench_single_v1", "sampling": {"temperature": 1.0, "max_tokens": 96}}},
            *tail,
        ],
    }
    path = tmp_path / f"pipeline-{len(tail)}-{list(tail[-1]['export'].values())[0]}.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def arena_runs(tmp_path_factory, request):
    from conftest import TEST_DATA

    tmp = tmp_path_factory.mktemp("arena")
    ranked = arena_pipeline(tmp, TEST_DATA, [{"rank": {}}, {"export": {"format": "ranked"}}])
    res = curate("run", ranked, "--run-dir", tmp / "ranked")
    assert res.returncode == 0, res.stdout + res.stderr
    kto = arena_pipeline(tmp, TEST_DATA, [{"pairs": {"strategy": "all_pairs", "min_margin": 0, "ties": "keep"}},
                                            {"export": {"format": "kto"}}])
    res = curate("run", kto, "--run-dir", tmp / "kto")
    assert res.returncode == 0, res.stdout + res.stderr
    return tmp


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_arena_hard_answers_become_a_ranked_dataset(arena_runs):
    m = manifest(arena_runs / "ranked")
    assert all(s["balanced"] for s in m["stages"])
    judge = m["stages"][1]
    assert judge["model_calls"] >= 9  # 3 prompts x 3 real answers, plus retries of unparsed outputs

    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(arena_runs / "ranked" / "04_export"), split="train")
    assert ds.num_rows + m["stages"][2]["dropped"] == 3
    for row in ds:
        assert sorted(row["models"]) == sorted(MODELS[: len(row["models"])]) or set(row["models"]) <= set(MODELS)
        assert row["rank"] == list(range(1, len(row["responses"]) + 1))
        assert row["ranking_score"] == sorted(row["ranking_score"], reverse=True)
        assert all(0 <= s <= 1 for s in row["ranking_score"])


def test_kto_export_from_the_same_judgments_costs_no_model_calls(arena_runs):
    m = manifest(arena_runs / "kto")
    assert m["stages"][1]["model_calls"] == 0 and m["stages"][1]["cache_hits"] >= 9
    pairs, export = m["stages"][2], m["stages"][3]
    assert export["rows_out"] == 2 * pairs["rows_out"]  # one row per side of every pair
    import datasets

    if export["rows_out"]:
        ds = datasets.load_dataset("parquet", data_dir=str(arena_runs / "kto" / "04_export"), split="train")
        assert ds.column_names[:3] == ["prompt", "completion", "label"]
        assert sum(ds["label"]) == ds.num_rows // 2


@pytest.mark.parametrize("tail", [
    [{"pairs": {"strategy": "best_vs_random", "min_margin": 0, "ties": "keep", "seed": 3}},
     {"filter": {"max_longer_share": 0.55, "languages": ["en"], "min_length": 1, "drop_refusals": True}},
     {"dedup": {"method": "minhash", "field": "chosen"}},
     {"export": {"format": "reward"}}],
    [{"pairs": {"strategy": "top_k_vs_bottom_k", "k": 1, "min_margin": 0, "ties": "keep"}},
     {"filter": {"min_margin": 0, "max_length": 20000}},
     {"export": {"format": "trl", "conversational": True}}],
], ids=["random-filter-dedup-reward", "topk-trl-conversational"])
def test_strategies_and_filters_from_yaml_on_arena_answers(arena_runs, tail, tmp_path):
    from conftest import TEST_DATA

    path = arena_pipeline(tmp_path, TEST_DATA, tail)
    res = curate("run", path, "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stdout + res.stderr
    m = manifest(tmp_path / "run")
    assert m["stages"][1]["model_calls"] == 0  # the judgments are the cached ones of the ranked run
    for s in m["stages"]:
        assert s["in"] == s["out"] + s["dropped"] + s["quarantined"], s
    import datasets

    export = m["stages"][-1]
    if export["rows_out"]:
        ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "run" / export["id"]), split="train")
        assert {"chosen", "rejected"} <= set(ds.column_names)
