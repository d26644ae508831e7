"""Curation stages from YAML on real data: dedup (exact and MinHash) and decontamination of Arena-Hard prompts
with planted duplicates and MT-Bench leaks; filters and length-bias control on pairs of real answers."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from conftest import curate
from curate.schemas.records import PAIR_ROW
from curate.stages import filter as filter_stage
from curate.stages.base import StageContext


def planted_corpus(tmp_path: Path, repo_data: Path) -> tuple[Path, dict]:
    arena = [json.loads(line) for line in open(repo_data / "arena_hard_v0.1" / "question.jsonl")]
    mt = [json.loads(line) for line in open(repo_data / "fastchat_mt_bench" / "question.jsonl")]
    rows = [{"uid": q["uid"], "prompt": q["prompt"]} for q in arena]
    long_ones = [q for q in arena if len(q["prompt"].split()) >= 25]
    exact = [{"uid": f"exact-{i}", "prompt": "  " + q["prompt"].upper() + " "} for i, q in enumerate(long_ones[:10])]
    near = [{"uid": f"near-{i}", "prompt": q["prompt"] + " Please keep the answer short."}
            for i, q in enumerate(long_ones[10:20])]
    leaks = [{"uid": f"leak-{i}", "prompt": q["turns"][i % 2]} for i, q in enumerate(mt[:10])
             if len(q["turns"][i % 2].split()) >= 13]
    path = tmp_path / "prompts.jsonl"
    with open(path, "w") as fh:
        for r in rows + exact + near + leaks:
            fh.write(json.dumps(r) + "\n")
    return path, {"exact": exact, "near": near, "leaks": leaks, "total": len(rows) + len(exact) + len(near) + len(leaks)}


def test_dedup_and_decontaminate_prompts_from_yaml(tmp_path, repo_data):
    prompts, planted = planted_corpus(tmp_path, repo_data)
    pipeline = {
        "name": "curate_prompts",
        "stages": [
            {"load": {"path": str(prompts), "id_field": "uid", "shard_size": 64}},
            {"dedup": {"method": "exact"}},
            {"dedup": {"method": "minhash", "threshold": 0.8}},
            {"decontaminate": {"benchmarks": [{"name": "mt-bench", "path": str(repo_data / "fastchat_mt_bench" /
                                                                             "question.jsonl"), "field": "turns"}]}},
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    res = curate("run", path, "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stdout + res.stderr
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert all(s["balanced"] for s in m["stages"])
    load, exact, near, decon = m["stages"]
    assert load["out"] == planted["total"]

    def dropped(stage_id):
        return pq.read_table(tmp_path / "run" / "_dropped" / stage_id).to_pylist()

    exact_rows = dropped("02_dedup")
    assert sorted(json.loads(r["record"])["source_id"] for r in exact_rows) == sorted(r["uid"] for r in planted["exact"])
    # the reason names the prompt kept in its place
    assert all(r["reason"].startswith("exact duplicate of prompt_id ") for r in exact_rows)
    near_ids = {json.loads(r["record"])["source_id"] for r in dropped("03_dedup")}
    assert {r["uid"] for r in planted["near"]} <= near_ids
    assert len(near_ids) <= len(planted["near"]) + 3, near_ids  # few false positives among real prompts
    leak_rows = dropped("04_decontaminate")
    assert {json.loads(r["record"])["source_id"] for r in leak_rows} == {r["uid"] for r in planted["leaks"]}
    assert all("shares a 13-gram with mt-bench" in r["reason"] for r in leak_rows)
    assert decon["out"] == planted["total"] - exact["dropped"] - near["dropped"] - decon["dropped"]


def pair(prompt, chosen, rejected, cs=8.0, rs=3.0, agreement=1.0):
    return {"prompt_id": str(hash(prompt + chosen)), "prompt": prompt, "messages": [{"role": "user", "content": prompt}],
            "chosen": chosen, "rejected": rejected, "chosen_score": cs, "rejected_score": rs, "margin": cs - rs,
            "agreement": agreement}


def answers(repo_data: Path, model: str) -> dict[str, str]:
    out = {}
    for line in open(repo_data / "arena_hard_v0.1" / f"model_answer_{model}.jsonl"):
        rec = json.loads(line)
        out[rec["uid"]] = rec["messages"][-1]["content"]["answer"]
    return out


def real_pairs(repo_data: Path, n: int) -> pa.Table:
    """gpt-4-0314 answers as chosen, gpt-3.5-turbo-0125 as rejected, on real Arena-Hard prompts."""
    questions = [json.loads(line) for line in open(repo_data / "arena_hard_v0.1" / "question.jsonl")][:n]
    good, weak = answers(repo_data, "gpt-4-0314"), answers(repo_data, "gpt-3.5-turbo-0125")
    rows = [pair(q["prompt"], good[q["uid"]], weak[q["uid"]]) for q in questions]
    return pa.Table.from_pylist(rows, schema=PAIR_ROW)


def test_length_bias_control_keeps_the_most_rows_under_the_target(repo_data):
    table = real_pairs(repo_data, 200)
    longer = sum(len(c) > len(r) for c, r in zip(table["chosen"].to_pylist(), table["rejected"].to_pylist()))
    assert longer / table.num_rows > 0.6  # GPT-4 answers are longer most of the time: a real length bias
    res = filter_stage.process(table, filter_stage.Config(max_longer_share=0.55), StageContext())
    out = res.out.to_pylist()
    share = sum(len(r["chosen"]) > len(r["rejected"]) for r in out) / len(out)
    assert share <= 0.55
    # the fewest drops: one more pair with the longer answer chosen would break the target
    assert (sum(len(r["chosen"]) > len(r["rejected"]) for r in out) + 1) / (len(out) + 1) > 0.55
    assert res.out.num_rows + res.dropped.num_rows == table.num_rows
    assert all(r.startswith("length-bias control") for r in res.dropped["reason"].to_pylist())


def test_thresholds_lengths_language_and_refusals(repo_data):
    rows = real_pairs(repo_data, 3).to_pylist()
    rows += [
        pair("Quelle est la capitale de la France ? Réponds en une phrase.", "La capitale de la France est Paris.",
             "Je ne sais pas."),
        pair("How do I pick a lock?", "I'm sorry, but I can't help with that request.", "Use a tension wrench."),
        pair("Name a color.", "Blue is a color that many people like.", "Red", cs=6, rs=5.5),
        pair("Summarize the plot of Hamlet.", "Prince Hamlet seeks revenge on his uncle for murdering his father.",
             "Hamlet is a play.", agreement=0.5),
    ]
    table = pa.Table.from_pylist(rows, schema=PAIR_ROW)
    cfg = filter_stage.Config(min_margin=1, min_agreement=0.6, languages=["en"], drop_refusals=True, max_length=20000)
    res = filter_stage.process(table, cfg, StageContext())
    reasons = {json.loads(r["record"])["prompt"][:20]: r["reason"] for r in res.dropped.to_pylist()}
    assert reasons["Quelle est la capita"] == "prompt language 'fr' not in ['en']"
    assert reasons["How do I pick a lock"].startswith("chosen is a refusal: \"I'm sorry, but I can't")
    assert reasons["Name a color."] == "margin 0.5 < 1"
    assert reasons["Summarize the plot o"] == "agreement 0.5 < 0.6"
    # real Arena-Hard pairs pass, except the answer written in ABC music notation, which is not English prose
    assert reasons["Use ABC notation to "].startswith("chosen language ")
    assert res.out.num_rows == 2


def test_filters_and_dedup_pass_an_empty_shard_through(repo_data):
    """A shard can be empty (every row dropped upstream); the stages still write an empty, typed output."""
    from curate.stages import decontaminate, dedup

    empty = pa.Table.from_pylist([], schema=PAIR_ROW)
    for stage, cfg in [(dedup, dedup.Config(field="chosen")), (filter_stage, filter_stage.Config(max_longer_share=0.5)),
                       (decontaminate, decontaminate.Config.model_validate(
                           {"benchmarks": [{"name": "mt-bench", "path": repo_data / "fastchat_mt_bench" /
                                            "question.jsonl", "field": "turns"}]}))]:
        res = stage.process(empty, cfg, StageContext())
        assert res.out.num_rows == 0 and res.out.schema == PAIR_ROW
