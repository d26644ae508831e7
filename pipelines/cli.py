"""`curate` command line: the commands, each parsing its options and calling the module that does the work
(printing through pipelines/console.py). Heavy imports (pyarrow, ray, llama.cpp) happen inside commands so
`--help` is instant."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.pipelines.console import (
    bars,
    console,
    engine_label,
    err_console,
    fmt,
    print_accounting,
    print_cost,
    print_damaged,
    print_judges,
    print_sources,
)
from curate.pipelines.cli_groups import batches_app, cache_app, review_app, server_app
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    help="curate: prompts -> candidates -> judgments -> preference pairs -> TRL datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(server_app, name="server")
app.add_typer(cache_app, name="cache")
app.add_typer(review_app, name="review")
app.add_typer(batches_app, name="batches")


def _load(path: Path):
    from curate.pipelines.config import ConfigError, load_pipeline

    try:
        return load_pipeline(path)
    except ConfigError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def validate(
    pipeline: Annotated[Path, typer.Argument(help="pipeline YAML")],
    engines: Annotated[bool, typer.Option("--engines", help="also load each engine the stages use and answer one "
                                          "real prompt of ~300 tokens (each in its own process)")] = False,
) -> None:
    """Check a pipeline (schema, files, engines, column flow) without running anything."""
    p = _load(pipeline)
    console.print(f"[green]ok[/] {p.name}: {len(p.stages)} stages: " + " -> ".join(s.name for s in p.stages))
    if engines:
        from curate.pipelines.doctor import check

        used = sorted({n for st in p.stages for n in st.spec.engines(st.config)})
        failed = 0
        for name, ok, line in check(pipeline, used):
            failed += not ok
            (console if ok else err_console).print(f"{'[green]ok[/]' if ok else '[bold red]failed:[/]'} engines.{name}: "
                                                   f"{escape(line)}", soft_wrap=True)
        if failed:
            raise typer.Exit(1)


@app.command()
def run(
    pipeline: Annotated[Optional[Path], typer.Argument(help="pipeline YAML (omit with --resume)")] = None,
    limit: Annotated[Optional[int], typer.Option(min=0, help="load at most N prompts")] = None,
    run_dir: Annotated[
        Optional[Path], typer.Option(help="run directory; an existing one is resumed (done shards are skipped)")
    ] = None,
    resume: Annotated[
        Optional[Path], typer.Option(help="resume a run directory with the config stored in it")
    ] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: local Ray, or RAY_ADDRESS)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's and Ray's own logs here too "
                                          "(by default they go to RUN_DIR/curate.log)")] = False,
    budget_usd: Annotated[Optional[float], typer.Option(min=0, help="the most the run's model calls may cost, USD "
                                                        "(over the YAML's budget_usd; with --resume: a larger "
                                                        "budget goes on after a stop)")] = None,
) -> None:
    """Run a pipeline into a run directory and print the row accounting."""
    if resume is not None:
        if pipeline is not None or run_dir is not None:
            err_console.print("[bold red]error:[/] --resume RUN_DIR takes neither a pipeline nor --run-dir")
            raise typer.Exit(2)
        pipeline, run_dir = resume / "config.yaml", resume
        if not pipeline.exists():
            err_console.print(f"[bold red]error:[/] {resume} is not a run directory (no config.yaml)")
            raise typer.Exit(2)
    elif pipeline is None:
        err_console.print("[bold red]error:[/] give a pipeline YAML, or --resume RUN_DIR")
        raise typer.Exit(2)
    p = _load(pipeline).with_limit(limit)  # fail fast, before Prefect or Ray start
    if budget_usd is not None:
        p = _with_budget(p, budget_usd)
    # Prefect's telemetry heartbeat fails noisily against its temporary SQLite server; off unless the user turns it on
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from curate.pipelines.rundir import default_run_dir

    run_dir = run_dir or default_run_dir(p.name)
    if run_dir.exists() and not run_dir.is_dir():
        err_console.print(f"[bold red]error:[/] --run-dir {run_dir} is a file, not a directory")
        raise typer.Exit(2)
    from curate.pipelines.supervise import tell

    tell("run_dir", str(run_dir.resolve()))
    tell("stages", {st.id: [engine_label(n, p.engines[n]) for n in st.spec.engines(st.config)] for st in p.stages})
    from curate.pipelines.rundir import RunDirBusy, run_dir_lock

    try:  # one writer per run directory, taken before Prefect or Ray start
        with run_dir_lock(run_dir):
            _run_in(p, pipeline, run_dir, limit, address, verbose)
    except RunDirBusy as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # a read-only or full file system, before the run could start
        err_console.print(f"[bold red]error:[/] cannot write the run directory: {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None


def _with_budget(p, usd: float):
    """The pipeline with the run's budget set from the command line, checked like one in the YAML."""
    from curate.pipelines.config import unpriced_under_budget

    p = p.model_copy(update={"budget_usd": usd})
    problems = unpriced_under_budget(p)
    if problems:
        err_console.print("[bold red]error:[/] " + escape("\n".join(problems)), soft_wrap=True)
        raise typer.Exit(2)
    return p


