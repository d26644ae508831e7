"""What `curate` prints: the row accounting, the sources, the judges, the progress bars. Commands
(pipelines/cli.py) call these; nothing here runs a pipeline."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

# Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns; give the accounting table room.
console = Console(width=None if sys.stdout.isatty() else 160)
#: curate's own error lines; during a run its `file` is the real stderr while fd 2 goes to the run's log
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def print_accounting(manifest: dict) -> None:
    table = Table(title="row accounting (in = out + dropped + quarantined)")
    for col in ("stage", "in", "out", "dropped", "quarantined", "rows out", "model calls", "cache hits",
                "shards (skipped)", "seconds", "adds up"):
        table.add_column(col, justify="right" if col not in ("stage",) else "left")
    for s in manifest["stages"]:
        table.add_row(
            s["id"], str(s["in"]), str(s["out"]), str(s["dropped"]), str(s["quarantined"]), str(s["rows_out"]),
            str(s["model_calls"]), str(s["cache_hits"]), f"{s['shards']} ({s['shards_skipped']})",
            f"{s['seconds']:.1f}", "[green]yes[/]" if s["balanced"] else "[red]NO[/]",
        )
    console.print(table)
    for s in manifest["stages"]:
        if s.get("summary"):
            figures = ", ".join(f"{k} {fmt(v) if isinstance(v, float) else v}" for k, v in s["summary"].items())
            console.print(f"{s['id']}: {figures}")


def print_cost(manifest: dict) -> None:
    """Tokens and cost per stage and engine (the calls made by this run; cache hits as saved cost), the run's
    total and its cost per exported row. Nothing when no stage called a model."""
    from curate.pipelines.costs import COST_COLUMNS, cost_line, cost_rows

    if not manifest.get("cost"):
        return
    table = Table(title="cost (tokens from the models' usage; saved: answered from the cache)")
    for col in COST_COLUMNS:
        table.add_column(col, justify="left" if col in ("stage", "engine", "model", "price") else "right")
    for row in cost_rows(manifest):
        table.add_row(*row)
    console.print(table)
    console.print(cost_line(manifest), highlight=False)


def print_damaged(manifest: dict) -> None:
    """The done shards a resume found damaged and redid, and what the response cache reported (one line each)."""
    for stage in manifest.get("stages", []):
        for why in stage.get("damaged_redone") or []:
            err_console.print(f"[yellow]redone:[/] {stage['id']}: {why}", soft_wrap=True, highlight=False)
        for note in stage.get("notes") or []:
            err_console.print(f"[yellow]note:[/] {stage['id']}: {note}", soft_wrap=True, highlight=False)


def print_sources(manifest: dict) -> None:
    """A multi-source load's accounting, per source: in = out + dropped + quarantined."""
    load = next((s for s in manifest.get("stages", []) if s.get("stats") and any(
        k.startswith("source:") for k in s["stats"])), None)
    if load is None:
        return
    counts: dict[str, dict[str, int]] = {}
    for key, value in load["stats"].items():
        if key.startswith("source:"):
            name, what = key.removeprefix("source:").rsplit(":", 1)
            counts.setdefault(name, {})[what] = int(value)
    if len(counts) < 2:
        return
    table = Table(title=f"{load['id']}: rows per source (in = out + dropped + quarantined)")
    for col in ("source", "in", "out", "dropped", "quarantined"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for name, c in counts.items():
        table.add_row(name, *(str(c.get(k, 0)) for k in ("in", "out", "dropped", "quarantined")))
    console.print(table)


def print_judges(judges: dict) -> None:
    """Per judge: what it scored, what did not parse, and its bias probes; then inter-judge agreement."""
    per = judges.get("per_judge") or {}
    if not per:
        return
    table = Table(title="judges (bias probes: position consistency, longer response wins, self-preference gap)")
    for col in ("judge", "kind", "scored", "unparsed", "position consistency", "longer wins", "self-pref gap"):
        table.add_column(col, justify="left" if col in ("judge", "kind") else "right")
    for name, v in per.items():
        table.add_row(name, v["kind"], str(v["scored"]), str(v["unparsed"]), fmt(v.get("position_consistency")),
                      fmt(v.get("longer_wins")), fmt((v.get("self_preference") or {}).get("gap")))
    console.print(table)
    kappas = sorted(k["kappa"] for k in judges.get("cohen_kappa", []) if k["kappa"] == k["kappa"])  # not nan
    if kappas:
        console.print(f"Cohen's kappa over {len(kappas)} pairs of judges: median {fmt(kappas[len(kappas) // 2])}, "
                      f"range {fmt(kappas[0])} to {fmt(kappas[-1])} (each pair in manifest.json)")
    if judges.get("krippendorff_alpha") is not None:
        console.print(f"Krippendorff's alpha: {fmt(judges['krippendorff_alpha'])} "
                      f"(on {judges['alpha_units']} candidates)")
    if judges.get("source_agreement"):
        table = Table(title="sources' labels vs the other judges (same side preferred, on the pairs both decided)")
        for col in ("source", "label", "judge", "pairs", "agreement", "kappa"):
            table.add_column(col, justify="left" if col in ("source", "label", "judge") else "right")
        for r in judges["source_agreement"]:
            table.add_row(r["source"], r["label"], r["judge"], str(r["pairs"]), fmt(r["agreement"]), fmt(r["kappa"]))
        console.print(table)


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def per_second(rows_per_s: float) -> str:
    """Rows/s a person can read at any speed: 1,234 rows/s, 2.5 rows/s, 1.8 rows/min."""
    if rows_per_s >= 100:
        return f"{rows_per_s:,.0f} rows/s"
    if rows_per_s >= 1:
        return f"{rows_per_s:.1f} rows/s"
    return f"{rows_per_s * 60:.1f} rows/min"


def bars():
    """One line per stage: a bar over its input rows, rows/s and the time left (rich); off a terminal, one line
    per stage when it ends (a `pipelines.runner.Progress`)."""
    import time

    from curate.pipelines.runner import Progress as RunProgress
    from curate.pipelines.supervise import tell
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class Bars(RunProgress):
        def __init__(self) -> None:
            self._tasks: dict = {}
            self._started: dict = {}
            self._finished: dict = {}  # input rows of a stage's finished shards
            self._bar = Progress(TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                                 TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                 TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
                                 disable=not sys.stdout.isatty() and not os.environ.get("CURATE_PROGRESS"))

        def __enter__(self):
            self._bar.start()
            return self

        def __exit__(self, *exc):
            self.stop()

        def stop(self):
            self._bar.stop()

        def stage_start(self, stage_id, total_rows):
            tell("stage", stage_id)
            self._started[stage_id] = time.perf_counter()
            self._tasks[stage_id] = self._bar.add_task(stage_id, total=total_rows or None, rate="")

        def shard_done(self, stage_id, rows):
            self._finished[stage_id] = self._finished.get(stage_id, 0) + rows
            self.rows_running(stage_id, 0)

        def rows_running(self, stage_id, rows):
            done = self._finished.get(stage_id, 0) + rows
            speed = done / max(time.perf_counter() - self._started[stage_id], 1e-9)
            self._bar.update(self._tasks[stage_id], completed=done, rate=per_second(speed))

        def stage_end(self, stage_id):
            task = self._tasks[stage_id]
            t = self._bar.tasks[task]
            if t.total is None or t.total != t.completed:
                self._bar.update(task, total=t.completed)
            if self._bar.disable:
                secs = time.perf_counter() - self._started[stage_id]
                console.print(f"{stage_id}: {int(t.completed):,} rows in {secs:.1f} s "
                              f"({per_second(t.completed / max(secs, 1e-9))})")

    return Bars()


def engine_label(name: str, cfg) -> str:
    """`default (llama_cpp: SmolLM2-135M-Instruct.Q4_1.gguf)`: what a crash report names."""
    model = getattr(cfg, "model", None) or getattr(cfg, "model_path", None)
    model = Path(model).name if cfg.kind == "llama_cpp" and model else model
    if cfg.kind == "llama_cpp" and not model:
        model = "embedded SmolLM2-135M-Instruct"
    return f"{name} ({cfg.kind}: {model})" if model else f"{name} ({cfg.kind})"
