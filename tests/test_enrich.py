"""Enrichment stages from the CLI on real data: rationales, reward augmentation, retrieval-built pairs,
personas, and safety dual labels on HH-RLHF. Real llama.cpp, real sentence-transformers, real Parquet."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import accounted, curate, example_pipeline
from curate.schemas.records import PAIR_ROW
from curate.stages import reward_augment
from curate.stages.base import StageContext
from curate.stages.load import Config as LoadConfig, read

EXAMPLES = Path(__file__).resolve().parent.parent / "pipelines" / "examples"


def _pair(**kw) -> dict:
    base = {f.name: None for f in PAIR_ROW}
    return base | {"prompt_id": "p", "prompt": "Q?", "messages": [{"role": "user", "content": "Q?"}],
                   "chosen": "good", "rejected": "bad", "chosen_id": "g", "rejected_id": "b",
                   "chosen_model": "m1", "rejected_model": "m2"} | kw


def test_reward_augment_keeps_the_order_at_the_chosen_goal_and_swaps_at_the_rejected_goal():
    rows = [_pair(chosen_score=9.0, rejected_score=3.0, margin=6.0),
            _pair(prompt_id="tie", chosen_score=4.9, rejected_score=4.6, margin=0.3),
            _pair(prompt_id="unscored")]
    table = pa.Table.from_pylist(rows, schema=PAIR_ROW)
    res = reward_augment.process(table, reward_augment.Config(judge_scale=(1, 10), max_score=10), StageContext())
    out = res.out.to_pylist()
    keep, swap = out[0], out[1]
    assert keep["augmented"] == "goal=chosen" and keep["goal_score"] == 9 and keep["chosen"] == "good"
    assert keep["prompt"].startswith("Generate a response that would receive an overall score of 9 out of 10.")
    assert keep["messages"][-1]["content"] == keep["prompt"]
    assert swap["augmented"] == "goal=rejected" and swap["goal_score"] == 2 and swap["chosen"] == "bad"
    assert swap["rejected"] == "good" and swap["chosen_model"] == "m2" and swap["margin"] == -6.0
    # 4.9 and 4.6 both map to goal 4 (of 10, from 1..10): the swapped row could not tell the answers apart
    assert [r["prompt_id"] for r in out] == ["p", "p", "tie"]
    assert res.n_out == 2 and res.n_dropped == 1
    assert sorted(res.dropped["reason"].to_pylist()) == ["no chosen_score/rejected_score to condition on",
                                                        "swapped row: goals round to the same score 4"]


def test_rationales_and_reward_augmentation_pipeline(tmp_path):
    spec = example_pipeline(tmp_path, "enrich")
    res = curate("run", spec, "--limit", "4", "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    accounted(tmp_path / "run")
    rationales = pq.read_table(tmp_path / "run" / "05_rationale").to_pylist()
    assert rationales and all(r["rationale"] and r["rejected_rationale"] for r in rationales)
    out = pq.read_table(tmp_path / "run" / "07_export").to_pylist()
    assert {"rationale", "rejected_rationale", "goal_score", "augmented"} <= set(out[0])
    kept = [r for r in out if r["augmented"] == "goal=chosen"]
    assert len(kept) == len(rationales) and all(r["rationale"] for r in kept)
    for r in out:
        assert r["prompt"].startswith(f"Generate a response that would receive an overall score of {int(r['goal_score'])}")


def test_retrieval_pairs_take_the_answer_to_another_similar_prompt(tmp_path):
    spec = example_pipeline(tmp_path, "retrieval_pairs")
    res = curate("run", spec, "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    accounted(tmp_path / "run")
    out = pq.read_table(tmp_path / "run" / "03_export").to_pylist()
    assert len(out) == 40
    questions = {json.loads(line)["uid"]: json.loads(line)["prompt"]
                 for line in (tmp_path / "data" / "arena_hard_questions_40.jsonl").read_text().splitlines()}
    for r in out:
        assert r["chosen_model"] == "gpt-4-0314" and r["rejected_model"] == "retrieved:gpt-3.5-turbo-0125"
        assert r["retrieved_prompt"] != r["prompt"] and r["retrieved_prompt"] in questions.values()
        assert r["response_similarity"] < 0.95 and -1 <= r["prompt_similarity"] < 0.98
    # a stricter similarity ceiling drops the closest pairs, each with its reason
    strict = spec.read_text().replace("max_response_similarity: 0.95", "max_response_similarity: 0.3")
    spec.write_text(strict)
    res = curate("run", spec, "--run-dir", tmp_path / "strict")
    assert res.returncode == 0
    manifest = accounted(tmp_path / "strict")
    stage = manifest["stages"][1]
    assert stage["dropped"] == sum(r["response_similarity"] >= 0.3 for r in out) > 0
    # the embedding model's vectors came from the response cache: the first run embedded, this one asked nothing
    first = accounted(tmp_path / "run")["stages"][1]  # (its queries are the pool's prompts: hits already)
    assert first["model_calls"] > 0 and (stage["model_calls"], stage["cache_hits"]) == (
        0, first["model_calls"] + first["cache_hits"])
    reasons = pq.read_table(tmp_path / "strict" / "_dropped" / "02_retrieval_pairs")["reason"].to_pylist()
    assert all(r.startswith("near-identical responses: cosine") for r in reasons)


def test_hh_rlhf_transcripts_load_as_conversation_and_two_candidates(tmp_path, copy_data):
    data = copy_data("examples/hh_rlhf_harmless_40.jsonl")
    bad = tmp_path / "hh_bad.jsonl"
    bad.write_text(data.read_text().splitlines()[0] + "\n"
                   + json.dumps({"chosen": "no transcript here", "rejected": "x"}) + "\n"
                   + json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}) + "\n")
    results = list(read(LoadConfig(path=bad, transcripts={"chosen": "chosen", "rejected": "rejected"})))
    rows = [r for res in results for r in res.out.to_pylist()]
    reasons = [r for res in results for r in res.quarantined["reason"].to_pylist()]
    assert len(rows) == 1 and len(reasons) == 2
    assert "not a Human/Assistant transcript" in reasons[0] and "differ before their last" in reasons[1]
    (row,) = rows
    assert row["messages"][-1]["role"] == "user" and [c["model"] for c in row["candidates"]] == [
        "human-labeled:chosen", "human-labeled:rejected"]
    assert json.loads(row["meta"])["human_chosen"] == row["candidates"][0]["candidate_id"]


def test_safety_dual_labels_on_hh_rlhf(tmp_path):
    spec = example_pipeline(tmp_path, "safety_labels")
    res = curate("run", spec, "--limit", "6", "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    manifest = accounted(tmp_path / "run")
    assert {"helpfulness", "harmlessness"} <= set(manifest["judges"]["per_judge"])
    judged = pq.read_table(tmp_path / "run" / "03_judge").to_pylist()
    for row in judged:  # the judge saw the whole conversation, and each candidate got both labels
        for cand in row["candidates"]:
            assert {j["aspect"] for j in cand["judgments"]} == {"overall", "harmlessness"}
    out = pq.read_table(tmp_path / "run" / "05_export").to_pylist()
    assert out, "no pairs"
    for r in out:
        assert r["chosen_harmless"] is not None and r["rejected_harmless"] is not None
        expect = ("chosen" if r["chosen_harmless"] > r["rejected_harmless"]
                  else "rejected" if r["chosen_harmless"] < r["rejected_harmless"] else "tie")
        assert r["safer"] == expect
        # pairs are built on helpfulness alone: the harmlessness judge is not in the score
        assert r["judge"] == "helpfulness"


def test_personas_make_one_label_per_prompt_and_persona(tmp_path):
    spec = example_pipeline(tmp_path, "personas")
    res = curate("run", spec, "--limit", "2", "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    accounted(tmp_path / "run")
    loaded = pq.read_table(tmp_path / "run" / "01_load").to_pylist()
    assert len(loaded) == 4 and len({r["prompt_id"] for r in loaded}) == 4  # 2 prompts x 2 personas
    assert len({(r["prompt"], r["persona"]) for r in loaded}) == 4
    judged = pq.read_table(tmp_path / "run" / "03_judge").to_pylist()
    assert all(j["parse_ok"] for r in judged for c in r["candidates"] for j in c["judgments"])
    out = pq.read_table(tmp_path / "run" / "05_export").to_pylist()
    assert all(r["persona"] in {p["persona"] for p in loaded} for r in out)