def _run_in(p, pipeline: Path, run_dir: Path, limit: int | None, address: str | None, verbose: bool) -> None:
    import faulthandler

    log_path = run_dir / "curate.log"
    console.print(f"[bold]{p.name}[/] -> {run_dir}")
    from curate.flows.services import Services, flow_run, libraries_log_to

    with libraries_log_to(log_path, enabled=not verbose), bars() as progress:
        faulthandler.enable(all_threads=True)  # a native crash leaves the Python stack in the log (fd 2 is the log)
        try:
            with Services(address) as services:
                manifest = flow_run(p, pipeline, run_dir, limit, address, progress, services)
        except BaseException as exc:  # a library's panic (polars' PanicException) is no Exception, but a failure
            if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
            progress.stop()
            from curate.pipelines.runner import stopped_by_budget

            if stopped_by_budget(exc):
                err_console.print(f"[bold yellow]stopped: budget[/] {escape(str(exc))}", soft_wrap=True)
                err_console.print(f"every finished shard and answer is kept: `curate run --resume {run_dir} "
                                  "--budget-usd MORE` goes on from here", soft_wrap=True)
                raise typer.Exit(3) from None
            err_console.print(f"[bold red]run failed:[/] {type(exc).__name__}: {escape(str(exc))}", soft_wrap=True)
            err_console.print(f"partial results and manifest: {run_dir}; log: {log_path}")
            raise typer.Exit(1) from None
    print_accounting(manifest)
    print_cost(manifest)
    print_damaged(manifest)
    print_sources(manifest)
    print_judges(manifest.get("judges") or {})
    console.print(f"dataset: [bold]{manifest['output']}[/]")
    if manifest.get("published"):
        pub = manifest["published"]
        console.print(f"published {pub['rows']} rows to {pub['repo']} commit {pub['commit']}")


