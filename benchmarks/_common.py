"""Helpers shared by the benchmark scripts: a small pipeline built from the shipped example, and a table printer."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
#: the `curate` command of this Python (benchmarks drive the CLI as a user does)
CURATE = str(Path(sys.executable).parent / "curate")
EXAMPLE = ROOT / "pipelines" / "examples" / "mt_bench_pairs.yaml"


def example_pipeline(folder: Path, *, limit: int, shard_size: int, k: int, max_tokens: int,
                     generate_extra: dict | None = None, engine: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(EXAMPLE.parent / "data", folder / "data", dirs_exist_ok=True)
    data = yaml.safe_load(EXAMPLE.read_text())
    data["stages"][0]["load"].update(limit=limit, shard_size=shard_size)
    data["stages"][1]["generate"]["models"][0].update(k=k, max_tokens=max_tokens)
    data["stages"][1].update(generate_extra or {})
    data["engines"]["default"].update(engine or {})
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [header] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
