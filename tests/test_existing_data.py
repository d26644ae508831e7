"""Existing preference data in its published layouts: a user points `load` at a file, a folder or a Hub name and
names the layout; the responses become candidates and the source's labels judgments, with every row accounted.

Real upstream rows: tests/data/pref_layouts/ (LLaMA-Factory DPO/KTO/v1, OpenAssistant trees, AlpacaEval, a TRL
explicit-prompt file), PandaLM's test set and the HH-RLHF example slice. UltraFeedback, HelpSteer2,
HelpSteer2-Preference, PKU-SafeRLHF, Nectar, Chatbot Arena and SHP have no upstream file here: their rows below are
written by the field names and value types their dataset cards document.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import ROOT
from curate.stages import pairs
from curate.stages.base import StageContext
from curate.stages.load import Config, read

#: the fast tier (./scripts/test --fast): no model, Ray or Prefect run here
pytestmark = pytest.mark.fast

DATA = ROOT / "tests" / "data" / "pref_layouts"
HH = ROOT / "pipelines" / "examples" / "data" / "hh_rlhf_harmless_40.jsonl"


def load(path: Path, layout: str | None = None, **cfg):
    """Run load's reader; (prompt rows, quarantined rows, dropped rows), with the accounting checked."""
    res = list(read(Config(path=path, layout=layout, **cfg)))
    for r in res:
        assert r.rows_in == r.n_out + r.dropped.num_rows + r.quarantined.num_rows
    return ([row for r in res for row in r.out.to_pylist()], [q for r in res for q in r.quarantined.to_pylist()],
            [d for r in res for d in r.dropped.to_pylist()])


def scores(row: dict, judge_suffix: str = "") -> list[list[float]]:
    return [[j["score"] for j in c["judgments"] if j["judge"].endswith(judge_suffix)] for c in row["candidates"]]


def pair_of(rows: list[dict], **cfg) -> list[dict]:
    from curate.schemas.records import PROMPT_ROW_WITH_CANDIDATES

    table = pa.Table.from_pylist(rows, schema=PROMPT_ROW_WITH_CANDIDATES)
    return pairs.process(table, pairs.Config(**cfg), StageContext()).out.to_pylist()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_llamafactory_sharegpt_dpo_rows_become_the_sources_pairs():
    raw = json.loads((DATA / "llamafactory_dpo_en_demo_40.json").read_text())
    rows, bad, _ = load(DATA / "llamafactory_dpo_en_demo_40.json", "llamafactory")
    assert len(rows) == 40 and not bad
    first = rows[0]
    assert first["messages"][0] == {"role": "user", "content": raw[0]["conversations"][0]["value"]}
    assert [c["response"] for c in first["candidates"]] == [raw[0]["chosen"]["value"], raw[0]["rejected"]["value"]]
    got = pair_of(rows)  # pairs' defaults make exactly the source's pair
    assert len(got) == 40
    assert all(p["chosen"] == r["chosen"]["value"] and p["rejected"] == r["rejected"]["value"]
               for p, r in zip(got, raw, strict=True))
    assert got[0]["judge"] == "source:llamafactory_dpo_en_demo_40.json/chosen"


def test_multi_turn_sharegpt_prompts_keep_every_turn():
    raw = json.loads((DATA / "llamafactory_dpo_en_demo_40.json").read_text())
    i = next(i for i, r in enumerate(raw) if len(r["conversations"]) >= 3)
    rows, _, _ = load(DATA / "llamafactory_dpo_en_demo_40.json", "llamafactory")
    assert [m["content"] for m in rows[i]["messages"]] == [t["value"] for t in raw[i]["conversations"]]
    assert [m["role"] for m in rows[i]["messages"]][:2] == ["user", "assistant"]


def test_llamafactory_v1_messages_with_typed_parts_share_their_prompt():
    rows, bad, _ = load(DATA / "llamafactory_v1_dpo_demo_10.jsonl", "llamafactory_v1")
    raw = json.loads((DATA / "llamafactory_v1_dpo_demo_10.jsonl").read_text().splitlines()[0])
    assert len(rows) == 10 and not bad
    assert rows[0]["system"] == raw["chosen_messages"][0]["content"][0]["value"]
    assert rows[0]["candidates"][0]["response"] == raw["chosen_messages"][-1]["content"][0]["value"]
    assert rows[0]["candidates"][1]["response"] == raw["rejected_messages"][-1]["content"][0]["value"]


