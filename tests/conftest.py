"""Shared fixtures. Tests use the real parts: local Ray, the embedded llama.cpp model, real Parquet files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
EXAMPLES = ROOT / "pipelines" / "examples"


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    """Keep caches, Prefect's home and Ray's temp files out of the user's home."""
    base = tmp_path_factory.mktemp("env")
    os.environ["CURATE_CACHE_DIR"] = str(base / "cache")
    os.environ["PREFECT_HOME"] = str(base / "prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    yield


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared fixture data is missing: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def copy_data(tmp_path, shared_data):
    """Copy a file from ../shared/data into the test's folder (tests never write to shared/)."""

    def copy(rel: str) -> Path:
        dst = tmp_path / Path(rel).name
        shutil.copy(shared_data / rel, dst)
        return dst

    return copy


def curate(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run the `curate` CLI as a user would, in a subprocess."""
    exe = Path(sys.executable).parent / "curate"
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
