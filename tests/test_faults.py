"""An unlucky operator's session: two runs into one directory, and a disk that fills up mid-run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import accounted, curate

PROMPTS = ["Name a fruit.", "Name a planet.", "Name a colour.", "Name a river.", "Name a tree.", "Name a bird."]


def pipeline_file(tmp_path: Path, n: int = 6) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:n]))
    spec = {"name": "faults", "cache_dir": str(tmp_path / "cache"),
            "stages": [{"load": {"path": str(prompts)}},
                       {"generate": {"models": [{"k": 1, "max_tokens": 12, "seed": 3}]}}]}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_second_run_into_a_busy_run_dir_exits_at_once_naming_the_holder(tmp_path):
    path, run = pipeline_file(tmp_path), tmp_path / "run"
    exe = Path(sys.executable).parent / "curate"
    first = subprocess.Popen([str(exe), "run", str(path), "--run-dir", str(run)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ((run / ".lock").exists() and (run / ".lock").read_text().strip()):
        assert time.time() < deadline and first.poll() is None, "the first run never took the run directory"
        time.sleep(0.05)
    start = time.perf_counter()
    second = curate("run", path, "--run-dir", run)
    assert second.returncode == 2, second.stdout + second.stderr
    # the holder is the process doing the first run: the child its `curate` command watches (pipelines/supervise.py)
    (holder,) = Path(f"/proc/{first.pid}/task/{first.pid}/children").read_text().split()
    assert f"in use by another curate run (pid {holder})" in second.stderr
    assert time.perf_counter() - start < 15  # refused before Prefect or Ray start
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, out + err
    accounted(run)
    again = curate("run", "--resume", run)  # the lock went with the first process
    assert again.returncode == 0, again.stdout + again.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB tmpfs (as root; skipped where the machine does not allow a mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write until the file system has not one byte left."""
    import os

    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        size = 1 << 16
        while size:
            try:
                os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == 28, exc
                size //= 2
    finally:
        os.close(fd)
    return filler


def temp_files(*folders: Path) -> list[Path]:
    return [p for f in folders for p in f.rglob("*.tmp")]


def test_a_full_disk_mid_run_fails_with_its_own_error_leaves_no_temp_files_and_resume_finishes(tmp_path, small_disk):
    path, run = pipeline_file(tmp_path), tmp_path / "run"
    # the generate stage's folder lives on the small disk, which is full before the run starts
    run.mkdir()
    (small_disk / "02_generate").mkdir()
    (run / "02_generate").symlink_to(small_disk / "02_generate")
    filler = fill(small_disk)
    res = curate("run", path, "--run-dir", run)
    assert res.returncode == 1, res.stdout + res.stderr
    first_line = res.stderr.strip().splitlines()[0]
    assert first_line.startswith("run failed:") and "No space left on device" in res.stderr, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "failed" and "No space left on device" in m["error"]
    assert [s["id"] for s in m["stages"]] == ["01_load"]
    assert not temp_files(run, small_disk)
    assert not list((run / "_done").glob("02_generate/*.json"))  # nothing of the failed stage counts as done

    filler.unlink()  # space again: the resume redoes only what was not done
    res = curate("run", "--resume", run)
    assert res.returncode == 0, res.stdout + res.stderr
    m = accounted(run)
    load, gen = m["stages"]
    assert load["shards_skipped"] == load["shards"] and gen["out"] == 6
    assert not temp_files(run, small_disk)


def test_a_run_dir_on_a_full_disk_fails_in_one_line_before_anything_starts(tmp_path, small_disk):
    path = pipeline_file(tmp_path, n=2)
    fill(small_disk)
    res = curate("run", path, "--run-dir", small_disk / "run")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "No space left on device" in res.stderr and "Traceback" not in res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not temp_files(small_disk)


def test_a_native_crash_in_the_engine_is_a_failed_run_with_one_line(tmp_path):
    """The engine's process (here the run's own: the embedded llama.cpp runs in it) gets SIGSEGV mid-generation,
    as a crashing native kernel would send it: `curate run` names the stage, the engine and the signal in one line,
    records `failed` in the manifest and exits 128 + 11, and the Python stack at the crash is in curate.log."""
    import os
    import signal

    path, run = pipeline_file(tmp_path), tmp_path / "run"
    spec = yaml.safe_load(path.read_text())
    spec["stages"][1]["generate"]["models"][0]["max_tokens"] = 96  # generation lasts well beyond the kill
    path.write_text(yaml.safe_dump(spec))
    exe = Path(sys.executable).parent / "curate"
    proc = subprocess.Popen([str(exe), "run", str(path), "--run-dir", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "_done" / "01_load").is_dir():
        assert time.time() < deadline and proc.poll() is None, "the run never reached generate"
        time.sleep(0.05)
    time.sleep(2)  # load is done: the run's process is loading the model or generating
    assert proc.poll() is None, "the run ended before it could be killed"
    (child,) = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    os.kill(child, signal.SIGSEGV)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGSEGV, (out, err)
    first = err.strip().splitlines()[0]
    assert first.startswith("run failed: stage 02_generate died with SIGSEGV in engine default (llama_cpp"), err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"] == first.removeprefix("run failed: ")
    assert "Fatal Python error: Segmentation fault" in (run / "curate.log").read_text()


def test_validate_engines_answers_a_real_prompt_on_this_cpu(tmp_path):
    """`curate validate --engines` loads the embedded engine and answers a prompt of a few hundred tokens (a
    one-token prompt survived llama.cpp's broken AMX kernels; a real one crashed). Where this machine's llama.cpp
    build has AMX kernels the engine must load without the extra weight buffers, the path that crashed."""
    import llama_cpp.llama_cpp as lib

    from curate.engines.llama_cpp import amx_in_build

    res = curate("validate", "--engines", path := pipeline_file(tmp_path))
    assert res.returncode == 0, res.stderr
    line = [ln for ln in res.stdout.splitlines() if "engines.default" in ln][0]
    assert line.startswith("ok engines.default: llama_cpp: ") and int(line.split(": ")[2].split()[0]) >= 250, line
    if amx_in_build(lib):
        probe = ("from curate.engines.llama_cpp import LlamaCppEngine; import llama_cpp.llama_cpp as lib; "
                 "LlamaCppEngine(n_ctx=512); print(lib.llama_model_default_params().use_extra_bufts)")
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "False"
    assert path.exists()
