"""TRL's trainers take curate's exports unchanged, as a user would hand them over: HH-RLHF's human pairs go
through `curate run` (load transcripts -> pairs -> export in each format), `datasets` loads the export folder,
and DPOTrainer (standard and conversational), KTOTrainer and RewardTrainer each train a real step or two of the
embedded SmolLM2-135M (converted to a Hugging Face folder) on the CPU.

The reward model RewardTrainer makes is then a judge: a pipeline scores held-out human pairs with the
`reward_model` stage beside an LLM judge in one jury, and the run reports its ranking accuracy beside chance,
as measured (a few CPU steps on a 135M model teach it little; the number is not asserted above chance)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import EXAMPLES, accounted, curate

trl = pytest.importorskip("trl")

HH = EXAMPLES / "data" / "hh_rlhf_harmless_40.jsonl"
#: tokens per example the trainers see: short, so a CPU step takes seconds (longer pairs are cut or filtered)
MAX_LENGTH = 160


def export(tmp: Path, lines: list[str], fmt: str, conversational: bool) -> Path:
    """curate's export of HH-RLHF's human pairs in one format: the folder a user points `datasets` at."""
    data = tmp / "hh.jsonl"
    data.write_text("\n".join(lines) + "\n")
    spec = tmp / f"{fmt}.yaml"
    spec.write_text(yaml.safe_dump({"name": f"hh_{fmt}", "stages": [
        {"load": {"path": str(data), "transcripts": {"chosen": "chosen", "rejected": "rejected"}}},
        {"pairs": {"label_key": "human_chosen"}},
        {"export": {"format": fmt, "conversational": conversational}}]}))
    run = tmp / f"run_{fmt}_{conversational}"
    res = curate("run", spec, "--run-dir", run)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    m = accounted(run)
    return run / m["stages"][-1]["id"]


def load(folder: Path):
    import datasets

    return datasets.load_dataset("parquet", data_dir=str(folder), split="train")


def tokenizer(hf_model: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_model)
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


def common(out: Path, steps: int) -> dict:
    # bf16 off: TRL's configs default to bf16, which a CPU without bf16 units emulates ~7x slower than fp32
    return {"output_dir": str(out), "max_steps": steps, "per_device_train_batch_size": 2, "learning_rate": 1e-5,
            "logging_steps": 1, "save_strategy": "no", "report_to": [], "use_cpu": True, "seed": 0, "bf16": False,
            "gradient_checkpointing": False}


def trained(trainer, steps: int) -> None:
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == steps and len(losses) == steps and all(math.isfinite(x) for x in losses)


@pytest.mark.parametrize("conversational", [False, True], ids=["standard", "conversational"])
def test_dpo_trainer_trains_on_the_trl_export(hf_model, tmp_path, conversational):
    from trl import DPOConfig, DPOTrainer

    ds = load(export(tmp_path, HH.read_text().splitlines()[:6], "trl", conversational))
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert isinstance(ds[0]["chosen"], list) == conversational  # message lists or strings, as TRL reads them
    trainer = DPOTrainer(model=str(hf_model), args=DPOConfig(**common(tmp_path / "dpo", 1), max_length=MAX_LENGTH),
                         train_dataset=ds, processing_class=tokenizer(hf_model))
    trained(trainer, 1)


def test_kto_trainer_trains_on_the_kto_export(hf_model, tmp_path):
    from trl import KTOConfig, KTOTrainer

    ds = load(export(tmp_path, HH.read_text().splitlines()[:4], "kto", False))
    assert sorted(ds["label"]) == [False] * 4 + [True] * 4  # each pair: its chosen and its rejected answer
    trainer = KTOTrainer(model=str(hf_model), args=KTOConfig(**common(tmp_path / "kto", 1), max_length=MAX_LENGTH),
                         train_dataset=ds, processing_class=tokenizer(hf_model))
    trained(trainer, 1)


@pytest.fixture(scope="module")
def reward_model(hf_model, tmp_path_factory) -> tuple[Path, Path]:
    """(reward model folder, held-out HH-RLHF pairs) after a real RewardTrainer run on curate's reward export."""
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tmp = tmp_path_factory.mktemp("reward")
    lines = HH.read_text().splitlines()
    ds = load(export(tmp, lines[:30], "reward", True))
    assert ds.num_rows == 30 and isinstance(ds[0]["chosen"], list)  # whole exchanges, as RewardTrainer reads them
    tok = tokenizer(hf_model)
    model = AutoModelForSequenceClassification.from_pretrained(hf_model, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    trainer = RewardTrainer(model=model, args=RewardConfig(**common(tmp / "trainer", 2), max_length=MAX_LENGTH * 2),
                            train_dataset=ds, processing_class=tok)
    trained(trainer, 2)
    out = tmp / "smollm2-reward"
    trainer.save_model(str(out))
    tok.save_pretrained(out)
    held_out = tmp / "held_out.jsonl"
    held_out.write_text("\n".join(lines[36:]) + "\n")
    return out, held_out


def test_a_trained_reward_model_judges_held_out_pairs_in_a_jury(reward_model, tmp_path):
    model, held_out = reward_model
    spec = tmp_path / "score.yaml"
    spec.write_text(yaml.safe_dump({"name": "rm_jury", "cache_dir": str(tmp_path / "cache"), "stages": [
        {"load": {"path": str(held_out), "transcripts": {"chosen": "chosen", "rejected": "rejected"}}},
        {"reward_model": {"model": str(model), "device": "cpu", "batch_size": 4}},
        {"judge": {"template": "mt_bench_single_v1", "question": "conversation",
                   "sampling": {"temperature": 0.0, "max_tokens": 24, "seed": 0}}},
        {"jury": {"method": "borda"}},
        {"pairs": {"judges": ["jury"], "min_margin": 0, "ties": "keep"}},
        {"export": {"format": "trl"}}]}))
    res = curate("run", spec, "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    m = accounted(tmp_path / "run")
    summary = m["stages"][1]["summary"]
    assert summary["human_pairs"] == 4 and summary["chance"] == 0.5
    assert 0 <= summary["human_ranking_accuracy"] <= 1  # reported as measured
    assert "human_ranking_accuracy" in res.stdout
    print(f"reward model ranking accuracy on 4 held-out HH-RLHF pairs: {summary['human_ranking_accuracy']:.2f}")
    rows = pq.read_table(tmp_path / "run" / m["stages"][3]["id"]).to_pylist()
    for row in rows:
        for cand in row["candidates"]:
            kinds = {j["kind"]: j for j in cand["judgments"]}
            assert {"reward_model", "pointwise", "jury"} <= set(kinds)
            reward = kinds["reward_model"]
            assert reward["parse_ok"] and isinstance(reward["score"], float)
            assert reward["judge"] == "smollm2-reward:reward_model"
            members = {x["judge"] for x in kinds["jury"]["members"]}
            assert "smollm2-reward:reward_model" in members  # the reward model sits in the jury beside the LLM
    assert m["judges"]["per_judge"]["smollm2-reward:reward_model"]["kind"] == "reward_model"


def test_a_folder_that_is_not_a_reward_model_is_a_config_error(tmp_path):
    folder = tmp_path / "causal"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({"name": "bad", "stages": [
        {"load": {"path": str(prompts)}}, {"generate": {}}, {"reward_model": {"model": str(folder)}}]}))
    res = curate("validate", spec)
    assert res.returncode == 2
    assert "stages[2].reward_model.model" in res.stderr and "not a sequence-classification reward model" in res.stderr


def test_a_reward_model_is_measured_against_human_labels_in_judge_eval(reward_model, tmp_path, copy_data):
    model, _ = reward_model
    cfg = tmp_path / "judges.yaml"
    cfg.write_text(yaml.safe_dump({"cache_dir": str(tmp_path / "cache"), "judges": [
        {"model": str(model), "device": "cpu", "name": "rm"},
        {"template": "mt_bench_single_v1", "name": "llm", "sampling": {"temperature": 0.0, "max_tokens": 32}}]}))
    res = curate("judge-eval", "--data", copy_data("pandalm/testset-v1.json"), "--judge", cfg, "--limit", "4",
                 "--out", tmp_path / "eval.json")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert {"rm", "llm", "jury (majority)", "baseline: always longer", "baseline: random"} <= set(report["results"])
    rm = report["results"]["rm"]
    assert rm["n"] == 4 and rm["position_consistency"] is None  # a reward model scores; it sees no order
    print(f"reward model vs PandaLM's humans on 4 pairs: agreement {rm['agreement']:.2f}")
    for row in report["outputs"]["rm"]:
        scores = [o["score"] for o in row["outputs"]]
        assert len(scores) == 2 and (row["verdict"] == "unparsed" or all(isinstance(x, float) for x in scores))


def test_six_published_layouts_merged_rejudged_and_deduped_train_dpo(hf_model, tmp_path):
    """The merge example as a user runs it: six real layouts (HH-RLHF, OpenAssistant trees, LLaMA-Factory DPO,
    AlpacaEval, PandaLM's three annotators, and a TRL dataset curate exported) in one `curate run`; the embedded
    model judges every candidate again, a jury sits over it and the sources' own labels, the manifest reports each
    source's agreement with the new judge and the jury, dedup removes the export's rows that repeat HH-RLHF's, and
    DPOTrainer takes the one TRL dataset. (The embedded judge is at chance level: the agreement is reported, not
    asserted to be high.)"""
    from conftest import example_pipeline
    from trl import DPOConfig, DPOTrainer

    spec = example_pipeline(tmp_path, "merge_sources", ("max_tokens: 96", "max_tokens: 32"))
    run = tmp_path / "run"
    res = curate("run", spec, "--limit", "2", "--run-dir", run, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    m = accounted(run)
    load = m["stages"][0]["stats"]
    names = ["hh-rlhf", "oasst", "llamafactory-dpo", "alpaca-eval", "pandalm", "curate-export"]
    for name in names:  # each source accounted apart
        c = {k: load.get(f"source:{name}:{k}", 0) for k in ("in", "out", "dropped", "quarantined")}
        assert c["in"] == 2 and c["in"] == c["out"] + c["dropped"] + c["quarantined"], (name, c)
    dedup = next(s for s in m["stages"] if s["stage"] == "dedup")
    assert dedup["dropped"] == 2  # the curate export's two rows are HH-RLHF's first two pairs
    agree = m["judges"]["source_agreement"]
    assert {r["source"] for r in agree} == set(names) - {"curate-export"}
    assert all(r["pairs"] >= 1 and 0 <= r["agreement"] <= 1 for r in agree)
    assert {r["judge"] for r in agree} >= {"jury"}
    assert "sources' labels vs the other judges" in res.stdout and "rows per source" in res.stdout
    # the pairs the jury's members (a source's label among them) split on go to people
    review = curate("review", "export", run, "--sample", "50", "--disputed")
    pairs_out = pq.read_table(run / next(s["id"] for s in m["stages"] if s["stage"] == "pairs")).to_pylist()
    disputed = {(p["chosen_id"], p["rejected_id"]) for p in pairs_out if p["agreement"] is not None and p["agreement"] < 1}
    if disputed:
        assert review.returncode == 0, review.stderr
        tasks = json.loads((run / "review" / "tasks.json").read_text())
        assert {(t["data"]["chosen_id"], t["data"]["rejected_id"]) for t in tasks} == disputed
    else:  # a jury that agreed everywhere: nothing to send, said in one line
        assert review.returncode == 2 and "no disputed pairs" in review.stderr
    ds = load_export(run / m["stages"][-1]["id"])
    assert {"prompt", "chosen", "rejected", "source"} <= set(ds.column_names) and len(ds) >= 2
    trainer = DPOTrainer(model=str(hf_model), args=DPOConfig(**common(tmp_path / "dpo", 1), max_length=MAX_LENGTH),
                         train_dataset=ds.select_columns(["prompt", "chosen", "rejected"]),
                         processing_class=tokenizer(hf_model))
    trained(trainer, 1)


load_export = load
