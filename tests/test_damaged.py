"""Damaged run directories and caches, as shared storage and copies damage them: a resume verifies what it
trusts and redoes what is damaged; a damaged response cache is moved aside, never blocks a run; `curate show
--verify` finds a damaged shard without running anything."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from conftest import EXAMPLES, accounted, curate, example_pipeline


def export_of(run: Path) -> list[dict]:
    m = accounted(run)
    return pq.read_table(run / m["stages"][-1]["id"]).to_pylist()


def test_a_damaged_checkpoint_is_redone_on_resume_and_a_damaged_cache_moved_aside(tmp_path):
    """The two cases of the issue on the README's example: a finished judge shard cut in half, then `--resume`;
    the response cache cut to a third, then a new run. Both end with the export of the undamaged run."""
    spec = example_pipeline(tmp_path, "mt_bench_pairs")
    run = tmp_path / "run"
    res = curate("run", spec, "--limit", "2", "--run-dir", run, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    want = export_of(run)
    shard = run / "03_judge" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    verify = curate("show", "--verify", run)
    assert verify.returncode == 1 and f"damaged: {shard}" in verify.stderr
    resumed = curate("run", "--resume", run)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"redone: 03_judge: {shard} has " in " ".join(resumed.stderr.split())
    m = accounted(run)
    judge = next(s for s in m["stages"] if s["id"] == "03_judge")
    assert judge["damaged_redone"] and judge["model_calls"] == 0  # redone from the cache: no call paid twice
    assert export_of(run) == want
    assert curate("show", "--verify", run).returncode == 0

    cache = tmp_path / "cache" / "responses.sqlite"
    for extra in (cache.with_name(cache.name + "-wal"), cache.with_name(cache.name + "-shm")):
        extra.unlink(missing_ok=True)
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 3])
    assert curate("cache", "check", "--dir", cache.parent).returncode == 1
    again = curate("run", spec, "--limit", "2", "--run-dir", tmp_path / "again", timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "the response cache" in again.stderr and "moved aside to responses.sqlite.damaged-" in again.stderr
    assert list(cache.parent.glob("responses.sqlite.damaged-*"))
    assert export_of(tmp_path / "again") == want  # its calls made again, seeded: the same answers
    assert curate("cache", "check", "--dir", cache.parent).returncode == 0


def test_random_damage_between_a_run_and_its_resume_never_goes_unnoticed(tmp_path):
    """Seeded: random bytes of random shards, markers and the manifest are overwritten (or files cut short)
    between a run and its resume. Every case ends in the undamaged run's export, or in a one-line error that
    names the damaged file: never a traceback, a hang or a dataset that silently differs."""
    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join((EXAMPLES / "data" / "hh_rlhf_harmless_40.jsonl").read_text().splitlines()[:12]) + "\n")
    spec = tmp_path / "p.yaml"
    spec.write_text(yaml.safe_dump({"name": "fuzz", "stages": [
        {"load": {"path": str(data), "layout": "hh_rlhf", "shard_size": 4}}, {"pairs": {}}, {"export": {"format": "trl"}}]}))
    clean = tmp_path / "clean"
    assert curate("run", spec, "--run-dir", clean).returncode == 0
    want = export_of(clean)
    rng = random.Random(7)
    for case in range(6):
        run = tmp_path / f"case{case}"
        subprocess.run(["cp", "-r", str(clean), str(run)], check=True)
        # the copy's markers name the clean run's files: point them at the copy, as a moved run dir would be
        for marker in run.glob("_done/*/*.json"):
            marker.write_text(marker.read_text().replace(str(clean), str(run)))
        files = sorted(p for p in run.rglob("*") if p.is_file() and (p.suffix in (".parquet", ".json")))
        for victim in rng.sample(files, 2):
            raw = bytearray(victim.read_bytes())
            if rng.random() < 0.5 and len(raw) > 8:
                del raw[rng.randrange(1, len(raw)):]
            else:
                for _ in range(4):
                    raw[rng.randrange(len(raw))] = rng.randrange(256)
            victim.write_bytes(bytes(raw))
        res = curate("run", "--resume", run)
        if res.returncode == 0:
            assert export_of(run) == want, f"case {case}: a resumed run's export differs"
        else:
            assert "Traceback" not in res.stderr, res.stderr[-2000:]
            lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
            assert lines and str(run) in res.stderr, res.stderr[-2000:]


def test_concurrent_writers_share_one_cache_safely(tmp_path):
    """Four processes write and read the same cache file at once (several runs and Ray workers on a machine)."""
    code = ("import sys; from curate.engines.cache import ResponseCache; c = ResponseCache(sys.argv[1]); "
            "w = sys.argv[2]; [c.put_values({f'{w}-{i}': {'n': i}}) for i in range(300)]; "
            "got = c.get_values([f'{w}-{i}' for i in range(300)]); assert len(got) == 300, len(got)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(w)]) for w in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    from curate.engines.cache import ResponseCache

    cache = ResponseCache(tmp_path, repair=False)
    assert len(cache) == 1200 and cache.check() == []
