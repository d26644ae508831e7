"""A pipeline YAML is checked whole before anything runs; each problem names its YAML path."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
import yaml

from conftest import EXAMPLES, curate
from curate.pipelines.config import ConfigError, load_pipeline

#: the fast tier (./scripts/test --fast): no model, Ray or Prefect run here
pytestmark = pytest.mark.fast


@pytest.fixture
def example(tmp_path):
    """The shipped example pipeline, copied with its data into a temp folder, as a mutable dict + writer."""
    shutil.copytree(EXAMPLES / "data", tmp_path / "data")
    data = yaml.safe_load((EXAMPLES / "mt_bench_pairs.yaml").read_text())

    def write(d=None):
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(d if d is not None else data, sort_keys=False))
        return path

    return data, write


def problems_of(path):
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    return info.value.problems


def test_the_example_validates_without_loading_a_model(example):
    _, write = example
    pipeline = load_pipeline(write())
    assert [s.name for s in pipeline.stages] == ["load", "generate", "judge", "pairs", "export"]
    # in a fresh interpreter (other tests in this process may have imported engines)
    probe = ("import sys; from curate.pipelines.config import load_pipeline; load_pipeline(sys.argv[1]); "
             "print('llama_cpp' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", probe, str(write())], capture_output=True, text=True, timeout=120,
                         cwd=EXAMPLES.parent.parent)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False", "validation must not import the engine, let alone load a model"


def test_typo_in_a_key_names_its_path_and_suggests_the_fix(example):
    data, write = example
    data["stages"][3]["pairs"] = {"min_margn": 2}
    (problem,) = problems_of(write())
    assert problem.startswith("stages[3].pairs.min_margn: unknown key 'min_margn' (did you mean 'min_margin'?); "
                              "known keys: allow_truncated, aspect, easy_margin, grounding_aspect, judge_kind, judges, k, label_key, "
                              "min_agreement, min_grounded, min_margin, safety_aspect,")


def test_wrong_type_and_unknown_stage_are_all_reported_at_once(example):
    data, write = example
    data["stages"][1]["generate"]["models"][0]["k"] = "four"
    data["stages"].insert(3, {"judgee": {}})
    found = problems_of(write())
    assert found[0].startswith("stages[1].generate.models[0].k: Input should be a valid integer")
    assert found[1].startswith("stages[3]: unknown stage 'judgee' (did you mean 'judge'?); "
                               "stages: load, generate, judge, reward_model, jury, debate, pairs, rank, ")


def test_missing_input_file_and_template(example):
    data, write = example
    data["stages"][0]["load"]["path"] = "data/nope.jsonl"
    data["stages"][2]["judge"]["template"] = "my_judge.yaml"
    found = problems_of(write())
    assert found[0].startswith("stages[0].load.path: file not found:")
    assert found[0].endswith("data/nope.jsonl")
    assert found[1].startswith("stages[2].judge.template: no built-in template 'my_judge.yaml'")


def test_a_stage_reading_a_column_nobody_writes(example):
    data, write = example
    data["stages"][4]["export"]["columns"] = ["chosen_scroe"]
    assert problems_of(write()) == [
        "stages[4].export: reads column 'chosen_scroe', which no earlier stage writes (did you mean 'chosen_score'?)"
    ]
    # a provenance column no stage of this pipeline makes (no rationale stage): refused, even after `pairs`
    data["stages"][4]["export"]["columns"] = ["rationale", "strength"]
    assert problems_of(write()) == [
        "stages[4].export: reads column 'rationale', which no earlier stage writes",
        "stages[4].export: reads column 'strength', which no earlier stage writes",
    ]
    del data["stages"][4]["export"]["columns"]
    del data["stages"][2]  # no judge: pairs has no judgments to read
    found = problems_of(write())
    assert len(found) == 1
    assert found[0].startswith("stages[2].pairs: reads column 'candidates.judgments', which no earlier stage writes")


def test_unknown_engine_and_missing_model_file(example, tmp_path):
    data, write = example
    data["stages"][2]["judge"]["engine"] = "big"
    data["engines"]["default"]["model_path"] = str(tmp_path / "missing.gguf")
    found = problems_of(write())
    assert "stages[2].judge.engine: unknown engine 'big'; defined: default" in found
    assert any(p.startswith("engines.default: GGUF model file not found") for p in found)


def test_cli_validate_fails_fast_with_one_line_per_problem(example):
    data, write = example
    data["stages"][3]["pairs"]["min_margn"] = 1
    start = time.perf_counter()
    res = curate("validate", write())
    assert res.returncode == 2
    assert "stages[3].pairs.min_margn: unknown key" in res.stderr
    assert time.perf_counter() - start < 30  # no model, no Ray
    ok = curate("validate", write(yaml.safe_load((EXAMPLES / "mt_bench_pairs.yaml").read_text())))
    assert ok.returncode == 0, ok.stderr
    assert "load -> generate -> judge -> pairs -> export" in ok.stdout


def test_not_yaml_and_missing_pipeline_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [load: {path: x\n")
    assert problems_of(bad)[0].startswith("not valid YAML")
    assert problems_of(tmp_path / "absent.yaml") == [f"pipeline file not found: {tmp_path / 'absent.yaml'}"]


def test_every_shipped_example_validates():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        if path.name == "judge_eval.yaml":  # a judge config for `curate judge-eval`, not a pipeline
            continue
        res = curate("validate", path)
        if path.name == "reward_model_jury.yaml" and res.returncode:  # it names the user's reward model folder
            lines = [line for line in res.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and "stages[1].reward_model.model" in lines[0] and "not found" in lines[0], lines
            continue
        if path.name in ("vllm_offline.yaml", "transformers.yaml", "ray_llm.yaml") and res.returncode:
            # they name a model folder of the user's (and vLLM an extra): here only the engine may be missing
            lines = [line for line in res.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and "engines.default: " in lines[0], (path.name, res.stderr)
            assert "not installed" in lines[0] or "not a local Hugging Face model folder" in lines[0]
            continue
        assert res.returncode == 0, (path.name, res.stderr)