def test_kto_labels_are_unpaired_desirability_judgments():
    raw = json.loads((DATA / "llamafactory_kto_en_demo_40.json").read_text())
    rows, bad, _ = load(DATA / "llamafactory_kto_en_demo_40.json", "llamafactory_kto")
    assert not bad and sum(len(r["candidates"]) for r in rows) == 40
    flat = [c for r in rows for c in r["candidates"]]
    assert [c["judgments"][0]["score"] for c in flat] == [float(r["label"]) for r in raw]
    assert {c["judgments"][0]["aspect"] for c in flat} == {"desirable"}


def test_openassistant_trees_give_a_row_per_answered_prompter_turn_with_ranks():
    line = (DATA / "oasst_en_100_tree_12.jsonl").read_text().splitlines()[0]
    tree = json.loads(line)["prompt"]
    rows, bad, _ = load(DATA / "oasst_en_100_tree_12.jsonl", "oasst", limit=1)
    assert not bad
    root = rows[0]
    assert root["messages"] == [{"role": "user", "content": tree["text"]}]
    assert [c["candidate_id"] for c in root["candidates"]] == [r["message_id"] for r in tree["replies"]]
    n = len(tree["replies"])
    assert scores(root) == [[float(n - r["rank"])] for r in tree["replies"]]  # rank 0 is the best
    assert pair_of([root])[0]["chosen"] == next(r["text"] for r in tree["replies"] if r["rank"] == 0)


def test_alpaca_eval_annotations_name_their_annotator_and_keep_ties():
    raw = json.loads((DATA / "alpaca_eval_annotations_40.json").read_text())
    rows, bad, _ = load(DATA / "alpaca_eval_annotations_40.json", "alpaca_eval")
    assert not bad and len(rows) == 40
    assert {j["judge"] for r in rows for c in r["candidates"] for j in c["judgments"]} == {"alpaca_eval_gpt4"}
    for row, rec in zip(rows, raw, strict=True):
        want = {"1": [[1.0], [0.0]], "2": [[0.0], [1.0]], "0": [[0.5], [0.5]]}[str(rec["preference"])]
        assert scores(row) == want
        assert [c["model"] for c in row["candidates"]] == [rec["generator_1"], rec["generator_2"]]


def test_pandalm_three_annotators_are_three_judges_and_bad_rows_are_quarantined_with_their_line():
    raw = json.loads((ROOT / "tests/data/pandalm/testset-v1.json").read_text())
    rows, bad, _ = load(ROOT / "tests/data/pandalm/testset-v1.json", "pandalm")
    assert len(rows) + len(bad) == len(raw)
    for q in bad:  # upstream rows whose response is `true`/`false`, not text
        assert not isinstance(raw[q["line"] - 1]["response1"], str) or not isinstance(raw[q["line"] - 1]["response2"], str)
        assert q["reason"].startswith("response 'response")
    row = rows[0]
    assert row["prompt"] == raw[0]["instruction"] + "\n\n" + raw[0]["input"]
    assert len({j["judge"] for j in row["candidates"][0]["judgments"]}) == 3


def test_hh_transcripts_and_the_trl_explicit_prompt_file():
    rows, bad, _ = load(HH, "hh_rlhf")
    raw = json.loads(HH.read_text().splitlines()[0])
    assert not bad and len(rows) == 40
    assert raw["chosen"].endswith(rows[0]["candidates"][0]["response"])
    assert rows[0]["messages"][0]["role"] == "user" and rows[0]["messages"][-1]["role"] == "user"
    rows, bad, _ = load(DATA / "prompt_chosen_rejected_40.jsonl", "trl")
    raw = json.loads((DATA / "prompt_chosen_rejected_40.jsonl").read_text().splitlines()[0])
    assert not bad and rows[0]["prompt"] == raw["prompt"]
    assert [c["response"] for c in rows[0]["candidates"]] == [raw["chosen"], raw["rejected"]]


# --- layouts with no upstream file here: rows written by their dataset cards' documented schemas ---------------

def ultrafeedback_row(instruction: str, ratings: list[list[str]], overall: list[float]) -> dict:
    aspects = ["helpfulness", "honesty", "instruction_following", "truthfulness"]
    return {"source": "evol_instruct", "instruction": instruction, "models": ["m0", "m1", "m2", "m3"],
            "completions": [{"model": f"m{i}", "response": f"answer {i} to {instruction}", "critique": f"critique {i}",
                             "overall_score": overall[i], "fine-grained_score": 3.0,
                             "annotations": {a: {"Rating": r[k], "Rationale": f"{a} rationale {i}"}
                                             for k, a in enumerate(aspects)}}
                            for i, r in enumerate(ratings)],
            "correct_answers": ["None"], "incorrect_answers": ["None"]}