@app.command()
def estimate(
    pipeline: Annotated[Path, typer.Argument(help="pipeline YAML")],
    limit: Annotated[Optional[int], typer.Option(min=0, help="load at most N prompts")] = None,
) -> None:
    """Predict a run's model calls, tokens and cost before running it (no model is called; nothing is written)."""
    from curate.pipelines.costs import money
    from curate.pipelines.estimate import estimate as predict

    p = _load(pipeline).with_limit(limit)
    est = predict(p)
    table = Table(title=f"{p.name}: what a run would ask (completion tokens and cost: at most, every answer "
                        "max_tokens long)")
    cols = ("stage", "engine", "model", "rows in", "requests", "cached", "prompt tokens", "completion tokens ≤",
            "cost ≤", "list, no cache", "batch, no cache", "cache saves", "prompt tokens by")
    for col in cols:
        table.add_column(col, justify="left" if col in ("stage", "engine", "model", cols[-1]) else "right")
    for s in est["stages"]:
        for name, e in s["engines"].items():
            table.add_row(s["id"], name, str(e["model"]), str(s["rows"]), str(e["requests"]), str(e["cached"]),
                          str(e["prompt_tokens"]), str(e["completion_tokens_at_most"]), money(e["usd_at_most"]),
                          money(e["list_usd"]), money(e["batch_usd"]), money(e["cache_saves_usd"]),
                          "tokenizer" if e["counted_with"].startswith("the model") else e["counted_with"])
    console.print(table)
    console.print(f"total: {est['requests']} requests ({est['cached']} answered from the cache), "
                  f"{est['prompt_tokens']} prompt tokens, at most {est['completion_tokens_at_most']} completion "
                  f"tokens, at most {money(est['usd_at_most'])} (list price with no cache {money(est['list_usd'])}, "
                  f"through a batch API {money(est['batch_usd'])})", highlight=False)
    for s in est["stages"]:
        if s.get("reasks_per_request_at_most") and s["engines"]:
            console.print(f"{s['id']}: an output that does not parse is asked again, up to "
                          f"{s['reasks_per_request_at_most']} time(s) a request: not counted above", highlight=False)


@app.command()
def deploy(
    pipeline: Annotated[Path, typer.Argument(help="pipeline YAML")],
    cron: Annotated[Optional[str], typer.Option(help='cron schedule, e.g. "0 3 * * *"')] = None,
    interval: Annotated[Optional[float], typer.Option(help="or: run every N seconds")] = None,
    name: Annotated[Optional[str], typer.Option(help="deployment name (default: the pipeline's name)")] = None,
    run_root: Annotated[Path, typer.Option(help="scheduled runs write runs under RUN_ROOT/<name>/<time>")] = Path("runs"),
    limit: Annotated[Optional[int], typer.Option(min=0, help="load at most N prompts per run")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address for the scheduled runs")] = None,
    status: Annotated[bool, typer.Option("--status", help="show the deployment's next and last runs instead")] = False,
) -> None:
    """Create a scheduled Prefect deployment of a pipeline and serve it (this process runs the scheduled runs).

    With nothing configured it uses curate's local scheduler server (started here, up while this process serves);
    with PREFECT_API_URL set, that server, whose scheduler must run (`prefect server start` runs it). To run on a
    work pool instead of this process, use `prefect deploy` with the entrypoint
    `curate/flows/pipeline_flow.py:pipeline_flow` and the same parameters. `--status` shows a deployment's next
    and last runs.
    """
    from curate.flows.schedule import deploy_status, scheduler_url, watch_schedule

    if status:
        p = _load(pipeline)
        return deploy_status(name or p.name, p.name, run_root)
    p = _load(pipeline)
    if (cron is None) == (interval is None):
        err_console.print("[bold red]error:[/] give exactly one of --cron or --interval")
        raise typer.Exit(2)
    url = scheduler_url(start=True)
    from curate.flows.pipeline_flow import serve

    err_console.print(f"curate: serving {name or p.name} ({f'cron {cron}' if cron else f'every {interval:g} s'}) on "
                      f"{url}; runs go to {run_root.resolve()}; keep this process running (`curate deploy "
                      f"{pipeline} --status` shows the next runs)", soft_wrap=True, highlight=False)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    watch_schedule(name or p.name, url, float(interval or 60))
    with temporary_settings(updates={PREFECT_API_URL: url}):  # Prefect read its settings at import
        serve(pipeline.resolve(), name or p.name, cron=cron, interval=interval, run_root=run_root.resolve(),
              limit=limit, address=address)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    out: Annotated[Optional[Path], typer.Option(help="HTML file to write (default: RUN_DIR/report.html)")] = None,
) -> None:
    """Write a self-contained HTML report of a run: accounting, judges, agreement, lengths, sample pairs."""
    if not (run_dir / "manifest.json").exists():
        err_console.print(f"[bold red]error:[/] {run_dir} is not a run directory (no manifest.json)")
        raise typer.Exit(2)
    from curate.pipelines.report import write_report

    console.print(f"report: {write_report(run_dir, out)}")


