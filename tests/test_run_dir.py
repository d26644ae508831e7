"""The run directory is the truth: a rerun into it leaves exactly the files its manifest lists."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import yaml

from conftest import EXAMPLES, accounted, curate


def test_a_rerun_with_fewer_rows_leaves_no_stale_shard_behind(tmp_path):
    lines = (EXAMPLES / "data" / "mt_bench_questions.jsonl").read_text().splitlines()[:5]
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(lines + ["{broken"]) + "\n")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "rerun", "stages": [
        {"load": {"path": str(data), "turns_field": "turns", "id_field": "question_id", "shard_size": 1}},
        {"dedup": {"method": "exact"}}]}))
    run = tmp_path / "run"
    assert curate("run", pipeline, "--run-dir", run).returncode == 0
    assert len(list((run / "02_dedup").glob("part-*.parquet"))) == 6
    assert list((run / "_quarantined" / "01_load").glob("part-*.parquet"))

    res = curate("run", pipeline, "--run-dir", run, "--limit", "3")
    assert res.returncode == 0, res.stdout + res.stderr
    manifest = accounted(run)
    out = manifest["stages"][-1]
    assert len(list((run / "02_dedup").glob("part-*.parquet"))) == len(out["shard_sha256"]) == 3
    assert pq.read_table(run / "02_dedup").num_rows == out["rows_out"] == 3
    assert not list((run / "_quarantined" / "01_load").glob("part-*.parquet"))  # the broken line is past the limit
    assert len(list((run / "_done" / "02_dedup").glob("part-*.json"))) == 3
    assert json.loads((run / "manifest.json").read_text())["status"] == "ok"