def test_ultrafeedback_aspects_become_four_judges_and_overall_a_fifth(tmp_path):
    path = write_jsonl(tmp_path / "uf.jsonl", [
        ultrafeedback_row("Name a colour.", [["5", "4", "5", "N/A"], ["2", "3", "2", "1"], ["4", "4", "4", "4"],
                                             ["1", "1", "1", "1"]], [9.0, 4.5, 7.0, 2.0]),
        ultrafeedback_row("Bad rating.", [["6", "4", "5", "5"]] * 4, [1.0] * 4),  # 6 is outside 1..5
    ])
    rows, bad, _ = load(path, "ultrafeedback")
    assert len(rows) == 1 and bad[0]["line"] == 2 and "outside 1..5" in bad[0]["reason"]
    first = rows[0]["candidates"][0]
    assert {j["judge"]: j["score"] for j in first["judgments"]} == {
        "source:uf.jsonl/helpfulness": 5.0, "source:uf.jsonl/honesty": 4.0,
        "source:uf.jsonl/instruction_following": 5.0, "source:uf.jsonl/overall": 9.0}  # N/A truthfulness: none
    assert first["judgments"][0]["feedback"] == "helpfulness rationale 0"
    assert json.loads(rows[0]["meta"])["source"] == "evol_instruct" and rows[0]["source"] == "uf.jsonl"
    best = pair_of(rows, aspect="overall")[0]  # UltraFeedback's own binarization: best vs worst overall
    assert (best["chosen_model"], best["rejected_model"], best["margin"]) == ("m0", "m3", 7.0)


def test_helpsteer2_rows_of_one_prompt_become_one_row_with_five_attributes(tmp_path):
    attrs = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    path = write_jsonl(tmp_path / "hs2.jsonl", [
        {"prompt": "p1", "response": "r1a", **dict(zip(attrs, [3, 3, 4, 2, 2]))},
        {"prompt": "p1", "response": "r1b", **dict(zip(attrs, [1, 2, 4, 1, 1]))},
        {"prompt": "p2", "response": "r2a", **dict(zip(attrs, [4, 4, 4, 2, 1]))},
        {"prompt": "p2", "response": "r2b", **dict(zip(attrs, [4, 5, 4, 2, 1]))},  # 5 is outside 0..4
    ])
    rows, bad, _ = load(path, "helpsteer2", shard_size=1)
    assert [len(r["candidates"]) for r in rows] == [2, 1] and [q["line"] for q in bad] == [4]
    assert len({c["candidate_id"] for r in rows for c in r["candidates"]}) == 3
    assert pair_of(rows, aspect="helpfulness")[0]["chosen"] == "r1a"


def test_helpsteer2_preference_strength_and_pku_safety_labels(tmp_path):
    hs = write_jsonl(tmp_path / "hs2p.jsonl", [
        {"split": "train", "prompt": "q", "response_1": "one", "response_2": "two", "preference_strength": -2},
        {"split": "train", "prompt": "q2", "response_1": "a", "response_2": "b", "preference_strength": 0}])
    rows, bad, _ = load(hs, "helpsteer2_preference")
    assert not bad
    got = pair_of(rows)
    assert len(got) == 1 and (got[0]["chosen"], got[0]["strength"]) == ("one", 2.0)  # the tie is dropped
    pku = write_jsonl(tmp_path / "pku.jsonl", [
        {"prompt": "How do I pick a lock?", "response_0": "Here is how...", "response_1": "I can't help with that.",
         "response_0_source": "Alpaca-7B", "response_1_source": "Alpaca-7B", "is_response_0_safe": False,
         "is_response_1_safe": True, "better_response_id": 0, "safer_response_id": 1},
        {"prompt": "Hi", "response_0": "Hello", "response_1": "Hey", "is_response_0_safe": True,
         "is_response_1_safe": True, "better_response_id": 2, "safer_response_id": 0}])  # 2: out of range
    rows, bad, _ = load(pku, "pku_saferlhf")
    assert len(rows) == 1 and "names response 2" in bad[0]["reason"] and bad[0]["line"] == 2
    plain = pair_of(rows)  # better and safer differ: a labelled pair (the better one), not an error
    assert plain[0]["chosen"] == "Here is how..." and plain[0]["margin"] == 1.0
    dual = pair_of(rows, safety_aspect="harmlessness")
    assert dual[0]["safer"] == "rejected" and dual[0]["chosen_harmless"] == 0.0