@app.command()
def publish(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    repo: Annotated[str, typer.Option(help="the dataset repo on the Hub, ORG/NAME")],
    private: Annotated[bool, typer.Option(help="create the repo private")] = False,
    revision: Annotated[Optional[str], typer.Option(help="push to this branch (created if missing)")] = None,
    config_name: Annotated[Optional[str], typer.Option(help="config name (a run with one export)")] = None,
    license: Annotated[str, typer.Option(help="license in the card's metadata")] = "other",
) -> None:
    """Push a run's exports to the Hugging Face Hub with a dataset card (token: HF_TOKEN or `hf auth login`)."""
    if not (run_dir / "manifest.json").exists():
        err_console.print(f"[bold red]error:[/] {run_dir} is not a run directory (no manifest.json)")
        raise typer.Exit(2)
    from curate.pipelines.publish import PublishError
    from curate.pipelines.publish import publish as push

    try:
        result = push(run_dir, repo, private=private, revision=revision, config_name=config_name, license=license)
    except PublishError as exc:
        err_console.print(f"[bold red]publish failed:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"published {result['rows']} rows to {result['repo']} "
                  f"(configs: {', '.join(result['configs'])}) commit {result['commit']}")


@app.command("judge-eval")
def judge_eval(
    data: Annotated[Path, typer.Option(help="human-labeled pairs (PandaLM JSON, or JSONL with output_1/output_2/label)")],
    judge: Annotated[Path, typer.Option(help="judge config YAML: engines and a list of judges (several: a jury)")],
    limit: Annotated[Optional[int], typer.Option(help="evaluate the first N pairs")] = None,
    out: Annotated[Optional[Path], typer.Option(help="also write the results as JSON")] = None,
) -> None:
    """Measure judges (and their jury) against human labels, next to always-longer and random baselines."""
    from curate.pipelines.config import ConfigError
    from curate.pipelines.judge_eval import LABELS, dumps, evaluate

    if not data.exists():
        err_console.print(f"[bold red]error:[/] data file not found: {data}")
        raise typer.Exit(2)
    try:
        report = evaluate(data, judge, limit)
    except ConfigError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    table = Table(title=f"judges vs human labels: {report['pairs']} pairs of {data.name} "
                        f"(human: {report['human_labels']})")
    for col in ("judge", "agreement", "agreement w/o ties (n)", "Cohen's kappa", "position consistency",
                "longer wins", "unparsed"):
        table.add_column(col, justify="left" if col == "judge" else "right")
    for name, m in report["results"].items():
        no_ties = "-" if m["agreement_without_ties"] is None else f"{m['agreement_without_ties']:.3f} ({m['decided']})"
        table.add_row(name, f"{m['agreement']:.3f}", no_ties, f"{m['cohen_kappa']:.3f}", fmt(m["position_consistency"]),
                      fmt(m["longer_wins"]), str(m["unparsed"]))
    console.print(table)
    console.print(f"the longer response wins {fmt(report['human_longer_wins'])} of the pairs humans decided "
                  "(a judge far above that rewards length)")
    from rich.columns import Columns

    matrices = []
    for name, m in report["results"].items():
        cm = Table(title=f"{name}\n(rows human, columns judge)")
        cm.add_column("human")
        for v in LABELS + ["unparsed"]:
            cm.add_column(v, justify="right")
        for h in LABELS:
            cm.add_row(h, *(str(m["confusion"][h][v]) for v in LABELS + ["unparsed"]))
        matrices.append(cm)
    console.print(Columns(matrices))
    console.print(f"model calls: {report['model_calls']}, cache hits: {report['cache_hits']}")
    if out:
        out.write_text(dumps(report))


