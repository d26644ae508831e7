"""`curate judge-eval`: measure judges against human preference labels before trusting them with a dataset.

Reads human-labeled pairs (PandaLM's test set, or the common `{instruction|input|question, output_1|response_A,
output_2|response_B, label}` layouts), runs each judge of a judge config (pointwise: both responses scored;
pairwise: both orders), and, when there are several, their jury (majority vote). Prints per judge: agreement
with the humans with and without ties, Cohen's kappa, position consistency (pairwise judges), how many outputs
did not parse, and a confusion matrix; and the same for two baselines measured on the same pairs: always the
longer response, and a seeded coin.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from curate.engines.config import EngineConfig, default_engine

LABELS = ["A", "B", "tie"]


class JudgeEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    engines: dict[str, EngineConfig] = Field(default_factory=lambda: {"default": default_engine()})
    #: judge stage configs (template, engine, sampling, retries, name, ...), debate stage configs (those with
    #: `debaters`) or reward_model stage configs (those with `model`: a local reward model folder); several make
    #: a jury
    judges: list[dict[str, Any]] = Field(min_length=1)
    cache_dir: Path | None = None


def load_config(path: Path):
    from curate.pipelines.config import ConfigError, describe_errors
    from curate.stages.debate import Config as DebateConfig
    from curate.stages.judge import Config as JudgeConfig
    from curate.stages.reward_model import Config as RewardConfig

    data = yaml.safe_load(path.read_text())
    try:
        cfg = JudgeEvalConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_errors(err, "", JudgeEvalConfig), str(path)) from None
    judges, problems = [], []
    for i, j in enumerate(cfg.judges):
        kind = (DebateConfig if isinstance(j, dict) and "debaters" in j
                else RewardConfig if isinstance(j, dict) and ("model" in j or "endpoint" in j) else JudgeConfig)
        try:
            judges.append(kind.model_validate(j, context={"base_dir": path.parent.resolve()}))
        except ValidationError as err:
            problems.extend(describe_errors(err, f"judges[{i}]", kind))
    for i, j in enumerate(judges):
        if isinstance(j, RewardConfig):
            continue  # a reward model is its own model, not an engine
        used = j.engine if isinstance(j, JudgeConfig) else [d.engine for d in j.debaters]
        for name in [used] if isinstance(used, str) else used:
            if name not in cfg.engines:
                problems.append(f"judges[{i}]: unknown engine {name!r}; defined: {', '.join(cfg.engines)}")
    if problems:
        raise ConfigError(problems, str(path))
    return cfg, judges


def _label(value: Any) -> str | None:
    v = str(value).strip().lower()
    return {"1": "A", "a": "A", "model_a": "A", "response_a": "A", "2": "B", "b": "B", "model_b": "B",
            "response_b": "B", "0": "tie", "tie": "tie", "c": "tie", "3": "tie"}.get(v)


def _first(rec: dict, keys: tuple[str, ...]) -> Any:
    return next((rec[k] for k in keys if rec.get(k) is not None), None)


def read_pairs(path: Path, limit: int | None):
    """(question, response A, response B, human label) per labeled pair, streaming."""
    from curate.schemas.sources import records

    n = 0
    for row in records(path):
        rec = row.record
        if row.error or not isinstance(rec, dict):
            continue
        question = _first(rec, ("instruction", "question", "prompt"))
        if rec.get("input"):
            question = f"{question}\n\n{rec['input']}" if question else rec["input"]
        # an empty response is a real answer (a model that said nothing), so keys are looked up, not truth-tested
        a = _first(rec, ("response1", "output_1", "response_A", "response_a"))
        b = _first(rec, ("response2", "output_2", "response_B", "response_b"))
        if "annotator1" in rec:  # PandaLM: the majority of three annotators (no majority: tie)
            votes = Counter(_label(rec[k]) for k in ("annotator1", "annotator2", "annotator3") if k in rec)
            top, count = votes.most_common(1)[0]
            label = top if count >= 2 else "tie"
        else:
            label = _label(rec.get("label"))
        if not (isinstance(question, str) and isinstance(a, str) and isinstance(b, str) and label):
            continue
        yield question, a, b, label
        n += 1
        if limit is not None and n >= limit:
            return


def _mean_score(judgments: list[dict]) -> float | None:
    scores = [j["score"] for j in judgments]
    return None if not scores or any(sc is None for sc in scores) else sum(scores) / len(scores)


def verdict(outcome, pairwise: bool) -> tuple[str, bool | None]:
    """The judge's verdict on a pair ("A", "B", "tie" or "unparsed") from the two answers' judgments, and for
    a pairwise judge (or debate) whether its verdict survived the position swap (None for judges that score)."""
    sa, sb = (None, None) if outcome.errors else (_mean_score(js) for js in outcome.judgments)
    v = "unparsed" if sa is None or sb is None else "A" if sa > sb else "B" if sb > sa else "tie"
    if not pairwise:
        return v, None
    first = outcome.judgments[0]
    return v, v != "unparsed" and first[0]["verdict"] == first[1]["verdict"]


RAW_KEYS = ("position", "score", "verdict", "strength", "parse_ok", "error", "feedback")


def raw_outputs(outcome) -> list[dict]:
    """A judge's outputs for one pair as they came back: each call's raw text (feedback) beside what was parsed
    from it, or the engine's error; so a surprising number can be audited against the judge's own words."""
    out = [{"answer": "AB"[a], **{k: j.get(k) for k in RAW_KEYS}}
           for a, js in enumerate(outcome.judgments) for j in js]
    return out + [{"error": c.error, "feedback": c.text} for c in outcome.failed]


def run_judge(judge_cfg, engines: dict, pairs: list[tuple[str, str, str, str]]):
    """The judge's name, its verdict per pair, per pair whether a pairwise judge's (or debate's) verdict
    survived the position swap (None for judges that score responses), and per pair the judge's raw outputs.
    The pairs go through the same dispatch as the judge and debate stages (judges.items)."""
    from curate.judges.calls import judge_name
    from curate.judges.items import JudgeItem, JudgeOutcome, judge_items
    from curate.stages import reward_model
    from curate.stages.debate import Config as DebateConfig

    items = [JudgeItem(q, [a, b], ["A", "B"], key=str(i)) for i, (q, a, b, _) in enumerate(pairs)]
    if isinstance(judge_cfg, reward_model.Config):
        model = reward_model.model_of(judge_cfg, {})
        name, pairwise = reward_model.judge_name(judge_cfg, model), False
        judged = reward_model.score(judge_cfg, model, [[{"role": "user", "content": it.question}] for it in items],
                                    [it.answers for it in items])
        outcomes = [JudgeOutcome([[x] for x in j]) for j in judged]
    elif isinstance(judge_cfg, DebateConfig):
        name, pairwise = judge_cfg.name, True
        outcomes = judge_cfg.run(engines.__getitem__, items)
    else:
        judge = judge_cfg.judge(engines[judge_cfg.engine])
        name = judge_name(judge.engine, judge.template, judge_cfg.name)
        pairwise = judge.template.kind == "pairwise"
        outcomes = judge_items(judge, items)
    decided = [verdict(o, pairwise) for o in outcomes]
    return (name, [v for v, _ in decided], [c for _, c in decided] if pairwise else None,
            [raw_outputs(o) for o in outcomes])


def jury(verdicts: list[list[str]]) -> list[str]:
    """Per pair, the majority of the judges that gave a verdict (judges.jury.majority: no majority is a tie)."""
    from curate.judges.jury import majority

    return [majority(v for v in votes if v != "unparsed") or "unparsed" for votes in zip(*verdicts)]


def longer_wins(verdicts: list[str], longer: list[str]) -> float | None:
    """Among pairs the judge decided whose responses differ in length, the share where the longer one won: a
    judge well above the humans' rate rewards length."""
    decided = [(v, lg) for v, lg in zip(verdicts, longer) if v in ("A", "B") and lg in ("A", "B")]
    return sum(v == lg for v, lg in decided) / len(decided) if decided else None


def metrics(human: list[str], verdicts: list[str], consistent: list[bool] | None,
            longer: list[str] | None = None) -> dict[str, Any]:
    from sklearn.metrics import cohen_kappa_score

    n = len(human)
    agree = sum(h == v for h, v in zip(human, verdicts)) / n
    decided = [(h, v) for h, v in zip(human, verdicts) if h != "tie" and v in ("A", "B")]
    kappa_pairs = [(h, v) for h, v in zip(human, verdicts) if v != "unparsed"]
    kappa = (cohen_kappa_score([h for h, _ in kappa_pairs], [v for _, v in kappa_pairs], labels=LABELS)
             if len({v for _, v in kappa_pairs}) > 1 or len({h for h, _ in kappa_pairs}) > 1 else 0.0)
    confusion = {h: {v: sum(1 for a, b in zip(human, verdicts) if a == h and b == v)
                     for v in LABELS + ["unparsed"]} for h in LABELS}
    return {
        "n": n,
        "agreement": agree,
        "agreement_without_ties": (sum(h == v for h, v in decided) / len(decided)) if decided else None,
        "decided": len(decided),
        "cohen_kappa": float(kappa),
        "position_consistency": (sum(consistent) / len(consistent)) if consistent else None,
        "unparsed": sum(v == "unparsed" for v in verdicts),
        "longer_wins": longer_wins(verdicts, longer) if longer else None,
        "confusion": confusion,
    }


def evaluate(data: Path, config: Path, limit: int | None, seed: int = 0) -> dict[str, Any]:
    from curate.engines.cache import ResponseCache
    from curate.engines.config import build_engine

    cfg, judge_cfgs = load_config(config)
    pairs = list(read_pairs(data, limit))  # bounded by --limit; an eval set is small by nature
    if not pairs:
        raise ValueError(f"no labeled pairs could be read from {data}")
    human = [p[3] for p in pairs]
    cache = ResponseCache(cfg.cache_dir)
    engines = {name: build_engine(e, cache) for name, e in cfg.engines.items()}
    results: dict[str, Any] = {}
    all_verdicts = []
    longer = ["A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie" for _, a, b, _ in pairs]
    outputs: dict[str, list[dict]] = {}
    for jc in judge_cfgs:
        name, verdicts, consistent, raw = run_judge(jc, engines, pairs)
        all_verdicts.append(verdicts)
        results[name] = metrics(human, verdicts, consistent, longer)
        outputs[name] = [{"pair": i, "human": h, "verdict": v, "outputs": r}
                         for i, (h, v, r) in enumerate(zip(human, verdicts, raw, strict=True))]
    if len(judge_cfgs) > 1:
        results["jury (majority)"] = metrics(human, jury(all_verdicts), None, longer)
    results["baseline: always longer"] = metrics(human, longer, None, longer)
    rng = random.Random(seed)
    results["baseline: random"] = metrics(human, [rng.choice("AB") for _ in pairs], None, longer)

    return {"data": str(data), "pairs": len(pairs), "human_labels": dict(Counter(human)), "results": results,
            "human_longer_wins": longer_wins(human, longer),
            "model_calls": sum(e.calls for e in engines.values()), "cache_hits": sum(e.hits for e in engines.values()),
            "outputs": outputs}


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)