def test_nectar_ranks_arena_winners_and_shp_labels(tmp_path):
    nectar = write_jsonl(tmp_path / "nectar.jsonl", [
        {"prompt": "\n\nHuman: Name a fruit.\n\nAssistant:", "answers": [
            {"answer": "Apple.", "model": "gpt-4", "rank": 1.0}, {"answer": "A car.", "model": "llama", "rank": 3.0},
            {"answer": "Pear.", "model": "gpt-3.5", "rank": 2.0}], "turns": 1, "num_responses": 3, "source": ["x"]},
        {"prompt": "\n\nHuman: Gap.\n\nAssistant:", "answers": [
            {"answer": "a", "model": "m", "rank": 1.0}, {"answer": "b", "model": "m", "rank": 3.0}]}])
    rows, bad, _ = load(nectar, "nectar")
    assert rows[0]["messages"] == [{"role": "user", "content": "Name a fruit."}]
    assert scores(rows[0]) == [[3.0], [1.0], [2.0]] and "ranks [1.0, 3.0]" in bad[0]["reason"]
    got = pair_of(rows)[0]
    assert (got["chosen"], got["rejected"]) == ("Apple.", "A car.")
    turn = lambda q, a: [{"role": "user", "content": q}, {"role": "assistant", "content": a}]  # noqa: E731
    arena = write_jsonl(tmp_path / "arena.jsonl", [
        {"question_id": "q1", "model_a": "A", "model_b": "B", "winner": "model_b", "judge": "arena_user_1",
         "conversation_a": turn("Hi", "Hello"), "conversation_b": turn("Hi", "Hey there!"), "turn": 1},
        {"question_id": "q2", "model_a": "A", "model_b": "B", "winner": "tie (bothbad)",
         "conversation_a": turn("x", "y"), "conversation_b": turn("x", "z"), "turn": 1},
        {"question_id": "q3", "model_a": "A", "model_b": "B", "winner": "model_a",
         "conversation_a": turn("x", "y") + turn("more", "1"), "conversation_b": turn("x", "z") + turn("more", "2")}])
    rows, bad, _ = load(arena, "arena")
    assert scores(rows[0]) == [[0.0], [1.0]] and scores(rows[1]) == [[0.5], [0.5]]
    assert [c["model"] for c in rows[0]["candidates"]] == ["A", "B"] and rows[0]["source_id"] == "q1"
    assert bad[0]["reason"] == "the responses' conversations differ before their last assistant turn"
    shp = write_jsonl(tmp_path / "shp.jsonl", [
        {"post_id": "p", "domain": "askculinary_train", "history": "How long to boil an egg?", "c_root_id_A": "a1",
         "c_root_id_B": "b1", "human_ref_A": "Ten minutes.", "human_ref_B": "An hour.", "labels": 1, "score_A": 52,
         "score_B": 3}])
    rows, bad, _ = load(shp, "shp")
    assert [c["candidate_id"] for c in rows[0]["candidates"]] == ["a1", "b1"] and scores(rows[0]) == [[1.0], [0.0]]
    assert json.loads(rows[0]["meta"])["score_A"] == 52


def test_a_mapping_reads_a_layout_with_no_name(tmp_path):
    """A team's own logs: two answers and which one the rater picked, as "A"/"B"/"same"."""
    path = write_jsonl(tmp_path / "logs.jsonl", [
        {"q": "2+2?", "ans": ["4", "5"], "pick": "A", "rater": "r1"},
        {"q": "3+3?", "ans": ["6", "7"], "pick": "neither"}])
    mapping = {"prompt": "q", "responses": ["ans.0", "ans.1"], "labels": [
        {"name": "pick", "type": "choice", "field": "pick", "values": {"A": 0, "B": 1, "same": "tie"}}]}
    rows, bad, _ = load(path, mapping=mapping, source="team-logs")
    assert scores(rows[0]) == [[1.0], [0.0]] and rows[0]["source"] == "team-logs"
    assert rows[0]["candidates"][0]["judgments"][0]["judge"] == "source:team-logs/pick"
    assert "'neither', not one of A, B, same" in bad[0]["reason"]
    assert json.loads(rows[0]["meta"]) == {"rater": "r1"}


