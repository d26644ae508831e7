"""`curate report RUN_DIR`: one self-contained HTML file (inline SVG plots, no scripts, no network) that says what
a run did: accounting per stage, why rows were dropped, score histograms per judge, inter-judge agreement,
chosen-vs-rejected lengths, position consistency of pairwise judges, and sample pairs.

Reads only the columns it plots, through polars' lazy Parquet scans, so a large run does not load whole.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from curate.judges.stats import judgments, kappas, positions
from curate.pipelines.rundir import manifest_parts, side_parts


def _stage_dirs(run_dir: Path, manifest: dict) -> list[tuple[str, list[Path], list[str]]]:
    """(stage id, its output parts as the manifest lists them, column names) of each stage with output."""
    out = []
    for s in manifest["stages"]:
        files = manifest_parts(run_dir, manifest, s["id"], verify=False)
        if files:
            out.append((s["id"], files, pq.read_schema(files[0]).names))
    return out


def _scan(parts: list[Path]) -> pl.LazyFrame:
    return pl.scan_parquet([str(p) for p in parts])


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(key: str, title: str, svg: str) -> str:
    return f'<figure data-plot="{key}"><figcaption>{html.escape(title)}</figcaption>{svg}</figure>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def score_histograms(j: pl.DataFrame) -> str:
    import matplotlib.pyplot as plt

    scored = j.filter(pl.col("parse_ok") & pl.col("score").is_not_null())
    judges = sorted(j["judge"].unique().to_list())
    fig, axes = plt.subplots(1, len(judges), figsize=(4.5 * len(judges), 3), squeeze=False)
    for ax, judge in zip(axes[0], judges, strict=True):
        mine = j.filter(pl.col("judge") == judge)
        values = scored.filter(pl.col("judge") == judge)["score"].to_list()
        ax.hist(values, bins=20, color="#4c72b0")
        failed = mine.height - len(values)
        ax.set_title(f"{judge}\n{len(values)} scored, {failed} unparsed", fontsize=9)
        ax.set_xlabel("score")
        ax.set_ylabel("judgments")
    return _figure("scores", "Score histogram per judge", _svg(fig))


def agreement(j: pl.DataFrame) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    judges, pairs = kappas(j)
    if len(judges) < 2:
        return _note(f"Judge agreement needs two or more pointwise judges; this run has {len(judges)}.")
    n = len(judges)
    kappa = np.eye(n)
    for a, b, k, _ in pairs:
        ia, ib = judges.index(a), judges.index(b)
        kappa[ia, ib] = kappa[ib, ia] = k
    fig, ax = plt.subplots(figsize=(1.2 * n + 3, 1.0 * n + 2))
    im = ax.imshow(kappa, vmin=-1, vmax=1, cmap="RdYlGn")
    ax.set_xticks(range(n), judges, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), judges, fontsize=8)
    for a in range(n):
        for b in range(n):
            ax.text(b, a, "n/a" if np.isnan(kappa[a, b]) else f"{kappa[a, b]:.2f}", ha="center", va="center")
    fig.colorbar(im, ax=ax, label="Cohen's kappa (quadratic)")
    return _figure("agreement", "Inter-judge agreement", _svg(fig))


def position_consistency(j: pl.DataFrame) -> str:
    per = positions(j)
    if per.is_empty():
        return _note("No pairwise judgments in this run: position consistency applies to pairwise judges.")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(per["judge"].to_list(), per["consistency"].to_list(), color="#55a868")
    ax.set_ylim(0, 1)
    ax.set_ylabel("verdict survives the swap")
    return _figure("position", "Position consistency per judge", _svg(fig))


def lengths(folder: list[Path]) -> tuple[str, str]:
    import matplotlib.pyplot as plt

    df = _scan(folder).select(pl.col("chosen").str.len_chars().alias("chosen"),
                              pl.col("rejected").str.len_chars().alias("rejected")).collect()
    if df.is_empty():
        return _note("No pairs were made in this run."), ""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(df["rejected"].to_list(), df["chosen"].to_list(), s=12, alpha=0.6)
    top = max(df["chosen"].max(), df["rejected"].max())
    ax.plot([0, top], [0, top], color="gray", lw=1)
    ax.set_xlabel("rejected length (chars)")
    ax.set_ylabel("chosen length (chars)")
    share = (df["chosen"] > df["rejected"]).mean()
    return _figure("lengths", f"Chosen vs rejected length: chosen is longer in {share:.0%} of pairs",
                   _svg(fig)), f"{share:.3f}"


def sample_pairs(folder: list[Path], n: int = 5) -> str:
    cols = ["prompt", "chosen", "rejected", "chosen_score", "rejected_score", "margin"]
    rows = _scan(folder).select(cols).head(n).collect().to_dicts()
    if not rows:
        return ""
    def cell(v: Any) -> str:
        text = f"{v:g}" if isinstance(v, float) else str(v)
        return html.escape(text[:600] + ("…" if len(text) > 600 else ""))
    body = "".join("<tr>" + "".join(f"<td>{cell(r[c])}</td>" for c in cols) + "</tr>" for r in rows)
    return f'<table class="pairs"><tr>{"".join(f"<th>{c}</th>" for c in cols)}</tr>{body}</table>'


def reason_counts(run_dir: Path, manifest: dict, top: int = 8) -> list[tuple[str, str, str, int]]:
    """(stage id, dropped|quarantined, reason with numbers as N, rows) for each stage's commonest reasons."""
    out = []
    for kind in ("dropped", "quarantined"):
        for s in manifest["stages"]:
            files = side_parts(run_dir, manifest, s["id"], kind)
            if not files:
                continue
            # numbers become N, so "margin 0.5 < min_margin 1" and "margin 0 < min_margin 1" count together
            counts = (_scan(files).select(pl.col("reason").str.replace_all(r"\d+(\.\d+)?", "N"))
                      .group_by("reason").len().sort("len", descending=True).head(top).collect())
            out += [(s["id"], kind, r["reason"], r["len"]) for r in counts.to_dicts()]
    return out


