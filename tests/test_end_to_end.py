"""A user's session: run the example pipeline from the CLI on a few MT-Bench prompts with the real embedded
model and local Ray, load the output with `datasets`, rerun it, resume it, show it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import EXAMPLES, curate


def small_example(tmp_path: Path, **export) -> Path:
    """The shipped example, made cheaper: shorter generations, same stages and templates."""
    shutil.copytree(EXAMPLES / "data", tmp_path / "data", dirs_exist_ok=True)
    data = yaml.safe_load((EXAMPLES / "mt_bench_pairs.yaml").read_text())
    data["stages"][0]["load"]["shard_size"] = 2
    data["stages"][1]["generate"]["models"][0]["max_tokens"] = 40
    data["stages"][2]["judge"]["sampling"]["max_tokens"] = 96
    data["stages"][3]["pairs"]["allow_truncated"] = True  # 40-token answers are nearly all cut off
    data["stages"][4]["export"].update(export)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    pipeline = small_example(tmp)
    data = yaml.safe_load(pipeline.read_text())
    data["cache_dir"] = str(tmp / "cache")  # its own cache: the call counts below do not depend on test order
    pipeline.write_text(yaml.safe_dump(data, sort_keys=False))
    res = curate("run", pipeline, "--limit", "4", "--run-dir", tmp / "run1")
    assert res.returncode == 0, res.stdout + res.stderr
    return tmp, pipeline, res


def test_run_prints_accounting_that_adds_up_and_writes_trl_parquet(first_run):
    tmp, _, res = first_run
    run_dir = tmp / "run1"
    m = manifest(run_dir)
    assert m["status"] == "ok"
    stages = {s["stage"]: s for s in m["stages"]}
    assert [s["stage"] for s in m["stages"]] == ["load", "generate", "judge", "pairs", "export"]
    for s in m["stages"]:
        assert s["in"] == s["out"] + s["dropped"] + s["quarantined"], s
        assert s["balanced"] is True
    assert stages["load"]["in"] == 4 and stages["load"]["shards"] == 2
    assert stages["generate"]["model_calls"] == 4 * 4  # k=4 candidates per prompt, all new
    assert stages["judge"]["model_calls"] >= 16  # one per candidate, plus retries of unparsable outputs
    assert stages["pairs"]["in"] == 4
    assert stages["export"]["in"] == stages["pairs"]["rows_out"] == stages["export"]["out"]
    assert "row accounting" in res.stdout and "dataset:" in res.stdout

    # every candidate carries its judgment; a failed parse is recorded, never scored
    judged = pq.read_table(run_dir / "03_judge").to_pylist()
    for row in judged:
        assert len(row["candidates"]) == 4
        for cand in row["candidates"]:
            (j,) = cand["judgments"]
            assert (j["score"] is not None) == j["parse_ok"]

    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(run_dir / "05_export"), split="train")
    assert ds.column_names[:3] == ["prompt", "chosen", "rejected"]
    assert ds.num_rows == stages["export"]["rows_out"]
    assert {"chosen_score", "rejected_score", "margin", "chosen_model", "judge"} <= set(ds.column_names)
    # every column is one some stage of this pipeline filled: none is null in every row
    table = pq.read_table(run_dir / "05_export")
    assert table.num_rows and not [c for c in table.column_names if table[c].null_count == table.num_rows]
    assert not {"rationale", "critique", "ref_margin", "strength", "documents"} & set(table.column_names)
    for row in ds:
        assert isinstance(row["prompt"], str) and row["chosen"] != row["rejected"]
        assert row["margin"] >= 1 and row["chosen_score"] - row["rejected_score"] == row["margin"]
    # dropped prompt rows are kept, each with its reason
    dropped = list((run_dir / "_dropped" / "04_pairs").glob("*.parquet"))
    n_dropped = sum(pq.read_metadata(p).num_rows for p in dropped)
    assert n_dropped == stages["pairs"]["dropped"]


def test_rerun_in_a_new_run_dir_makes_no_model_calls(first_run):
    tmp, pipeline, _ = first_run
    res = curate("run", pipeline, "--limit", "4", "--run-dir", tmp / "run2")
    assert res.returncode == 0, res.stderr
    m1, m2 = manifest(tmp / "run1"), manifest(tmp / "run2")
    assert sum(s["model_calls"] for s in m2["stages"]) == 0
    assert sum(s["cache_hits"] for s in m2["stages"]) == sum(s["model_calls"] for s in m1["stages"])
    # same requests, same answers: the exported datasets are identical
    assert [s["shard_sha256"] for s in m2["stages"]] == [s["shard_sha256"] for s in m1["stages"]]


def test_rerun_into_the_same_run_dir_skips_done_shards(first_run):
    tmp, pipeline, _ = first_run
    res = curate("run", pipeline, "--limit", "4", "--run-dir", tmp / "run1")
    assert res.returncode == 0, res.stderr
    for s in manifest(tmp / "run1")["stages"]:
        assert s["shards_skipped"] == s["shards"], s
        assert s["model_calls"] == 0


def test_show_prints_accounting_and_sample_rows(first_run):
    tmp, _, _ = first_run
    res = curate("show", tmp / "run1", "--rows", "1")
    assert res.returncode == 0, res.stderr
    assert "row accounting" in res.stdout and "status=ok" in res.stdout


def test_conversational_export_and_malformed_input_in_one_run(tmp_path):
    pipeline = small_example(tmp_path, conversational=True)
    data = yaml.safe_load(pipeline.read_text())
    lines = (EXAMPLES / "data" / "mt_bench_questions.jsonl").read_text().splitlines()[:3]
    bad = ['{"question_id": 1, "turns": ', '{"question_id": 2, "turns": []}', '{"question_id": 3, "turns": [""]}']
    (tmp_path / "data" / "mixed.jsonl").write_text("\n".join([lines[0], bad[0], lines[1], bad[1], bad[2], lines[2]]))
    data["stages"][0]["load"]["path"] = "data/mixed.jsonl"
    pipeline.write_text(yaml.safe_dump(data, sort_keys=False))
    res = curate("run", pipeline, "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stderr
    # the console shows curate's lines only; Prefect's and Ray's own go to the run's log file
    log = (tmp_path / "run" / "curate.log").read_text()
    assert "curate's local server, already running" in log and "Finished in state Completed()" in log
    assert not any(s in res.stdout + res.stderr for s in ("Traceback", "| INFO", "prefect", "core_worker"))
    load = manifest(tmp_path / "run")["stages"][0]
    assert (load["in"], load["out"], load["quarantined"]) == (6, 3, 3)
    q = pq.read_table(tmp_path / "run" / "_quarantined" / "01_load").to_pylist()
    assert [(r["line"], r["source"]) for r in q] == [(2, "mixed.jsonl"), (4, "mixed.jsonl"), (5, "mixed.jsonl")]
    assert q[0]["reason"].startswith("broken JSON line") and "empty prompt" in q[2]["reason"]
    out = pq.read_table(tmp_path / "run" / "05_export")
    assert out.schema.field("prompt").type.value_type.names == ["role", "content"]