def test_a_folder_of_parts_a_glob_and_several_sources_with_limits_and_weights(tmp_path):
    parts = tmp_path / "export"
    parts.mkdir()
    lines = HH.read_text().splitlines()
    (parts / "part-00000.jsonl").write_text("\n".join(lines[:10]) + "\n")
    (parts / "part-00001.jsonl").write_text("\n".join(lines[10:25]) + "\n")
    rows, _, _ = load(parts, "hh_rlhf")
    assert len(rows) == 25
    rows, _, _ = load(Path(str(parts / "part-*.jsonl")), "hh_rlhf")
    assert len(rows) == 25
    res = list(read(Config(sources=[
        {"path": str(parts), "layout": "hh_rlhf", "source": "hh"},
        {"path": str(DATA / "alpaca_eval_annotations_40.json"), "layout": "alpaca_eval", "limit": 5},
        {"path": str(DATA / "llamafactory_dpo_en_demo_40.json"), "layout": "llamafactory", "weight": 0.5}])))
    out = [r for x in res for r in x.out.to_pylist()]
    stats: dict = {}
    for x in res:
        for k, v in x.stats.items():
            stats[k] = stats.get(k, 0) + v
    assert stats["source:hh:in"] == stats["source:hh:out"] == 25
    assert stats["source:alpaca_eval_annotations_40.json:out"] == 5
    sampled = stats["source:llamafactory_dpo_en_demo_40.json:out"]
    assert 10 <= sampled <= 30 and stats["source:llamafactory_dpo_en_demo_40.json:dropped"] == 40 - sampled
    assert {r["source"] for r in out} == {"hh", "alpaca_eval_annotations_40.json", "llamafactory_dpo_en_demo_40.json"}
    dropped = [d for x in res for d in x.dropped.to_pylist()]
    assert all(d["reason"] == "not in the source's sample (weight 0.5)" for d in dropped)


def test_an_unknown_layout_or_a_path_that_names_nothing_fails_when_the_pipeline_loads(tmp_path):
    with pytest.raises(ValueError, match="unknown layout 'trll'; one of alpaca_eval"):
        Config(path=HH, layout="trll")
    with pytest.raises(ValueError, match="no file found"):
        Config(path=Path(str(tmp_path / "nothing-*.jsonl")), layout="trl")


ALPACA = DATA / "alpaca_eval_annotations_40.json"


@pytest.mark.full  # two `curate run`s each: the full tier
@pytest.mark.parametrize("fmt,conversational,data,layout", [
    ("trl", True, HH, "hh_rlhf"), ("reward", True, HH, "hh_rlhf"), ("trl", False, ALPACA, "alpaca_eval")],
    ids=["trl-conversational", "reward-conversational", "trl-standard"])
def test_a_curate_export_loads_back_into_the_same_pairs(tmp_path, fmt, conversational, data, layout):
    """Round trip, as a user re-curates a published curate dataset: export -> `load (layout: trl)` -> `pairs`
    with its defaults -> export gives the same rows, scores, judge, models and ids included. (The standard,
    string form holds a prompt's last user turn only, so it round-trips single-turn prompts: AlpacaEval's.)"""
    import yaml

    from conftest import accounted, curate

    def run(name: str, stages: list) -> Path:
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(yaml.safe_dump({"name": name, "stages": stages}))
        res = curate("run", spec, "--run-dir", tmp_path / name)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        return tmp_path / name / accounted(tmp_path / name)["stages"][-1]["id"]

    export = {"export": {"format": fmt, "conversational": conversational}}
    first = run("first", [{"load": {"path": str(data), "layout": layout, "source": "hh"}}, {"pairs": {}}, export])
    second = run("second", [{"load": {"path": str(first), "layout": "trl", "source": "hh"}}, {"pairs": {}}, export])
    import pyarrow.parquet as pq

    a, b = pq.read_table(first).to_pylist(), pq.read_table(second).to_pylist()
    assert len(a) >= 35 and a == b


def test_validate_names_the_source_the_layouts_missing_fields_and_the_first_row(tmp_path):
    """A layout named for the wrong data fails `curate validate` at once, with the YAML path, the source, the
    fields the layout looks for and the ones the first row has."""
    import yaml

    from conftest import curate

    spec = tmp_path / "p.yaml"
    spec.write_text(yaml.safe_dump({"name": "wrong", "stages": [{"load": {"sources": [
        {"path": str(HH), "layout": "hh_rlhf"}, {"path": str(DATA / "alpaca_eval_annotations_40.json"),
                                                  "layout": "ultrafeedback"}]}}, {"pairs": {}}]}))
    res = curate("validate", spec)
    assert res.returncode == 2
    assert ("stages[0].load.sources: [1] (alpaca_eval_annotations_40.json): layout 'ultrafeedback' reads "
            "'completions', which row 1 of alpaca_eval_annotations_40.json does not have (its fields: instruction, "
            "output_1") in " ".join(res.stderr.split())
