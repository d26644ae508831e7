"""Global dedup as a user runs it: the same kept rows whatever the shard size or worker count, on a two-node Ray
cluster too, across fields and sources, and after a kill -9 in the middle of the distributed step."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import EXAMPLES, accounted, curate

pytestmark = pytest.mark.full


def write_corpus(path: Path, n: int, seed: int = 0) -> tuple[set[str], set[str]]:
    """n prompts of MT-Bench's words with planted duplicates: exact up to case and punctuation, and near (a word
    appended to a 20-40 word prompt: word 3-gram Jaccard > 0.9). Returns the planted (exact, near) ids."""
    words = sorted({w.strip(".,!?;:()\"'").lower() for line in (EXAMPLES / "data" / "mt_bench_questions.jsonl")
                    .read_text().splitlines() for w in json.loads(line)["turns"][0].split()} - {""})
    rng = random.Random(seed)
    texts, exact, near = [], set(), set()
    for i in range(n):
        roll = rng.random()
        if i > 10 and roll < 0.08:
            texts.append(texts[rng.randrange(i)].upper() + "!")
            exact.add(f"p{i}")
        elif i > 10 and roll < 0.14:
            texts.append(texts[rng.randrange(i)].lower() + " " + rng.choice(words))
            near.add(f"p{i}")
        else:
            texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(20, 40))))
    with open(path, "w") as fh:
        for i, t in enumerate(texts):
            fh.write(json.dumps({"id": f"p{i}", "prompt": t}) + "\n")
    return exact, near


def pipeline(tmp_path: Path, data: Path, name: str, shard_size: int, concurrency: int | None = None,
             method: str = "minhash") -> Path:
    dedup: dict = {"dedup": {"method": method, "threshold": 0.8}}
    if concurrency:
        dedup["concurrency"] = concurrency
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "stages": [
        {"load": {"path": str(data), "id_field": "id", "shard_size": shard_size}}, dedup]}))
    return path


def kept(run: Path) -> list[str]:
    return sorted(pq.read_table(run / "02_dedup", columns=["source_id"])["source_id"].to_pylist())


def test_kept_rows_do_not_depend_on_shards_or_workers(tmp_path, ray_machine):
    data = tmp_path / "prompts.jsonl"
    exact, near = write_corpus(data, 3000)
    results = {}
    for label, shard, workers in [("one-shard", 4096, None), ("shards-97", 97, None), ("2-workers", 251, 2),
                                  ("4-workers", 97, 4)]:
        run = tmp_path / label
        res = curate("run", pipeline(tmp_path, data, label, shard, workers), "--run-dir", run)
        assert res.returncode == 0, res.stdout + res.stderr
        manifest = accounted(run)
        results[label] = kept(run)
        dedup = manifest["stages"][1]
        assert dedup["decision"]["rows"] == dedup["dropped"] == 3000 - len(results[label])
        if workers:  # the shards ran on Ray workers, not in the curate process
            assert sum(dedup["nodes"].values()) == dedup["shards"]
    assert len({tuple(v) for v in results.values()}) == 1
    dropped = set(pq.read_table(tmp_path / "one-shard" / "_dropped" / "02_dedup")["record"].to_pylist())
    dropped_ids = {json.loads(r)["source_id"] for r in dropped}
    assert exact <= dropped_ids  # every exact copy is found (MinHash sees identical normalized text as identical)
    assert len(near & dropped_ids) >= 0.95 * len(near)
    assert len(dropped_ids - exact - near) <= 3  # chance collisions of random texts are rare
    reason = pq.read_table(tmp_path / "one-shard" / "_dropped" / "02_dedup")["reason"][0].as_py()
    assert reason.startswith("minhash duplicate of prompt_id ") and "estimated Jaccard" in reason


def test_dedup_on_several_fields_across_sources(tmp_path):
    """Pairs from two sources: the same prompt with another answer is kept under `field: [prompt, chosen]`, a
    copy of a pair from the other source is dropped and names the first source's row."""
    a = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": "No."} for i in range(6)]
    b = [dict(a[1]), {**a[2], "chosen": "A different answer."}, {"prompt": "New?", "chosen": "Yes.", "rejected": "No."}]
    for name, rows in (("a", a), ("b", b)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "merge.yaml"
    spec.write_text(yaml.safe_dump({"name": "merge", "stages": [
        {"load": {"sources": [{"source": "a", "path": str(tmp_path / "a.jsonl"), "layout": "trl"},
                              {"source": "b", "path": str(tmp_path / "b.jsonl"), "layout": "trl"}]}},
        {"pairs": {}},
        {"dedup": {"method": "exact", "field": ["prompt", "chosen"]}}]}))
    run = tmp_path / "run"
    res = curate("run", spec, "--run-dir", run)
    assert res.returncode == 0, res.stdout + res.stderr
    accounted(run)
    out = pq.read_table(run / "03_dedup").to_pylist()
    assert len(out) == 8 and sum(r["source"] == "b" for r in out) == 2
    (drop,) = pq.read_table(run / "_dropped" / "03_dedup").to_pylist()
    assert drop["source"] == "b" and json.loads(drop["record"])["chosen"] == "Answer 1."
    first = next(r for r in out if r["source"] == "a" and r["chosen"] == "Answer 1.")
    assert drop["reason"] == f"exact duplicate of prompt_id {first['prompt_id']} (prompt+chosen)"


def test_kill_during_the_distributed_dedup_then_resume_gives_the_same_kept_rows(tmp_path, ray_machine):
    data = tmp_path / "prompts.jsonl"
    write_corpus(data, 20_000, seed=1)
    spec = pipeline(tmp_path, data, "killed", 500, concurrency=2)
    whole = tmp_path / "whole"
    res = curate("run", spec, "--run-dir", whole)
    assert res.returncode == 0, res.stdout + res.stderr

    run = tmp_path / "run"
    exe = Path(sys.executable).parent / "curate"
    proc = subprocess.Popen([str(exe), "run", str(spec), "--run-dir", str(run)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    keys = run / "_work" / "02_dedup" / "keys"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(keys.glob("part-*.json"))) < 3:
        time.sleep(0.05)
    assert len(list(keys.glob("part-*.json"))) >= 3, "the key step never started"
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its run process and its Ray workers
    proc.wait()
    assert not (run / "_work" / "02_dedup" / "decision.json").exists()  # killed in the key step
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
    assert not (run / "_done" / "02_dedup").exists() or len(list((run / "_done" / "02_dedup").glob("*.json"))) < 40

    res = curate("run", "--resume", run)
    assert res.returncode == 0, res.stdout + res.stderr
    accounted(run)
    assert kept(run) == kept(whole)
    assert not keys.exists()  # the key files go once every shard is done; the decision stays
    assert (run / "_work" / "02_dedup" / "decisions.parquet").is_file()


def test_semantic_dedup_finds_paraphrases_and_names_the_twin_and_similarity(tmp_path):
    """MT-Bench prompts, some asked again in other words: the rewordings are dropped, each naming the prompt it
    repeats and the cosine similarity; a rerun embeds nothing again (the embeddings are cached)."""
    rows = [json.loads(line) for line in (EXAMPLES / "data" / "mt_bench_questions.jsonl").read_text().splitlines()]
    prompts = [{"id": f"q{r['question_id']}", "prompt": r["turns"][0]} for r in rows]
    reworded = [{"id": f"re{p['id']}", "prompt": "Could you please " + p["prompt"][0].lower() + p["prompt"][1:]}
                for p in prompts[:12]]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in prompts + reworded))
    spec = tmp_path / "semantic.yaml"
    spec.write_text(yaml.safe_dump({"name": "semantic", "stages": [
        {"load": {"path": str(data), "id_field": "id", "shard_size": 25}},
        {"dedup": {"method": "semantic", "threshold": 0.9}}]}))
    run = tmp_path / "run"
    res = curate("run", spec, "--run-dir", run)
    assert res.returncode == 0, res.stdout + res.stderr
    manifest = accounted(run)
    dropped = pq.read_table(run / "_dropped" / "02_dedup").to_pylist()
    dropped_ids = {json.loads(d["record"])["source_id"] for d in dropped}
    assert len(dropped_ids & {r["id"] for r in reworded}) >= 10  # most rewordings found
    assert len(dropped_ids - {r["id"] for r in reworded}) <= 1  # and hardly any distinct question
    (d,) = [d for d in dropped if json.loads(d["record"])["source_id"] == "req81"]
    (twin,) = [r for r in pq.read_table(run / "02_dedup").to_pylist() if r["source_id"] == "q81"]
    assert d["reason"].startswith(f"semantic duplicate of prompt_id {twin['prompt_id']} (prompt), cosine similarity 0.")
    assert manifest["stages"][1]["model_calls"] == len(prompts + reworded)  # one embedding per prompt

    again = curate("run", spec, "--run-dir", tmp_path / "again")
    assert again.returncode == 0, again.stdout + again.stderr
    second = accounted(tmp_path / "again")["stages"][1]
    assert second["model_calls"] == 0 and second["cache_hits"] == len(prompts + reworded)
    assert kept(tmp_path / "again") == kept(run)