def drop_reasons(run_dir: Path, manifest: dict) -> str:
    parts, current = [], None
    for sid, kind, reason, n in reason_counts(run_dir, manifest):
        if (sid, kind) != current:
            parts.append(f"{'</ul>' if current else ''}<h3>{sid} — {kind}</h3><ul>")
            current = (sid, kind)
        parts.append(f"<li>{n} × {html.escape(reason)}</li>")
    return "".join(parts) + "</ul>" if parts else _note("Nothing was dropped or quarantined.")


def judge_stats(run_dir: Path, manifest: dict) -> dict[str, Any]:
    """The numbers a dataset card reports: judgments per judge, agreement, position consistency, reasons."""
    stages = _stage_dirs(run_dir, manifest)
    judged = [folder for _, folder, cols in stages if "candidates" in cols]
    stats: dict[str, Any] = {"judges": {}, "kappa": [], "position": [], "reasons": reason_counts(run_dir, manifest)}
    if judged:
        j = judgments(judged[-1])
        if not j.is_empty():
            for judge, group in j.group_by("judge"):
                scored = group.filter(pl.col("parse_ok") & pl.col("score").is_not_null()).height
                stats["judges"][judge[0]] = {"scored": scored, "unparsed": group.filter(~pl.col("parse_ok")).height}
            stats["judges"] = dict(sorted(stats["judges"].items()))
            stats["kappa"] = kappas(j)[1]
            stats["position"] = [(r["judge"], r["consistency"], r["n"]) for r in positions(j).to_dicts()]
    return stats


def accounting(manifest: dict) -> str:
    cols = ["id", "in", "out", "dropped", "quarantined", "rows_out", "model_calls", "cache_hits", "seconds",
            "balanced"]
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(s[c]))}</td>" for c in cols) + "</tr>"
                   for s in manifest["stages"])
    return f'<table class="accounting"><tr>{head}</tr>{body}</table>'


def cost(manifest: dict) -> str:
    """Tokens and cost per stage and engine, and the run's total ("" when no model was called)."""
    from curate.pipelines.costs import COST_COLUMNS, cost_line, cost_rows

    if not manifest.get("cost"):
        return ""
    head = "".join(f"<th>{c}</th>" for c in COST_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cost_rows(manifest))
    return f'<h2>Cost</h2><table class="cost"><tr>{head}</tr>{body}</table>{_note(cost_line(manifest))}'


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;font-size:13px}
figure{display:inline-block;margin:1em}figcaption{font-weight:600}.note{color:#666}.pairs td{max-width:320px}"""


def bias_probes(summary: dict) -> str:
    """The manifest's per-judge probes and overall agreement, as a table."""
    per = summary.get("per_judge") or {}
    if not per:
        return ""

    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{cell(v['kind'])}</td><td>{v['scored']}</td><td>{v['unparsed']}</td>"
        f"<td>{cell(v.get('position_consistency'))}</td><td>{cell(v.get('longer_wins'))}</td>"
        f"<td>{cell((v.get('self_preference') or {}).get('gap'))}</td></tr>" for name, v in per.items())
    head = "".join(f"<th>{h}</th>" for h in ("judge", "kind", "scored", "unparsed", "position consistency",
                                             "longer response wins", "self-preference gap"))
    alpha = summary.get("krippendorff_alpha")
    note = _note(f"Krippendorff's alpha over all judges (interval, on within-prompt ranks): {cell(alpha)} on "
                 f"{summary.get('alpha_units', 0)} candidates.") if alpha is not None else ""
    return f'<h3>Bias probes</h3><table class="probes"><tr>{head}</tr>{rows}</table>{note}'


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = _stage_dirs(run_dir, manifest)
    judged = [folder for _, folder, cols in stages if "candidates" in cols]
    paired = [folder for _, folder, cols in stages if {"chosen", "rejected", "chosen_score"} <= set(cols)]
    sections = [f"<h2>Row accounting</h2>{accounting(manifest)}", cost(manifest),
                f"<h2>Dropped and quarantined</h2>{drop_reasons(run_dir, manifest)}"]
    if judged:
        j = judgments(judged[-1])
        if j.is_empty():
            sections.append("<h2>Judges</h2>" + _note("No judgments in this run."))
        else:
            sections.append("<h2>Judges</h2>" + bias_probes(manifest.get("judges") or {}) + score_histograms(j)
                            + agreement(j) + position_consistency(j))
    if paired:
        fig, _ = lengths(paired[-1])
        sections.append("<h2>Pairs</h2>" + fig + sample_pairs(paired[-1]))
    title = f"curate report: {manifest['name']}"
    meta = (f"status <b>{html.escape(manifest['status'])}</b> · started {html.escape(str(manifest.get('started')))}"
            f" · finished {html.escape(str(manifest.get('finished')))} · code {manifest.get('code_version')}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p>{meta}</p>"
            f"{''.join(sections)}</body></html>")
    out = out or run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
