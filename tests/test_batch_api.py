"""Provider batch APIs (`openai_batch`, `anthropic_batch`) against a local server that speaks both protocols as
their references document them (tests/batch_api_server.py). The README's served example runs on it with its
answers from the embedded model behind llama-cpp-python's server; the fault tests use the server's canned answers,
which test the plumbing only (never a quality figure)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import accounted, curate

sys.path.insert(0, str(Path(__file__).parent))
from batch_api_server import serve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Name a fruit.", "Name a planet.", "Name a river.", "Name a colour.", "Name a tree.", "Name a bird."]


@pytest.fixture
def batch_server():
    server, state = serve()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    server.shutdown()


def creates(state) -> list[dict]:
    return [e for e in state.log if e["op"] in ("create", "upload")]


def generate_pipeline(tmp_path: Path, url: str, kind: str = "openai_batch", k: int = 2, **engine) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    pipeline = {"name": "batched", "cache_dir": str(tmp_path / "cache"),
                "engines": {"default": {"kind": kind, "base_url": url, "model": "smollm2", "collect_s": 0.5,
                                        "poll_interval": 0.1, "backoff_base": 0.01, **engine}},
                "stages": [{"load": {"path": str(prompts), "shard_size": 2}},
                           {"generate": {"models": [{"k": k, "max_tokens": 8}]}}]}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


def candidates(run: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for f in sorted((run / "02_generate").glob("*.parquet")):
        rows += pq.read_table(f).to_pylist()
    return rows


def test_the_served_example_runs_unchanged_on_openai_batch(llama_server, batch_server, tmp_path):
    """The README's served-model example with one word changed (`kind: openai_batch`), against a batch server whose
    answers come from the embedded model served by llama.cpp: the same pairs come out, every call went through
    provider batches, and the run is priced at the batch price."""
    from batch_api_server import serve as serve_backed

    server, state = serve_backed(backend=llama_server)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    text = (ROOT / "pipelines/examples/served_model.yaml").read_text()
    text = text.replace("kind: openai_http", "kind: openai_batch").replace("http://127.0.0.1:8000/v1", url)
    text = text.replace("data/mt_bench_questions.jsonl", str(ROOT / "pipelines/examples/data/mt_bench_questions.jsonl"))
    text = text.replace("name: mt_bench_pairs_served\n", f"name: mt_bench_pairs_served\ncache_dir: {tmp_path / 'c'}\n")
    path = tmp_path / "served_batch.yaml"
    path.write_text(text)
    assert "kind: openai_batch" in text and text.count("\n") == (ROOT / "pipelines/examples/served_model.yaml"
                                                                   ).read_text().count("\n") + 1
    run = curate("run", path, "--limit", "2", "--run-dir", tmp_path / "run")
    assert run.returncode == 0, run.stdout + run.stderr
    m = accounted(tmp_path / "run")
    gen, judge = m["stages"][1], m["stages"][2]
    assert gen["rows_out"] == 2 and gen["model_calls"] == 8
    assert judge["model_calls"] >= 8 and m["stages"][-1]["rows_out"] >= 0
    sent = [e for e in state.log if e["op"] == "create"]
    # every call went in a provider batch: generation's 8 in one, the judge's rounds in as many more
    assert sum(len(e["custom_ids"]) for e in sent) == gen["model_calls"] + judge["model_calls"]
    assert len(sent[0]["custom_ids"]) == 8
    assert gen["tokens"]["prompt_tokens"] > 0 and gen["tokens"]["completion_tokens"] > 0
    journal = tmp_path / "run" / "_work" / "batches.sqlite"
    assert journal.exists()
    shown = curate("batches", "list", tmp_path / "run")
    assert shown.returncode == 0 and sent[0]["batch"] in shown.stdout and "completed" in shown.stdout
    server.shutdown()


def test_failed_requests_go_again_in_a_later_batch_and_rejected_ones_are_row_errors(batch_server, tmp_path):
    url, state = batch_server
    state.controls["fail_next"] = [503, 2]  # the first two lines answered 503: sent again
    run = curate("run", generate_pipeline(tmp_path, url), "--run-dir", tmp_path / "run")
    assert run.returncode == 0, run.stdout + run.stderr
    m = accounted(tmp_path / "run")
    assert m["stages"][1]["model_calls"] == 12 and m["stages"][1]["rows_out"] == 6
    sent = [e for e in state.log if e["op"] == "create"]
    assert [len(e["custom_ids"]) for e in sent] == [12, 2]
    assert set(sent[1]["custom_ids"]) < set(sent[0]["custom_ids"])
    assert all(c["response"].startswith("canned answer") for r in candidates(tmp_path / "run") for c in r["candidates"])

    # a 400 inside a batch is the row's own error: quarantined, not sent again
    (tmp_path / "b").mkdir()
    state.log.clear()
    state.controls["fail_next"] = [400, 1]
    run = curate("run", generate_pipeline(tmp_path / "b", url, k=1), "--run-dir", tmp_path / "b" / "run")
    m = json.loads((tmp_path / "b" / "run" / "manifest.json").read_text())
    gen = m["stages"][1]
    assert gen["in"] == gen["out"] + gen["dropped"] + gen["quarantined"] and gen["quarantined"] == 1
    assert [len(e["custom_ids"]) for e in state.log if e["op"] == "create"] == [6]
    import pyarrow.parquet as pq

    (q,) = pq.read_table(tmp_path / "b" / "run" / "_quarantined" / "02_generate").to_pylist()
    assert "HTTP 400" in q["reason"]


def test_an_expired_batch_sends_its_unanswered_requests_once_more_and_the_manifest_says_so(batch_server, tmp_path):
    url, state = batch_server
    state.controls["expire_next"] = 1  # the first batch answers half its lines, then expires
    run = curate("run", generate_pipeline(tmp_path, url), "--run-dir", tmp_path / "run")
    assert run.returncode == 0, run.stdout + run.stderr
    m = accounted(tmp_path / "run")
    sent = [e for e in state.log if e["op"] == "create"]
    assert [len(e["custom_ids"]) for e in sent] == [12, 6]
    notes = " ".join(m["stages"][1].get("notes") or [])
    assert "expired" in notes and "6 unanswered requests sent once more" in notes
    assert m["stages"][1]["rows_out"] == 6

    # a second expiry of the same requests is a transient failure: the run says so and a resume asks again
    (tmp_path / "b").mkdir()
    state.log.clear()
    state.controls["expire_next"] = 2
    run = curate("run", generate_pipeline(tmp_path / "b", url, k=1), "--run-dir", tmp_path / "b" / "run")
    m = json.loads((tmp_path / "b" / "run" / "manifest.json").read_text())
    # 6 sent, 3 expired and sent once more, 2 of them expired again: transient failures, so the flow's retry of
    # the stage asks for those 2 again (in a batch of their own)
    assert [len(e["custom_ids"]) for e in state.log if e["op"] == "create"] == [6, 3, 2]
    assert accounted(tmp_path / "b" / "run")["stages"][1]["rows_out"] == 6


def kill_while_held(state, path: Path, run_dir: Path) -> None:
    """`curate run` with the server holding its batches in_progress, killed (SIGKILL, its process group) once it
    has created a batch and polled it: the batch stays at the provider."""
    state.controls["hold"] = True
    exe = Path(sys.executable).parent / "curate"
    proc = subprocess.Popen([str(exe), "run", str(path), "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while not [e for e in state.log if e["op"] == "create"] and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, proc.stdout.read().decode()
    time.sleep(0.5)  # it polls the held batch
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_kill_while_a_batch_runs_then_resume_sends_nothing_twice(batch_server, tmp_path):
    """The process dies while its batch is at the provider (still running, and billed): `--resume` finds the
    batch in the run directory's journal and takes its answers; the server's log shows no new upload or batch."""
    url, state = batch_server
    kill_while_held(state, generate_pipeline(tmp_path, url), tmp_path / "run")
    before = creates(state)
    assert [e["op"] for e in before] == ["upload", "create"] and len(before[1]["custom_ids"]) == 12

    listed = curate("batches", "list", tmp_path / "run")
    assert before[1]["batch"] in listed.stdout and "in_progress" in listed.stdout

    state.controls["hold"] = False  # the batch goes on at the provider and ends
    resumed = curate("run", "--resume", tmp_path / "run")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert creates(state) == before  # nothing uploaded or created again
    m = accounted(tmp_path / "run")
    assert m["stages"][1]["rows_out"] == 6 and m["stages"][1]["model_calls"] == 12
    assert len(candidates(tmp_path / "run")) == 6


def test_cancel_stops_the_runs_batches_at_the_provider_and_a_resume_sends_what_they_did_not_answer(
        batch_server, tmp_path):
    url, state = batch_server
    kill_while_held(state, generate_pipeline(tmp_path, url, kind="anthropic_batch"), tmp_path / "run")
    (first,) = [e for e in state.log if e["op"] == "create"]
    cancelled = curate("batches", "cancel", tmp_path / "run")
    assert cancelled.returncode == 0 and f"cancelled {first['batch']}" in cancelled.stdout, cancelled.stderr
    assert {"op": "cancel", "batch": first["batch"]} in state.log
    state.controls["hold"] = False
    resumed = curate("run", "--resume", tmp_path / "run")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    again = [e for e in state.log if e["op"] == "create"][1:]
    assert [sorted(e["custom_ids"]) for e in again] == [sorted(first["custom_ids"])]  # cancelled: sent again
    assert accounted(tmp_path / "run")["stages"][1]["rows_out"] == 6


def test_a_kill_between_upload_and_journal_finds_the_batch_by_its_file(batch_server, tmp_path):
    """OpenAI's batch is created from an uploaded file, recorded in the journal before the batch exists: a
    process that died after `create` but before it wrote the batch id finds the batch by its file on resume."""
    from curate.engines.base import Request, Sampling
    from curate.engines.batch_api import Journal, journal_path
    from curate.engines.cache import ResponseCache, request_key
    from curate.engines.config import build_engine, parse_engine

    url, state = batch_server
    cfg = parse_engine({"kind": "openai_batch", "base_url": url, "model": "m", "poll_interval": 0.05,
                        "collect_s": 0.05})
    engine = build_engine(cfg, ResponseCache(tmp_path / "cache"))
    engine.run_dir = tmp_path / "run"
    requests = [Request([{"role": "user", "content": f"q{i}"}], Sampling(max_tokens=4)) for i in range(3)]
    # what a process that died right after `create` leaves: the file uploaded, the batch created, no batch id
    provider = engine.engine.provider
    lines = [provider.line(request_key(engine.identity, r), r) for r in requests]
    ref = provider.prepare(lines)
    Journal(journal_path(tmp_path / "run")).add(engine.engine._engine, ref, [x["custom_id"] for x in lines])
    provider.create(ref, lines)
    before = creates(state)
    out = engine.complete(requests)
    assert all(c.ok for c in out) and creates(state) == before


def test_anthropic_message_batches_round_trip(batch_server, tmp_path, monkeypatch):
    url, state = batch_server
    path = generate_pipeline(tmp_path, url, kind="anthropic_batch", k=1, api_key_env="TEST_ANTHROPIC_KEY")
    run = curate("run", path, "--run-dir", tmp_path / "run", env={"TEST_ANTHROPIC_KEY": "sk-ant-test-0000"})
    assert run.returncode == 0, run.stdout + run.stderr
    m = accounted(tmp_path / "run")
    assert m["stages"][1]["rows_out"] == 6 and m["stages"][1]["tokens"]["prompt_tokens"] > 0
    (sent,) = [e for e in state.log if e["op"] == "create"]
    assert sent["api"] == "anthropic" and len(sent["custom_ids"]) == 6
    assert sent["headers"] == {"anthropic-version": "2023-06-01"}
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file():
            assert b"sk-ant-test-0000" not in f.read_bytes(), f


@pytest.mark.fast
def test_validate_says_what_a_batch_engine_cannot_do(tmp_path):
    from curate.engines.anthropic_batch import params
    from curate.engines.base import Request, Sampling, with_images
    from curate.engines.config import parse_engine

    with pytest.raises(ValueError, match="no grammar"):
        parse_engine({"kind": "anthropic_batch", "base_url": "https://api.anthropic.com/v1", "model": "claude",
                      "grammar_param": "grammar"})
    for kind in ("openai_batch", "anthropic_batch"):
        cfg = parse_engine({"kind": kind, "base_url": "http://127.0.0.1:9/v1", "model": "m"})
        assert "batch" in cfg.capabilities() and "images" not in cfg.capabilities()
    # the Messages API's shapes: system on top, images as base64 blocks
    msgs = with_images([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is it?"}],
                       ["data:image/png;base64,AAAA"])
    p = params(parse_engine({"kind": "anthropic_batch", "base_url": "http://x/v1", "model": "claude"}),
               Request(msgs, Sampling(max_tokens=9)))
    assert p["system"] == "Be brief." and p["max_tokens"] == 9 and [m["role"] for m in p["messages"]] == ["user"]
    assert p["messages"][0]["content"][1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                          "data": "AAAA"}}
    # image judges on a batch engine: validation says when the engine was not told the model reads images
    from conftest import EXAMPLES
    from curate.pipelines.config import ConfigError, load_pipeline

    data = yaml.safe_load((EXAMPLES / "image_judges.yaml").read_text())
    data["stages"][0]["load"]["path"] = str(EXAMPLES / data["stages"][0]["load"]["path"])
    data["engines"]["vlm"] = {**data["engines"]["vlm"], "kind": "openai_batch"}
    path = tmp_path / "image_batch.yaml"
    path.write_text(yaml.safe_dump(data))
    assert "batch" in load_pipeline(path).engines["vlm"].capabilities()
    del data["engines"]["vlm"]["images"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert any("needs an engine with images; engine 'vlm' (openai_batch) lacks it" in p for p in info.value.problems)
