"""`curate judge-eval`: judges and their jury measured against PandaLM's human labels, beside baselines."""

from __future__ import annotations

import json


from conftest import EXAMPLES, curate
from curate.pipelines.judge_eval import jury, metrics, read_pairs


def test_pandalm_labels_are_the_annotators_majority(copy_data):
    path = copy_data("pandalm/testset-v1.json")
    pairs = list(read_pairs(path, limit=50))
    assert len(pairs) == 50
    raw = json.load(open(path))[:50]
    for (q, a, b, label), rec in zip(pairs, raw):
        assert q.startswith(rec["instruction"]) and a == rec["response1"] and b == rec["response2"]
        votes = [rec["annotator1"], rec["annotator2"], rec["annotator3"]]
        top = max(set(votes), key=votes.count)
        expected = {1: "A", 2: "B", 0: "tie"}[top] if votes.count(top) >= 2 else "tie"
        assert label == expected


def test_common_jsonl_layout(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"question": "2+2?", "output_1": "4", "output_2": "5", "label": 1},
            {"question": "Capital of France?", "output_1": "Rome", "output_2": "Paris", "label": "model_b"},
            {"question": "Say hi", "output_1": "hi", "output_2": "hello", "label": "tie"},
            {"question": "no label", "output_1": "x", "output_2": "y"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert [p[3] for p in read_pairs(path, None)] == ["A", "B", "tie"]


def test_metrics_and_jury_by_hand():
    human = ["A", "A", "B", "tie"]
    m = metrics(human, ["A", "B", "B", "unparsed"], consistent=[True, False, True, True])
    assert m["agreement"] == 0.5
    assert m["agreement_without_ties"] == 2 / 3 and m["decided"] == 3
    assert m["unparsed"] == 1 and m["position_consistency"] == 0.75
    assert m["confusion"]["A"] == {"A": 1, "B": 1, "tie": 0, "unparsed": 0}
    assert jury([["A", "B", "unparsed"], ["A", "A", "unparsed"], ["B", "tie", "unparsed"]]) == ["A", "tie", "unparsed"]


def test_cli_judge_eval_on_pandalm_with_the_embedded_model(copy_data, tmp_path):
    data = copy_data("pandalm/testset-v1.json")
    res = curate("judge-eval", "--data", data, "--judge", EXAMPLES / "judge_eval.yaml", "--limit", "2",
                 "--out", tmp_path / "eval.json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "judges vs human labels: 2 pairs" in res.stdout
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["results"]) == {"smol-single", "smol-pair", "smol-prometheus", "smol-strength", "smol-debate",
                                      "jury (majority)", "baseline: always longer", "baseline: random"}
    # per pair: 2 pointwise x 2 judges, 2 orders x 2 pairwise judges, 2 orders x 2 debaters x 2 rounds
    assert report["model_calls"] + report["cache_hits"] >= 2 * (2 * 2 + 2 * 2 + 2 * 2 * 2)
    pair = report["results"]["smol-pair"]
    assert pair["position_consistency"] is not None and 0 <= pair["position_consistency"] <= 1
    for m in report["results"].values():
        assert m["n"] == 2 and sum(sum(row.values()) for row in m["confusion"].values()) == 2
    # every verdict can be audited against the judge's own words
    for name, rows in report["outputs"].items():
        assert [r["pair"] for r in rows] == [0, 1]
        for r in rows:
            assert r["outputs"] and all("feedback" in o and "error" in o for o in r["outputs"])
            if r["verdict"] != "unparsed":
                assert any(o.get("parse_ok") and o["feedback"] for o in r["outputs"]), (name, r)
    single = report["outputs"]["smol-single"][0]["outputs"]
    assert len(single) == 2 and all(o["score"] is None or 1 <= o["score"] <= 10 for o in single)


def test_cli_judge_eval_reports_config_errors_with_paths(tmp_path, copy_data):
    cfg = tmp_path / "judge.yaml"
    cfg.write_text("judges:\n  - template: mt_bench_single_v1\n    temprature: 0\n")
    res = curate("judge-eval", "--data", copy_data("pandalm/testset-v1.json"), "--judge", cfg)
    assert res.returncode == 2
    assert "judges[0].temprature: unknown key 'temprature'" in res.stderr