@app.command()
def stages() -> None:
    """List the stages with the columns they read and add (with their default config) and their config fields."""
    from curate.stages import registry

    table = Table(show_lines=True)
    for col in ("stage", "reads", "adds (a pair stage: instead of its input's)", "config"):
        table.add_column(col, overflow="fold")
    for name, spec in registry().items():
        try:
            cfg = spec.config.model_construct()
            reads = sorted(spec.reads(cfg))
            writes = [c + (f" (when {spec.derived_from[c]} is there)" if c in spec.derived_from else "")
                      for c in sorted(spec.writes(cfg))]
        except Exception:
            reads, writes = ["(depends on config)"], ["(depends on config)"]
        fields = []
        for fname, f in spec.config.model_fields.items():
            default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
            fields.append(f"{fname} = {default}")
        table.add_row(f"[bold]{name}[/]\n{spec.doc}", "\n".join(reads), "\n".join(writes), "\n".join(fields))
    console.print(table)


@app.command()
def show(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    rows: Annotated[int, typer.Option(help="sample rows to print")] = 3,
    verify: Annotated[bool, typer.Option("--verify", help="check every file the manifest lists against its "
                                         "recorded sha256 (nothing runs); exit 1 when one is missing or damaged")] = False,
) -> None:
    """Print a run's accounting and a few rows of its output."""
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.exists():
        err_console.print(f"[bold red]error:[/] {run_dir} is not a run directory (no manifest.json)")
        raise typer.Exit(2)
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as exc:
        err_console.print(f"[bold red]error:[/] {manifest_path} is damaged (not JSON: {exc}); `curate run --resume "
                          f"{run_dir}` rebuilds it from the shard markers", soft_wrap=True)
        raise typer.Exit(1) from None
    if verify:
        from curate.pipelines.rundir import verify as verify_run

        problems = verify_run(run_dir, manifest)
        for line in problems:
            err_console.print(f"[bold red]damaged:[/] {escape(line)}", soft_wrap=True, highlight=False)
        files = sum(len(s.get("shard_sha256") or {}) for s in manifest["stages"])
        if problems:
            err_console.print(f"{len(problems)} of {files} files do not match the manifest: `curate run --resume "
                              f"{run_dir}` redoes them", soft_wrap=True)
            raise typer.Exit(1)
        console.print(f"[green]ok[/] {files} files match the manifest's sha256")
        return
    console.print(f"[bold]{manifest['name']}[/] status={manifest['status']} started={manifest.get('started')}")
    print_accounting(manifest)
    print_cost(manifest)
    print_damaged(manifest)
    print_sources(manifest)
    if manifest.get("error"):
        console.print(f"[red]error:[/] {manifest['error']}")
    last = manifest["stages"][-1]["id"] if manifest["stages"] else None
    if last:
        import pyarrow.dataset as pads

        ds = pads.dataset(run_dir / last, format="parquet")
        sample = ds.head(rows).to_pylist()
        for i, row in enumerate(sample):
            console.rule(f"{last} row {i}")
            for k, v in row.items():
                text = v if isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False)
                console.print(f"[bold]{k}[/]: {text[:400]}{'…' if len(text) > 400 else ''}", highlight=False)


def main() -> None:
    """The `curate` command. Once the command has returned and every exit handler has run (Ray's shutdown,
    Prefect's log and event flushes, a temporary server's stop), the process ends at once instead of tearing
    down its interpreter: freeing the modules of Prefect, Ray and pyarrow one by one took ~0.75 s of every
    command here and changes nothing on disk (files are closed, and stdout/stderr flushed, before)."""
    import atexit

    code: list[int] = [0]

    def end_now() -> None:  # registered before any command registers its own, so it runs after all of them
        if "logging" in sys.modules:  # its own exit handler was registered earlier (at import), so runs later
            sys.modules["logging"].shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code[0])

    atexit.register(end_now)
    try:
        app()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code[0] = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code[0] = 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code[0] = 1
    # returning, the interpreter joins the non-daemon threads, then runs the exit handlers, `end_now` last


if __name__ == "__main__":
    main()
