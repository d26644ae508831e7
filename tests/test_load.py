"""Loading prompts: real upstream datasets with a few lines of config, and malformed rows quarantined."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.stages.load import Config, read

#: the fast tier (./scripts/test --fast): no model, Ray or Prefect run here
pytestmark = pytest.mark.fast


def load_all(**cfg):
    results = list(read(Config.model_validate(cfg)))
    out = pa.concat_tables([r.out for r in results])
    quarantined = pa.concat_tables([r.quarantined for r in results])
    dropped = sum(r.dropped.num_rows for r in results)
    rows_in = sum(r.rows_in for r in results)
    assert rows_in == out.num_rows + quarantined.num_rows + dropped, "every row is accounted for"
    return out, quarantined, results


def test_mt_bench_first_turns_load_with_turns_field(copy_data):
    path = copy_data("fastchat_mt_bench/question.jsonl")
    out, quarantined, results = load_all(path=path, turns_field="turns", id_field="question_id", shard_size=16)
    assert out.num_rows == 80 and quarantined.num_rows == 0
    assert len(results) == 5  # 80 rows in shards of 16
    row = out.to_pylist()[0]
    assert row["prompt"].startswith("Compose an engaging travel blog post about a recent trip to Hawaii")
    assert row["messages"] == [{"role": "user", "content": row["prompt"]}]
    assert row["source_id"] == "81"
    meta = json.loads(row["meta"])
    assert meta["category"] == "writing"
    assert meta["later_turns"][0].startswith("Rewrite your previous response")
    assert len(set(out["prompt_id"].to_pylist())) == 80


def test_arena_hard_loads_with_defaults_and_limit(copy_data):
    path = copy_data("arena_hard_v0.1/question.jsonl")
    out, quarantined, _ = load_all(path=path, id_field="uid", limit=25)
    assert out.num_rows == 25 and quarantined.num_rows == 0
    assert out["prompt"][0].as_py() == "Use ABC notation to write a melody in the style of a folk tune."
    assert json.loads(out["meta"][0].as_py())["cluster"] == "ABC Sequence Puzzles & Groups"


def test_json_array_parquet_and_saved_dataset_give_the_same_rows(copy_data, tmp_path):
    path = copy_data("pandalm/testset-v1.json")
    from_json, _, _ = load_all(path=path, prompt_field="instruction", id_field="idx", limit=40)
    assert from_json.num_rows == 40

    rows = [json.loads(line) for line in open(copy_data("arena_hard_v0.1/question.jsonl"))][:30]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "q.parquet")
    from_parquet, _, _ = load_all(path=tmp_path / "q.parquet")

    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    from_disk, _, _ = load_all(path=tmp_path / "saved")
    assert from_parquet["prompt_id"].to_pylist() == from_disk["prompt_id"].to_pylist()
    assert from_parquet.num_rows == 30


def test_messages_field_keeps_the_conversation_and_system(tmp_path):
    path = tmp_path / "chats.jsonl"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a color."}]
    path.write_text(json.dumps({"conversation": chat}) + "\n"
                    + json.dumps({"conversation": chat[:3]}) + "\n")
    out, quarantined, _ = load_all(path=path, messages_field="conversation")
    assert out.num_rows == 1
    row = out.to_pylist()[0]
    assert row["system"] == "Be brief." and row["prompt"] == "Name a color." and len(row["messages"]) == 3
    assert "must end with a user turn" in quarantined["reason"][0].as_py()


def test_malformed_rows_are_quarantined_with_reason_and_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    lines = [
        json.dumps({"prompt": "What is 2+2?"}),
        '{"prompt": "broken',  # line 2
        json.dumps({"text": "no prompt field"}),  # line 3
        json.dumps({"prompt": 42}),  # line 4
        json.dumps({"prompt": "   "}),  # line 5
        json.dumps(["not", "an", "object"]),  # line 6
        json.dumps({"prompt": "Name a prime."}),
    ]
    path.write_text("\n".join(lines) + "\n")
    out, quarantined, _ = load_all(path=path)
    assert out["prompt"].to_pylist() == ["What is 2+2?", "Name a prime."]
    got = {r["line"]: r["reason"] for r in quarantined.to_pylist()}
    assert set(got) == {2, 3, 4, 5, 6}
    assert got[2].startswith("broken JSON line")
    assert "no prompt" in got[3]
    assert "int, not a string" in got[4]
    assert "empty prompt" in got[5]
    assert "not an object" in got[6]
    assert quarantined.to_pylist()[0]["record"] == '{"prompt": "broken'


def test_a_folder_that_is_not_a_dataset_is_a_clear_error(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="not a `datasets` dataset"):
        list(read(Config(path=tmp_path / "d")))


def test_a_json_array_with_a_broken_element_quarantines_that_element_only(tmp_path):
    path = tmp_path / "prompts.json"
    data = (b'[{"prompt": "Name a fruit, [any] fruit."},\n {"prompt": broken},\n {"prompt": "bad \xff byte"},\n'
            b' {"prompt": "Say \\"hi\\"."}, 7]')
    path.write_bytes(data)
    out, quarantined, results = load_all(path=path)
    assert out["prompt"].to_pylist() == ["Name a fruit, [any] fruit.", 'Say "hi".']
    got = {r["line"]: r["reason"] for r in quarantined.to_pylist()}
    assert set(got) == {2, 3, 5} and sum(r.rows_in for r in results) == 5
    broken, bad_byte = data.index(b"{" + b'"prompt": broken'), data.index(bytes([0xFF]))
    assert got[2].startswith(f"broken JSON in element 2 (byte {broken})")
    assert got[3].startswith(f"invalid UTF-8 at byte {bad_byte} (element 3)")
    assert "not an object" in got[5]


def test_image_paths_stay_inside_the_data(tmp_path):
    """A dataset from someone else names images by path: a relative path that leaves the data folder and an
    absolute path are quarantined with the reason (and never read), unless the user allows a root."""
    import json

    from PIL import Image

    data, outside = tmp_path / "data", tmp_path / "private"
    data.mkdir()
    outside.mkdir()
    for folder, name in ((data, "a.png"), (data, "b.png"), (outside, "secret.png")):
        Image.new("RGB", (4, 4), "red").save(folder / name)
    rows = [{"caption": "ok", "jpg_0": "a.png", "jpg_1": "b.png", "label_0": 1},
            {"caption": "up", "jpg_0": "a.png", "jpg_1": "../private/secret.png", "label_0": 1},
            {"caption": "abs", "jpg_0": str(outside / "secret.png"), "jpg_1": "b.png", "label_0": 0}]
    (data / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = list(read(Config(path=data / "pairs.jsonl", images={"layout": "pick_a_pic"})))
    assert sum(r.out.num_rows for r in res) == 1
    reasons = {q["line"]: q["reason"] for r in res for q in r.quarantined.to_pylist()}
    assert reasons[2] == "image 1: image '../private/secret.png' leaves the data folder " + f"{data}: refused"
    assert reasons[3].startswith(f"image 0: image '{outside / 'secret.png'}' is an absolute path outside the data")
    allowed = list(read(Config(path=data / "pairs.jsonl", images={"layout": "pick_a_pic", "allowed_roots": [outside]})))
    assert sum(r.out.num_rows for r in allowed) == 3
