"""`curate` command line. Heavy imports (pyarrow, ray, llama.cpp) happen inside commands so `--help` is instant."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    help="curate: prompts -> candidates -> judgments -> preference pairs -> TRL datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns; give the accounting table room.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class _libraries_log_to:
    """Send what the libraries print (Prefect's flow and task logs, its temporary server, Ray's C++ warnings, Ray
    and Prefect subprocesses) to the run's log file instead of the console, at the file-descriptor level so that
    child processes follow. curate's own messages keep the real stderr (`err_console` is pointed at it)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def __enter__(self):
        global err_console
        if not self.enabled:
            return self
        sys.stderr.flush()
        real = os.fdopen(os.dup(2), "w", buffering=1)
        self._log = open(self.path, "a", buffering=1)
        os.dup2(self._log.fileno(), 2)
        err_console = Console(file=real, width=None if real.isatty() else 160)
        return self

    def __exit__(self, *exc):
        # fd 2 stays on the log file until the process ends: Prefect stops its temporary server (and logs that)
        # at exit, and Ray's processes may still write as they go; curate's own messages use `err_console`
        sys.stderr.flush()


class _services:
    """Start what a run needs, overlapping what waits: the Prefect server (when no PREFECT_API_URL is configured)
    is found or started in a thread, which also imports Prefect (~2 s of CPU here). With `--address` /
    RAY_ADDRESS that thread starts at once, while this one connects to the cluster; a local run starts it with
    `start_prefect` once its first stage (CPU-bound Python, which the import would only slow down) is done, so that
    the import overlaps the stages that wait on a model. With nothing configured the run reuses this machine's
    curate Prefect server, started by the first run and stopped when idle (flows/local_server.py);
    `CURATE_PREFECT_SERVER=temporary` asks for Prefect's own temporary server instead (started for this run,
    stopped at exit). A local run starts no Ray here: the runner starts it for the first stage that needs more
    than one worker (pipelines.executors.local_run). A configured Prefect server or Ray cluster is used as it is."""

    def __init__(self, address: str | None):
        self.address = address
        self._settings = None
        self._thread = None
        self._server: dict = {}

    def __enter__(self):
        from curate.pipelines.executors import init_ray, local_run

        if not local_run(self.address):
            self.start_prefect()
            try:
                init_ray(self.address)
            except BaseException:
                self._thread.join()
                raise
        return self

    def start_prefect(self) -> None:
        import threading

        if self._thread is not None:
            return
        server = self._server

        def find_server() -> None:
            try:
                if os.environ.get("PREFECT_API_URL"):
                    return
                from prefect.settings import PREFECT_API_URL

                if PREFECT_API_URL.value():
                    return
                if os.environ.get("CURATE_PREFECT_SERVER") == "temporary":
                    from prefect.server.api.server import SubprocessASGIServer

                    srv = SubprocessASGIServer()
                    srv.start()
                    server["url"] = srv.api_url
                else:
                    from curate.flows.local_server import connect

                    server["url"], started = connect()
                    print(f"curate: Prefect server {server['url']} (curate's local server, "
                          f"{'started for this run' if started else 'already running'}; `curate server stop` stops "
                          "it)", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 - then Prefect starts its temporary server in the flow
                server["error"] = exc

        self._thread = threading.Thread(target=find_server, name="prefect-server", daemon=True)
        self._thread.start()

    def prefect(self) -> None:
        """Wait for the Prefect server (starting the search now if `start_prefect` was not called) and point this
        process's Prefect settings at it."""
        self.start_prefect()
        self._thread.join()
        server = self._server
        if server.get("error") is not None:
            print(f"curate: no local Prefect server ({server['error']}); Prefect starts a temporary one",
                  file=sys.stderr)
        if server.get("url") and self._settings is None:
            from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

            updates: dict = {PREFECT_API_URL: server["url"]}
            if not any(os.environ.get(f"PREFECT_{k}_HEARTBEAT_FREQUENCY") for k in ("FLOWS", "RUNNER")):
                # flow-run heartbeats feed a team's zombie-run automations; curate's own server (no UI, no
                # automations) has no one to read them, and ending the flow joins their thread, which sleeps in
                # whole seconds: 0-1 s at the end of every run. A configured server keeps Prefect's default.
                updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
            self._settings = temporary_settings(updates=updates)
            self._settings.__enter__()

    def __exit__(self, *exc):
        if self._thread is not None:
            self._thread.join()
        if self._settings is not None:
            self._settings.__exit__(*exc)


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
    tell("stages", {st.id: [_engine_label(n, p.engines[n]) for n in st.spec.engines(st.config)] for st in p.stages})
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


def _engine_label(name: str, cfg) -> str:
    """`default (llama_cpp: SmolLM2-135M-Instruct.Q4_1.gguf)`: what a crash report names."""
    model = getattr(cfg, "model", None) or getattr(cfg, "model_path", None)
    model = Path(model).name if cfg.kind == "llama_cpp" and model else model
    if cfg.kind == "llama_cpp" and not model:
        model = "embedded SmolLM2-135M-Instruct"
    return f"{name} ({cfg.kind}: {model})" if model else f"{name} ({cfg.kind})"


def _run_in(p, pipeline: Path, run_dir: Path, limit: int | None, address: str | None, verbose: bool) -> None:
    import faulthandler

    log_path = run_dir / "curate.log"
    console.print(f"[bold]{p.name}[/] -> {run_dir}")
    with _libraries_log_to(log_path, enabled=not verbose), _bars() as bars:
        faulthandler.enable(all_threads=True)  # a native crash leaves the Python stack in the log (fd 2 is the log)
        try:
            with _services(address) as services:
                manifest = _flow_run(p, pipeline, run_dir, limit, address, bars, services)
        except Exception as exc:
            bars.stop()
            err_console.print(f"[bold red]run failed:[/] {type(exc).__name__}: {escape(str(exc))}", soft_wrap=True)
            err_console.print(f"partial results and manifest: {run_dir}; log: {log_path}")
            raise typer.Exit(1) from None
    print_accounting(manifest)
    print_sources(manifest)
    print_judges(manifest.get("judges") or {})
    console.print(f"dataset: [bold]{manifest['output']}[/]")
    if manifest.get("published"):
        pub = manifest["published"]
        console.print(f"published {pub['rows']} rows to {pub['repo']} commit {pub['commit']}")


def _flow_run(p, pipeline: Path, run_dir: Path, limit: int | None, address: str | None, bars, services) -> dict:
    """The run, as a Prefect flow run whose stages started before Prefect was up: the run starts its stages at
    once (`Run.run_ahead`); once the first is done this thread looks for the Prefect server, imports the flow
    (Prefect's import alone is ~2 s of CPU here) and opens the flow run, whose stage tasks take over the stages'
    results, while the later stages run."""
    from curate.pipelines.runner import Run

    run = Run(p, run_dir, address=address, progress=bars)
    run.start()
    try:
        run.run_ahead()
        run.wait_ahead(p.stages[0])  # see _services: Prefect's import would slow the first stage down
        services.prefect()  # starts looking for the server (unless --address did already), then waits
        from curate.flows.pipeline_flow import Started, pipeline_flow

        return pipeline_flow(str(pipeline), run_dir=str(run_dir), limit=limit, address=address, progress=bars,
                             started=Started.of(run))
    except BaseException as exc:
        if not run.finished:  # it failed before the flow run took the run over (no server, no flow run)
            run.finish(exc)
        raise


@app.command()
def deploy(
    pipeline: Annotated[Path, typer.Argument(help="pipeline YAML")],
    cron: Annotated[Optional[str], typer.Option(help='cron schedule, e.g. "0 3 * * *"')] = None,
    interval: Annotated[Optional[float], typer.Option(help="or: run every N seconds")] = None,
    name: Annotated[Optional[str], typer.Option(help="deployment name (default: the pipeline's name)")] = None,
    run_root: Annotated[Path, typer.Option(help="scheduled runs write runs under RUN_ROOT/<name>/<time>")] = Path("runs"),
    limit: Annotated[Optional[int], typer.Option(min=0, help="load at most N prompts per run")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address for the scheduled runs")] = None,
) -> None:
    """Create a scheduled Prefect deployment of a pipeline and serve it (this process runs the scheduled runs).

    Point PREFECT_API_URL at your Prefect server first. To run on a work pool instead of this process, use
    `prefect deploy` with the entrypoint `flows/pipeline_flow.py:pipeline_flow` and the same parameters.
    """
    p = _load(pipeline)
    if (cron is None) == (interval is None):
        err_console.print("[bold red]error:[/] give exactly one of --cron or --interval")
        raise typer.Exit(2)
    from curate.flows.pipeline_flow import serve

    serve(pipeline.resolve(), name or p.name, cron=cron, interval=interval, run_root=run_root.resolve(), limit=limit,
          address=address)


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
    from curate.pipelines.publish import PublishError, publish as push

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
        table.add_row(name, f"{m['agreement']:.3f}", no_ties, f"{m['cohen_kappa']:.3f}", _f(m["position_consistency"]),
                      _f(m["longer_wins"]), str(m["unparsed"]))
    console.print(table)
    console.print(f"the longer response wins {_f(report['human_longer_wins'])} of the pairs humans decided "
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


server_app = typer.Typer(help="the local Prefect server that runs share when no PREFECT_API_URL is set")
app.add_typer(server_app, name="server")


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


review_app = typer.Typer(help="human review round-trip: Label Studio tasks out, annotations back in")
app.add_typer(review_app, name="review")


@review_app.command("export")
def review_export(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    sample: Annotated[int, typer.Option(help="pairs to sample (stratified by source and margin)")] = 50,
    out: Annotated[Optional[Path], typer.Option(help="tasks file (default RUN_DIR/review/tasks.json)")] = None,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
) -> None:
    """Write a stratified sample of a run's pairs as Label Studio tasks (and the labeling config)."""
    from curate.pipelines.review import export_tasks

    try:
        res = export_tasks(run_dir, sample, out or run_dir / "review" / "tasks.json", seed)
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
                  f"(without human ties): {_f(res['agreement_without_ties'])} on {res['decided']}")
    for judge, m in res["per_judge"].items():
        console.print(f"  {judge}: agreement {_f(m['agreement'])}, kappa {_f(m['cohen_kappa'])} (n={m['n']})")
    console.print(f"{res['flipped']} pairs flipped, {res['ties_dropped']} dropped as human ties -> "
                  f"{res['reviewed_export']}")


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
) -> None:
    """Print a run's accounting and a few rows of its output."""
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.exists():
        err_console.print(f"[bold red]error:[/] {run_dir} is not a run directory (no manifest.json)")
        raise typer.Exit(2)
    manifest = json.loads(manifest_path.read_text())
    console.print(f"[bold]{manifest['name']}[/] status={manifest['status']} started={manifest.get('started')}")
    print_accounting(manifest)
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
            figures = ", ".join(f"{k} {_f(v) if isinstance(v, float) else v}" for k, v in s["summary"].items())
            console.print(f"{s['id']}: {figures}")


def _f(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_judges(judges: dict) -> None:
    """Per judge: what it scored, what did not parse, and its bias probes; then inter-judge agreement."""
    per = judges.get("per_judge") or {}
    if not per:
        return
    table = Table(title="judges (bias probes: position consistency, longer response wins, self-preference gap)")
    for col in ("judge", "kind", "scored", "unparsed", "position consistency", "longer wins", "self-pref gap"):
        table.add_column(col, justify="left" if col in ("judge", "kind") else "right")
    for name, v in per.items():
        table.add_row(name, v["kind"], str(v["scored"]), str(v["unparsed"]), _f(v.get("position_consistency")),
                      _f(v.get("longer_wins")), _f((v.get("self_preference") or {}).get("gap")))
    console.print(table)
    kappas = sorted(k["kappa"] for k in judges.get("cohen_kappa", []) if k["kappa"] == k["kappa"])  # not nan
    if kappas:
        console.print(f"Cohen's kappa over {len(kappas)} pairs of judges: median {_f(kappas[len(kappas) // 2])}, "
                      f"range {_f(kappas[0])} to {_f(kappas[-1])} (each pair in manifest.json)")
    if judges.get("krippendorff_alpha") is not None:
        console.print(f"Krippendorff's alpha: {_f(judges['krippendorff_alpha'])} "
                      f"(on {judges['alpha_units']} candidates)")
    if judges.get("source_agreement"):
        table = Table(title="sources' labels vs the other judges (same side preferred, on the pairs both decided)")
        for col in ("source", "label", "judge", "pairs", "agreement", "kappa"):
            table.add_column(col, justify="left" if col in ("source", "label", "judge") else "right")
        for r in judges["source_agreement"]:
            table.add_row(r["source"], r["label"], r["judge"], str(r["pairs"]), _f(r["agreement"]), _f(r["kappa"]))
        console.print(table)


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


def _rate(rows_per_s: float) -> str:
    """Rows/s a person can read at any speed: 1,234 rows/s, 2.5 rows/s, 1.8 rows/min."""
    if rows_per_s >= 100:
        return f"{rows_per_s:,.0f} rows/s"
    if rows_per_s >= 1:
        return f"{rows_per_s:.1f} rows/s"
    return f"{rows_per_s * 60:.1f} rows/min"


def _bars():
    """One line per stage: a bar over its input rows, rows/s and the time left (rich); off a terminal, one line
    per stage when it ends. (A `pipelines.runner.Progress`, made here so that `--help` imports no pydantic.)"""
    import time

    from pydantic import PrivateAttr
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from curate.pipelines.runner import Progress as RunProgress
    from curate.pipelines.supervise import tell

    class Bars(RunProgress):
        _bar: Progress = PrivateAttr()
        _tasks: dict = PrivateAttr(default_factory=dict)
        _started: dict = PrivateAttr(default_factory=dict)
        _finished: dict = PrivateAttr(default_factory=dict)  # input rows of a stage's finished shards

        def model_post_init(self, context) -> None:
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
            rate = done / max(time.perf_counter() - self._started[stage_id], 1e-9)
            self._bar.update(self._tasks[stage_id], completed=done, rate=_rate(rate))

        def stage_end(self, stage_id):
            task = self._tasks[stage_id]
            t = self._bar.tasks[task]
            if t.total is None or t.total != t.completed:
                self._bar.update(task, total=t.completed)
            if self._bar.disable:
                secs = time.perf_counter() - self._started[stage_id]
                console.print(f"{stage_id}: {int(t.completed):,} rows in {secs:.1f} s "
                              f"({_rate(t.completed / max(secs, 1e-9))})")

    return Bars()


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
