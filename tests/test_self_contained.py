"""A clone has nothing beside it: no file of the project may reach outside the repository for data or notes."""

from __future__ import annotations

import re
import subprocess

from conftest import ROOT

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
