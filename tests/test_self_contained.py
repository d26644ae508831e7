"""A clone has nothing beside it: no file of the project may reach outside the repository for data or notes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT
import pytest

#: the fast tier (./scripts/test --fast): no model, Ray or Prefect run here
pytestmark = pytest.mark.fast

# built from parts so that this file does not match itself
OUTSIDE = re.compile(r"\.\./" + "shared|/work/" + "shared|ROOT\\.parent|parent\\.parent\\.parent")


def test_no_tracked_file_points_outside_the_repository():
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for name in files:
        path = ROOT / name
        if name.startswith("tests/data/") or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{name}:{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, "paths outside the repository:\n" + "\n".join(hits)


BARE = ("pipelines", "stages", "judges", "schemas", "flows", "engines")


def test_every_import_of_ours_goes_through_the_curate_package():
    """The folders install as `curate.pipelines`, `curate.stages`, ...: a bare `import pipelines` works only from
    the repository root, and there a user's own `pipelines/` or `schemas/` folder would shadow ours."""
    import ast

    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for name in files:
        tree = ast.parse((ROOT / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            hits += [f"{name}:{node.lineno}: {m}" for m in modules if m.split(".")[0] in BARE]
    assert not hits, "bare imports (use curate.<package>):\n" + "\n".join(hits)


def test_the_install_is_one_top_level_package():
    """`pip install -e .` puts one name, `curate`, on the path: the folders are found under it, not beside it."""
    import curate.pipelines.runner

    assert Path(curate.pipelines.runner.__file__).resolve() == ROOT / "pipelines" / "runner.py"
    code = ("import importlib.util, sys; sys.path.remove('') if '' in sys.path else None; "
            "print([n for n in " + repr(BARE) + " if importlib.util.find_spec(n)])")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
