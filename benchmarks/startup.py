"""How long does `curate --help` take? (target < 1 s). Baseline: the bare interpreter starting in the same run."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import print_table

REPEATS = 7


def wall(cmd: list[str]) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    curate = str(Path(sys.executable).parent / "curate")
    base = wall([sys.executable, "-c", "pass"])
    rows = [["python -c pass (baseline)", base, 1.0]]
    for name, cmd in [("curate --help", [curate, "--help"]), ("curate stages", [curate, "stages"])]:
        t = wall(cmd)
        rows.append([name, t, t / base])
    print_table(f"startup, median of {REPEATS} runs", ["command", "seconds", "x baseline"], rows)
    print(f"\ncurate --help: {rows[1][1]:.2f} s (target < 1 s): {'PASS' if rows[1][1] < 1 else 'FAIL'}")


if __name__ == "__main__":
    main()
