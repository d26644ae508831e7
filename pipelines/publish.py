"""Publish a run's exports to the Hugging Face Hub with a dataset card.

One config per export stage (named by format: preference, reward, kto, ranked), its Parquet shards under
`data/<config>/`, and a README.md card: YAML metadata (license, task categories, size, configs) and what a
user of the dataset needs to trust it: prompt sources, models and sampling, judges and templates, inter-judge
agreement and position consistency, what was filtered and why with counts, the accounting table, and how to
load it into TRL. Everything goes in one commit: a failed push leaves the remote repo as it was, and pushing
the same run again changes nothing (the client skips files whose remote hash matches, and makes no commit).
The token comes from HF_TOKEN or the local login; nothing here reads, writes or prints it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from curate.pipelines.rundir import StaleRunDir, manifest_parts

CONFIG_NAMES = {"trl": "preference", "reward": "reward", "kto": "kto", "ranked": "ranked", "diffusion": "diffusion"}


class PublishError(RuntimeError):
    pass


def _exports(manifest: dict, config: dict) -> list[tuple[str, str]]:
    """(stage id, format) of every export stage that ran."""
    out = []
    for s, item in zip(manifest["stages"], config["stages"]):
        if s["stage"] == "export":
            out.append((s["id"], item["export"].get("format", "trl")))
    return out


def _size_category(n: int) -> str:
    for limit, name in [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")]:
        if n < limit:
            return name
    return "n>10M"


def _table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def source_rows(stages: list[dict], manifest: dict) -> list[list]:
    """One row per source of the load stage: its name, where it came from, its layout, its rows read and kept
    (the manifest's per-source accounting), and its license when the pipeline states one."""
    load = next(s["load"] for s in stages if "load" in s)
    stats = next((s.get("stats") or {} for s in manifest["stages"] if s["stage"] == "load"), {})
    first = manifest["stages"][0] if manifest["stages"] else {}
    out = []
    for src in load.get("sources") or [load]:
        where = src.get("hf") or (Path(src["path"]).name if src.get("path") else "-")
        name = src.get("source") or where
        got = [stats.get(f"source:{name}:in"), stats.get(f"source:{name}:out")]
        if got[0] is None and not load.get("sources"):
            got = [first.get("in"), first.get("out")]
        out.append([f"`{name}`", f"`{where}`", src.get("layout") or ("mapping" if src.get("mapping") else "prompts"),
                    *(int(v) if v is not None else "-" for v in got), src.get("license") or "not stated"])
    return out


def build_card(run_dir: Path, repo_id: str, files: dict[str, list[str]], license: str,
               columns: dict[str, list[tuple[str, str]]] | None = None) -> str:
    """The dataset card (pipelines/templates/card.md, filled with this run's tables). `columns`: per config, the
    (name, Arrow type) of each column its Parquet has (every one filled by some stage: the export carries no
    column of nulls)."""
    from curate.pipelines.report import judge_stats

    manifest = json.loads((run_dir / "manifest.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    rows_out = sum(s["rows_out"] for s in manifest["stages"] if s["stage"] == "export")
    meta = {
        "license": license,
        "task_categories": ["text-to-image"] if "diffusion" in files else ["text-generation"],
        "tags": ["preference", "dpo", "rlhf", "curate"] + (["diffusion-dpo", "dcpo"] if "diffusion" in files else []),
        "size_categories": [_size_category(rows_out)],
        "configs": [{"config_name": name, "data_files": [{"split": "train", "path": f"data/{name}/*.parquet"}]}
                    for name in files],
    }
    stages = config["stages"]
    sources = source_rows(stages, manifest)
    models = []
    for s in stages:
        for m in (s.get("generate") or {}).get("models", []):
            engine = config["engines"].get(m["engine"], {})
            name = engine.get("model") or Path(engine.get("model_path") or "SmolLM2-135M-Instruct (embedded)").name
            models.append([name, engine.get("kind"), m["k"], m["temperature"], m["top_p"], m["max_tokens"], m["seed"]])
    judges = [[s["judge"].get("name") or "-", s["judge"]["template"], s["judge"]["engine"],
               s["judge"]["sampling"]["temperature"], s["judge"].get("inconsistent", "tie")]
              for s in stages if "judge" in s]
    stats = judge_stats(run_dir, manifest)
    accounting = [[s["id"], s["in"], s["out"], s["dropped"], s["quarantined"], s["rows_out"]] for s in manifest["stages"]]
    reasons = [[sid, kind, n, r] for sid, kind, r, n in stats["reasons"]]
    import jinja2

    from curate.pipelines.costs import COST_COLUMNS, cost_line, cost_rows

    judged = manifest.get("judges") or {}
    template = jinja2.Template((Path(__file__).parent / "templates" / "card.md").read_text(), keep_trailing_newline=True,
                               undefined=jinja2.StrictUndefined)
    return template.render(
        front_matter=yaml.safe_dump(meta, sort_keys=False), repo_id=repo_id, manifest=manifest,
        first=next(iter(files)),
        sources=_table(sources, ["source", "from", "layout", "rows in", "rows kept", "license"]),
        models=_table(models, ["model", "engine", "k", "temperature", "top_p", "max_tokens", "seed"]) if models else "",
        judges=_table(judges, ["name", "template", "engine", "temperature", "inconsistent verdicts"]) if judges else "",
        judge_counts=_table([[j, v["scored"], v["unparsed"]] for j, v in stats["judges"].items()],
                            ["judge", "judgments scored", "unparsed (never given a score)"]) if stats["judges"] else "",
        kappa=_table([[a, b, f"{k:.3f}", n] for a, b, k, n in stats["kappa"]], ["judge", "judge", "kappa", "n"])
        if stats["kappa"] else "",
        review=manifest.get("human_review"), alpha=judged.get("krippendorff_alpha"), alpha_units=judged.get("alpha_units"),
        position=_table([[j, f"{c:.3f}", n] for j, c, n in stats["position"]], ["judge", "consistency", "pairs"])
        if stats["position"] else "",
        columns=[(name, _table([[f"`{c}`", t] for c, t in cols], ["column", "type"])) for name, cols in (columns or {}).items()],
        reasons=_table(reasons, ["stage", "kind", "rows", "reason"]) if reasons else "",
        accounting=_table(accounting, ["stage", "in", "out", "dropped", "quarantined", "rows out"]),
        cost=_table(cost_rows(manifest), COST_COLUMNS) + "\n\n" + cost_line(manifest) if manifest.get("cost") else "",
    )


def publish(run_dir: Path, repo_id: str, *, private: bool = False, revision: str | None = None,
            config_name: str | None = None, license: str = "other") -> dict[str, Any]:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    if manifest.get("status") != "ok":
        raise PublishError(f"{run_dir} did not finish (status {manifest.get('status')}); publish a finished run")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    exports = _exports(manifest, config)
    if not exports:
        raise PublishError(f"{run_dir} has no export stage: add `- export: {{format: trl}}` to the pipeline")
    if config_name and len(exports) > 1:
        raise PublishError("--config-name names a single export; this run has several")
    files: dict[str, list[str]] = {}
    columns: dict[str, list[tuple[str, str]]] = {}
    ops = []
    for sid, fmt in exports:
        name = config_name or CONFIG_NAMES[fmt]
        try:
            parts = manifest_parts(run_dir, manifest, sid)
        except StaleRunDir as exc:
            raise PublishError(str(exc)) from None
        if parts:
            columns[name] = [(f.name, str(f.type)) for f in pq.read_schema(parts[0])]
        for i, path in enumerate(parts):
            target = f"data/{name}/train-{i:05d}-of-{len(parts):05d}.parquet"
            files.setdefault(name, []).append(target)
            ops.append(CommitOperationAdd(path_in_repo=target, path_or_fileobj=str(path)))
    card = build_card(run_dir, repo_id, files, license, columns)
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
        keep = {op.path_in_repo for op in ops}
        stale = [f for f in api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
                 if f.startswith("data/") and f.split("/")[1] in files and f not in keep]
        ops += [CommitOperationDelete(path_in_repo=f) for f in stale]
        info = api.create_commit(repo_id, ops, repo_type="dataset", revision=revision,
                                 commit_message=f"curate: {manifest['name']} run {manifest.get('started')}")
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise PublishError(f"the Hub answered HTTP {status} ({type(exc).__name__}); nothing was committed, so the "
                           f"repo is as it was: run `curate publish` again to retry") from None
    except Exception as exc:
        # no route, DNS, TLS, refused: an OSError, or the HTTP client's own error (httpx, requests, and their
        # forks: huggingface_hub 2 uses httpx2)
        transport = ("httpx", "httpcore", "requests", "urllib3")
        if not (isinstance(exc, OSError) or any(c.__module__.startswith(transport) for c in type(exc).__mro__)):
            raise
        raise PublishError(f"cannot reach the Hub at {api.endpoint} ({type(exc).__name__}: {exc}); nothing was "
                           "committed: check the network or HF_ENDPOINT, then run `curate publish` again") from None
    return {"repo": repo_id, "commit": info.oid, "url": str(info.commit_url), "configs": files,
            "rows": sum(s["rows_out"] for s in manifest["stages"] if s["stage"] == "export")}
