"""`curate report` writes a self-contained HTML page; Debian's Chromium (driven by Playwright, no browser
download) loads it and every plot renders with a real size."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import curate
from test_end_to_end import small_example

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def judged_twice(tmp_path_factory):
    """A run where two judges (same model, different seeds and names) grade the same candidates."""
    tmp = tmp_path_factory.mktemp("report")
    path = small_example(tmp)
    data = yaml.safe_load(path.read_text())
    data["stages"][0]["load"]["limit"] = 2
    data["stages"][1]["generate"]["models"][0].update(k=3, max_tokens=40)
    judge = data["stages"][2]["judge"]
    data["stages"][2]["judge"] = {**judge, "name": "smol-seed0"}
    data["stages"].insert(3, {"judge": {**judge, "name": "smol-seed1",
                                        "sampling": {**judge["sampling"], "seed": 1}}})
    # and a pairwise judge, every pair in both orders, for the position-consistency probe
    data["stages"].insert(4, {"judge": {"template": "mt_bench_pair_v2", "name": "smol-pairwise",
                                        "sampling": {"temperature": 0.0, "max_tokens": 96}}})
    data["stages"][5]["pairs"].update(min_margin=0.5, judge_kind="pointwise")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    res = curate("run", path, "--run-dir", tmp / "run")
    assert res.returncode == 0, res.stdout + res.stderr
    return tmp / "run"


def test_report_renders_in_headless_chromium(judged_twice, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: apt-get install chromium (scripts/test installs it)")
    res = curate("report", judged_twice)
    assert res.returncode == 0, res.stderr
    page_path = judged_twice / "report.html"
    text = page_path.read_text()
    assert "<script" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text), "nothing is fetched from outside"

    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(page_path.as_uri())
        assert page.title() == "curate report: mt_bench_pairs"
        plots = page.eval_on_selector_all(
            "figure[data-plot] svg",
            "els => els.map(e => ({plot: e.closest('figure').dataset.plot, w: e.getBoundingClientRect().width,"
            " h: e.getBoundingClientRect().height, marks: e.querySelectorAll('path, use, rect').length}))")
        rows = page.eval_on_selector_all("table.accounting tr", "els => els.length")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    manifest = json.loads((judged_twice / "manifest.json").read_text())
    assert rows == len(manifest["stages"]) + 1
    kinds = {p["plot"] for p in plots}
    assert {"scores", "agreement", "position"} <= kinds
    if manifest["stages"][5]["rows_out"]:
        assert "lengths" in kinds
    for p in plots:
        assert p["w"] > 100 and p["h"] > 100 and p["marks"] > 5, p
    assert (tmp_path / "report.png").stat().st_size > 20_000
