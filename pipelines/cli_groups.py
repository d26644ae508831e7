"""The `curate` command's groups of housekeeping commands: `server` (the local Prefect server), `cache` (the
response cache), `review` (the human review round-trip) and `batches` (a run's provider batches). pipelines/cli.py adds them to the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from curate.pipelines.console import console, err_console, fmt


server_app = typer.Typer(help="the local Prefect server that runs share when no PREFECT_API_URL is set")


@server_app.command("start")
def server_start() -> None:
    """Start this machine's curate Prefect server now (the first run would start it otherwise), or show the
    running one."""
    from curate.flows.local_server import connect

    url, started = connect()
    console.print(f"{'started' if started else 'already running'}: {url}", highlight=False)


@server_app.command("status")
def server_status() -> None:
    """Show whether this machine's curate Prefect server is up, its URL and the runs using it."""
    from curate.flows.local_server import state_dir, status

    state = status()
    if state is None:
        console.print(f"no curate Prefect server is running ({state_dir()})")
        return
    console.print(f"running: pid {state['pid']}, {state['url']}; {len(state['clients'])} run(s) using it; it stops "
                  f"after {state['idle_s']:.0f} s without one. `prefect` commands reach it with "
                  f"PREFECT_API_URL={state['url']}", soft_wrap=True, highlight=False)


@server_app.command("stop")
def server_stop() -> None:
    """Stop this machine's curate Prefect server (the next run starts a new one; its history stays in the
    database under PREFECT_HOME)."""
    from curate.flows.local_server import stop

    console.print("stopped" if stop() else "no curate Prefect server was running")


cache_app = typer.Typer(help="the response cache ($CURATE_CACHE_DIR, default ~/.cache/curate): every model's answers")
CacheDir = Annotated[Optional[Path], typer.Option("--dir", help="the cache folder (default: $CURATE_CACHE_DIR or "
                                                  "~/.cache/curate)")]


def _cache(directory: Path | None):
    from curate.engines.cache import ResponseCache

    cache = ResponseCache(directory)
    for note in cache.notes:  # opening it found it damaged: it was moved aside
        err_console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    return cache


@cache_app.command("check")
def cache_check(directory: CacheDir = None) -> None:
    """Check the whole cache file (SQLite's integrity check); exit 1 when it is damaged."""
    import sqlite3

    from curate.engines.cache import ResponseCache, default_cache_dir

    try:
        cache = ResponseCache(directory, repair=False)
        problems = cache.check()
    except sqlite3.DatabaseError as exc:
        cache, problems = None, [f"{type(exc).__name__}: {exc}"]
    path = cache.path if cache else Path(directory or default_cache_dir()) / "responses.sqlite"
    if problems:
        err_console.print(f"[bold red]damaged:[/] {path}: {escape('; '.join(problems[:5]))} (the next run moves it "
                          "aside and starts a fresh one)", soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"[green]ok[/] {cache.path}: {len(cache):,} entries, {cache.path.stat().st_size / 1e6:.1f} MB")


@cache_app.command("vacuum")
def cache_vacuum(directory: CacheDir = None) -> None:
    """Give the space of deleted entries back to the disk."""
    cache = _cache(directory)
    before = cache.path.stat().st_size
    cache.vacuum()
    console.print(f"{cache.path}: {before / 1e6:.1f} MB -> {cache.path.stat().st_size / 1e6:.1f} MB")


@cache_app.command("clear")
def cache_clear(
    directory: CacheDir = None,
    older_than: Annotated[Optional[float], typer.Option(help="only entries older than this many days (and undated "
                                                         "ones, from before entries were dated)")] = None,
) -> None:
    """Delete cached answers (all, or the old ones): the calls they answered are made again when asked."""
    cache = _cache(directory)
    n = cache.clear(None if older_than is None else older_than * 86400)
    console.print(f"{cache.path}: {n:,} entries deleted, {len(cache):,} left")


review_app = typer.Typer(help="human review round-trip: Label Studio tasks out, annotations back in")


@review_app.command("export")
def review_export(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    sample: Annotated[int, typer.Option(help="pairs to sample (stratified by source and margin)")] = 50,
    out: Annotated[Optional[Path], typer.Option(help="tasks file (default RUN_DIR/review/tasks.json)")] = None,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    disputed: Annotated[bool, typer.Option("--disputed", help="only pairs the judges behind them split on "
                                           "(agreement < 1: e.g. a source's label against a new jury)")] = False,
) -> None:
    """Write a stratified sample of a run's pairs as Label Studio tasks (and the labeling config)."""
    from curate.pipelines.review import export_tasks

    try:
        res = export_tasks(run_dir, sample, out or run_dir / "review" / "tasks.json", seed, disputed)
    except (ValueError, FileNotFoundError) as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(f"{res['tasks']} of {res['pairs']} pairs -> {res['file']} (strata: {res['strata']})")
    console.print(f"Label Studio labeling config: {res['label_config']}")


@review_app.command("import")
def review_import(
    file: Annotated[Path, typer.Argument(help="Label Studio JSON export of the annotated tasks")],
    run: Annotated[Path, typer.Option(help="the run directory the tasks came from")],
) -> None:
    """Read annotations back: human-judge agreement into the manifest, human labels over the judges'."""
    from curate.pipelines.review import import_annotations

    try:
        res = import_annotations(file, run)
    except (ValueError, FileNotFoundError) as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(f"{res['reviewed']} reviewed pairs: humans {res['human']}; agreement with the judges' choice "
                  f"(without human ties): {fmt(res['agreement_without_ties'])} on {res['decided']}")
    for judge, m in res["per_judge"].items():
        console.print(f"  {judge}: agreement {fmt(m['agreement'])}, kappa {fmt(m['cohen_kappa'])} (n={m['n']})")
    console.print(f"{res['flipped']} pairs flipped, {res['ties_dropped']} dropped as human ties -> "
                  f"{res['reviewed_export']}")




batches_app = typer.Typer(help="a run's provider batches (openai_batch, anthropic_batch engines): what was sent, "
                          "what is still running at the provider")
RunDir = Annotated[Path, typer.Argument(help="the run directory")]


@batches_app.command("list")
def batches_list(run_dir: RunDir) -> None:
    """Every provider batch the run sent: its id, requests, status at the last poll, when it ended and why any
    went again."""
    import json

    from rich.table import Table

    from curate.engines.batch_api import Journal, journal_path

    path = journal_path(run_dir)
    if not path.exists():
        console.print(f"{run_dir} sent no provider batches")
        return
    table = Table("batch", "engine", "requests", "status", "ended", "note")
    for b in Journal(path).batches():
        engine = json.loads(b["engine"]).get("model", "")
        table.add_row(b["batch_id"] or "(not created)", escape(engine), str(b["requests"]), escape(b["status"]),
                      "yes" if b["ended"] else "no", escape(b["note"] or ""))
    console.print(table)


@batches_app.command("cancel")
def batches_cancel(run_dir: RunDir) -> None:
    """Cancel the run's batches still running at the provider (what they answered so far is still billed; a
    resume sends the rest again)."""
    from curate.engines.config import build_engine
    from curate.pipelines.config import load_pipeline

    pipeline = load_pipeline(Path(run_dir) / "config.yaml")
    cancelled = 0
    for name, cfg in pipeline.engines.items():
        if "batch" not in cfg.capabilities():
            continue
        engine = build_engine(cfg, None)
        engine.run_dir = run_dir
        for batch_id in engine.engine.cancel_unended():
            console.print(f"cancelled {batch_id} ({name})", highlight=False)
            cancelled += 1
    if not cancelled:
        console.print("no batch of this run is running at the provider")
