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


def test_every_line_is_accounted_and_an_edited_benchmark_file_redoes_decontamination(tmp_path):
    """A JSONL with a blank line, a line of invalid UTF-8 and CRLF endings: `in` is the file's line count, the
    bad bytes are quarantined with their offset (never decoded to U+FFFD). Then the benchmark file changes: the
    decontamination stage is redone from the new content, while a touch of the prompts file (same bytes) leaves
    load done."""
    import os

    prompts = [b'{"prompt": "Name three rivers in Europe and say which is longest."}',
               b"",
               b'{"prompt": "Write a haiku about caf\xe9 mornings."}',  # latin-1, not UTF-8
               b'{"prompt": "Compose an engaging travel blog post about a recent trip to Hawaii."}',
               b'{"prompt": "Explain photosynthesis to a child."}']
    data = tmp_path / "prompts.jsonl"
    data.write_bytes(b"\r\n".join(prompts) + b"\r\n")
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"prompt": "Nothing in common with any prompt here at all, not one bit."}) + "\n")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "lines", "stages": [
        {"load": {"path": str(data)}},
        {"decontaminate": {"benchmarks": [{"name": "bench", "path": str(bench)}], "ngram": 5}}]}))
    run = tmp_path / "run"
    res = curate("run", pipeline, "--run-dir", run)
    assert res.returncode == 0, res.stdout + res.stderr
    load, decon = accounted(run)["stages"]
    assert (load["in"], load["out"], load["dropped"], load["quarantined"]) == (5, 3, 1, 1)
    (q,) = pq.read_table(run / "_quarantined" / "01_load").to_pylist()
    offset = data.read_bytes().index(b"\xe9")
    assert q["line"] == 3 and q["reason"].startswith(f"invalid UTF-8 at byte {offset} (line 3)")
    assert "\ufffd" not in q["record"] and "\\xe9" in q["record"]
    (blank,) = pq.read_table(run / "_dropped" / "01_load").to_pylist()
    assert (blank["line"], blank["reason"]) == (2, "blank line")
    assert (decon["in"], decon["out"]) == (3, 3)

    # the benchmark now holds one of the prompts (same path, new content); the prompts file is only touched
    bench.write_text(json.dumps({"prompt": "Compose an engaging travel blog post about a recent trip to Hawaii."}))
    os.utime(data)
    res = curate("run", pipeline, "--run-dir", run)
    assert res.returncode == 0, res.stdout + res.stderr
    load, decon = accounted(run)["stages"]
    assert load["shards_skipped"] == load["shards"]
    assert decon["shards_skipped"] == 0 and (decon["in"], decon["out"], decon["dropped"]) == (3, 2, 1)
