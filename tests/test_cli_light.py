"""`curate --help` stays fast because the CLI module imports nothing heavy until a command runs."""

from __future__ import annotations

import subprocess
import sys


from conftest import curate
import pytest

#: the fast tier (./scripts/test --fast): no model, Ray or Prefect run here
pytestmark = pytest.mark.fast


def test_cli_module_imports_no_heavy_library():
    code = ("import sys, curate.pipelines.cli; heavy = [m for m in ('ray', 'pyarrow', 'llama_cpp', 'prefect', 'datasets', "
            "'polars') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_the_commands():
    res = curate("--help")
    assert res.returncode == 0
    for cmd in ("run", "validate", "stages", "show"):
        assert cmd in res.stdout


def test_stages_lists_reads_writes_and_fields():
    res = curate("stages")
    assert res.returncode == 0, res.stderr
    for text in ("load", "generate", "judge", "pairs", "export", "candidates.judgments", "min_margin"):
        assert text in res.stdout


def test_vllm_engine_without_vllm_is_a_clear_config_error(tmp_path):
    """vLLM is an optional extra: on a machine without it, validation names the extra (nothing is imported)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:  # a GPU machine with the extra: the error cannot happen
        return
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "pipelines" / "examples" / "vllm_offline.yaml"
    res = curate("validate", example)
    assert res.returncode == 2
    assert "engines.default: vLLM is not installed" in res.stderr and "curate[vllm]" in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(example.read_text().replace("tensor_parallel_size: 1", "tensor_parallel_size: 0"))
    res = curate("validate", bad)
    assert res.returncode == 2 and "tensor_parallel_size" in res.stderr


def test_a_negative_limit_is_refused_before_anything_starts(tmp_path):
    from conftest import EXAMPLES, curate

    res = curate("run", EXAMPLES / "mt_bench_pairs.yaml", "--limit", "-1", "--run-dir", tmp_path / "run")
    assert res.returncode == 2 and "--limit" in res.stderr
    assert not (tmp_path / "run").exists()


def test_a_run_dir_that_is_a_file_is_one_clear_line(tmp_path):
    from conftest import EXAMPLES, curate

    (tmp_path / "taken").write_text("x")
    res = curate("run", EXAMPLES / "mt_bench_pairs.yaml", "--run-dir", tmp_path / "taken")
    assert res.returncode == 2 and "is a file, not a directory" in res.stderr and "Traceback" not in res.stderr
