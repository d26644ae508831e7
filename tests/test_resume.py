"""Crash safety: a run killed with SIGKILL in the middle of generation resumes with `curate run --resume`;
done shards are not redone, cached model calls are not repeated, and the output equals an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from conftest import curate
from curate.engines.cache import ResponseCache
from test_end_to_end import small_example


def pipeline_for_resume(tmp_path: Path) -> Path:
    path = small_example(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["stages"][0]["load"].update(shard_size=1, limit=4)
    data["stages"][1]["generate"]["models"][0].update(k=2, max_tokens=48)
    data["stages"][2]["judge"]["sampling"]["max_tokens"] = 48  # the judge is not what these tests are about
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cached_calls(cache_dir: Path) -> int:
    return len(ResponseCache(cache_dir))


def sorted_rows(run_dir: Path, stage: str) -> list[dict]:
    return sorted(pq.read_table(run_dir / stage).to_pylist(), key=lambda r: r["prompt_id"])


def test_sigkill_mid_generation_then_resume(tmp_path, ray_machine):
    """Generation on two local Ray actors (`concurrency: 2`: more than one worker, so the run starts Ray), the
    whole process group killed mid-stage."""
    pipeline = pipeline_for_resume(tmp_path)
    data = yaml.safe_load(pipeline.read_text())
    data["stages"][1]["concurrency"] = 2
    data["stages"][1]["generate"]["models"][0]["k"] = 1  # the shards are what this test is about, not k
    data["engines"]["default"]["n_threads"] = 1  # two actors on two cores: one thread each, not two
    pipeline.write_text(yaml.safe_dump(data, sort_keys=False))
    killed_cache, clean_cache = tmp_path / "cache-killed", tmp_path / "cache-clean"

    # the interrupted run: kill the whole process group once two generate shards are done
    run_dir = tmp_path / "killed"
    exe = Path(sys.executable).parent / "curate"
    proc = subprocess.Popen([str(exe), "run", str(pipeline), "--run-dir", str(run_dir)],
                            env={**os.environ, "CURATE_CACHE_DIR": str(killed_cache)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    markers = run_dir / "_done" / "02_generate"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and len(list(markers.glob("part-*.json"))) < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = len(list(markers.glob("part-*.json")))
    assert 2 <= done_before < 4
    calls_before = cached_calls(killed_cache)
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"

    resumed = curate("run", "--resume", run_dir, env={"CURATE_CACHE_DIR": str(killed_cache)})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "ok"
    gen = m["stages"][1]
    assert gen["shards_skipped"] >= done_before
    assert gen["in"] == 4 and gen["out"] + gen["quarantined"] == 4

    # the uninterrupted run, with its own empty cache
    clean = curate("run", pipeline, "--run-dir", tmp_path / "clean", env={"CURATE_CACHE_DIR": str(clean_cache)})
    assert clean.returncode == 0, clean.stderr
    mc = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    total_calls = sum(s["model_calls"] for s in mc["stages"])
    resumed_calls = sum(s["model_calls"] for s in m["stages"])
    # nothing the killed run finished is asked again: only the calls it never completed are made
    assert calls_before + resumed_calls == total_calls
    for stage in ("02_generate", "03_judge", "05_export"):
        assert sorted_rows(run_dir, stage) == sorted_rows(tmp_path / "clean", stage), stage
    # no temp file was left behind counting as a shard
    assert not list(run_dir.rglob("part-*.parquet.tmp"))


def test_sigkill_mid_shard_then_resume_repeats_no_finished_call(tmp_path):
    """One shard of 4 prompts x 2 candidates: killed after some answers came back, before the shard is done. Each
    answer was stored when it arrived, so the resumed run asks only for the ones the killed run never got."""
    pipeline = pipeline_for_resume(tmp_path)
    data = yaml.safe_load(pipeline.read_text())
    data["stages"][0]["load"]["shard_size"] = 4
    pipeline.write_text(yaml.safe_dump(data, sort_keys=False))
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "curate"), "run", str(pipeline), "--run-dir",
                             str(run_dir)], env={**os.environ, "CURATE_CACHE_DIR": str(cache)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and (not (cache / "responses.sqlite").exists() or cached_calls(cache) < 3):
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    answered = cached_calls(cache)
    assert 3 <= answered < 8
    assert not (run_dir / "_done" / "02_generate" / "part-00000.json").exists()  # killed mid-shard

    resumed = curate("run", "--resume", run_dir, env={"CURATE_CACHE_DIR": str(cache)})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    gen = json.loads((run_dir / "manifest.json").read_text())["stages"][1]
    assert (gen["in"], gen["out"] + gen["quarantined"]) == (4, 4)
    assert gen["cache_hits"] == answered and gen["model_calls"] == 8 - answered


def test_an_edit_redoes_only_the_stages_whose_code_it_touches(tmp_path):
    """The stage code version covers the stage's module and what it imports of ours (lazily imported engines
    too): an edit to the llama.cpp engine changes generate's and judge's versions, not dedup's or export's."""
    import shutil

    from curate.pipelines.fingerprint import CODE_DIRS, stage_code_version

    root = Path(__file__).resolve().parent.parent
    for d in CODE_DIRS:
        shutil.copytree(root / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    names = ["generate", "judge", "dedup", "export", "feedback_mine"]
    before = {n: stage_code_version(n, tmp_path) for n in names}
    with open(tmp_path / "engines" / "llama_cpp.py", "a") as fh:
        fh.write("\n# an edit\n")
    stage_code_version.cache_clear()
    after = {n: stage_code_version(n, tmp_path) for n in names}
    assert {n for n in names if before[n] != after[n]} == {"generate", "judge", "feedback_mine"}
    with open(tmp_path / "judges" / "templates" / "harmlessness.yaml", "a") as fh:
        fh.write("\n# a template edit\n")
    stage_code_version.cache_clear()
    assert stage_code_version("judge", tmp_path) != after["judge"]
    assert stage_code_version("dedup", tmp_path) == after["dedup"]
