"""reward_model: score every candidate with a sequence-classification reward model (a local Hugging Face folder:
Skywork-Reward-V2, ArmoRM-style single-output models, one trained with TRL's RewardTrainer; or one served behind
vLLM's /classify endpoint), as distilabel does
with its reward-model scorer and Skywork-Reward-V2 mixes reward models with human and LLM judgment.

Each candidate gets one ordinary judgment (kind `reward_model`, aspect `reward`, `score` = the model's logit for the
conversation the answering model saw plus the response), so `pairs`, `rank`, `jury` (a reward model and LLM
judges in one jury: use `method: majority` or `borda`, which are scale-free) and the run's judge statistics use
it unchanged. A conversation longer than `max_length` gets a judgment with no score and the reason (never a
default). The model loads once per worker and stays for the stage.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from curate.schemas.records import PROMPT_ROW_WITH_CANDIDATES
from curate.schemas.rows import chat
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec, existing_path


class Endpoint(StageConfig):
    """A served reward model (vLLM's /classify, chat form)."""

    #: the server's root, e.g. http://127.0.0.1:8000 (vLLM serves /classify beside /v1)
    base_url: str = Field(pattern=r"^https?://")
    #: the served model's name
    model: str
    #: the NAME of the environment variable holding the API key; keys never go in YAML
    api_key_env: str | None = None
    concurrency: int = Field(8, ge=1)
    max_retries: int = Field(3, ge=0)


class Config(StageConfig):
    #: a local Hugging Face folder with a *ForSequenceClassification model (relative to the pipeline YAML)
    model: Path | None = None
    #: or a served reward model (instead of `model`)
    endpoint: Endpoint | None = None
    #: the judge's label on its judgments (default "<folder name>:reward")
    name: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    #: (conversation, response) pairs per forward pass
    batch_size: int = Field(8, ge=1)
    #: longer conversations get no score (with the reason) instead of being cut
    max_length: int = Field(4096, ge=16)

    _exists = field_validator("model")(existing_path)

    @field_validator("model")
    @classmethod
    def _is_reward_model(cls, value: Path | None) -> Path | None:
        from curate.engines.base import EngineUnavailable
        from curate.engines.reward_model import check_available

        if value is None:
            return value
        try:
            check_available(str(value))
        except EngineUnavailable as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_model(self):
        if (self.model is None) == (self.endpoint is None):
            raise ValueError("give the reward model as `model` (a local folder) or `endpoint` (a served one)")
        if self.endpoint and self.endpoint.api_key_env and not os.environ.get(self.endpoint.api_key_env):
            raise ValueError(f"endpoint.api_key_env: the variable {self.endpoint.api_key_env} is not set")
        return self


def model_of(cfg: Config, state: dict):
    """The reward model, loaded once per worker (it outlives the shard)."""
    from curate.engines.reward_model import RewardModel, ServedRewardModel

    key = ("reward_model", str(cfg.model), cfg.endpoint, cfg.device, cfg.dtype)
    if key not in state:
        if cfg.endpoint is not None:
            e = cfg.endpoint
            state[key] = ServedRewardModel(e.base_url, e.model, os.environ.get(e.api_key_env or "") or None,
                                           e.concurrency, e.max_retries)
        else:
            state[key] = RewardModel(str(cfg.model), cfg.device, cfg.dtype, cfg.batch_size, cfg.max_length)
    return state[key]


def judge_name(cfg: Config, model) -> str:
    return cfg.name or f"{model.name}:reward_model"


def identity(cfg: Config) -> dict:
    """What a score depends on besides its input: the cache key's model part (a local folder by its config and
    weights' sizes, as the transformers engine names it)."""
    if cfg.endpoint is not None:
        return {"kind": "reward_http", "base_url": cfg.endpoint.base_url.rstrip("/"), "model": cfg.endpoint.model}
    from curate.engines.spec import model_identity

    return {"kind": "reward_model", "model": model_identity(str(cfg.model)), "max_length": cfg.max_length}


def score(cfg: Config, model, convs: list[list[dict]], answers: list[list[str]], calls=None) -> list[list[dict]]:
    """Per conversation, one judgment per answer: the reward model's score, or none with the reason (a
    conversation over `max_length`). With `calls` (the stage context's), scores come from the response cache
    where it has them, and new ones are stored. `curate judge-eval` scores its pairs through here too."""
    from curate.engines.reward_model import RewardScore

    where = [(n, a) for n, ans in enumerate(answers) for a in range(len(ans))]
    items = [[convs[n], answers[n][a]] for n, a in where]
    if calls is None:
        scores = model.score([tuple(i) for i in items])
    else:
        scores = calls.map(identity(cfg), items, lambda todo: model.score([tuple(i) for i in todo]),
                           encode=lambda s: s.score, decode=RewardScore, keep=lambda s: s.error is None)
    out: list[list[dict]] = [[] for _ in answers]
    for (n, _), s in zip(where, scores, strict=True):
        out[n].append({"judge": judge_name(cfg, model), "kind": "reward_model", "aspect": "reward", "score": s.score,
                       "verdict": None, "feedback": None, "position": None, "opponent": None,
                       "parse_ok": s.error is None, "error": s.error, "strength": None, "judge_model": model.name})
    return out


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    model = model_of(cfg, ctx.state)
    rows = table.to_pylist()
    judged = score(cfg, model, [chat(row) for row in rows], [[c["response"] for c in row["candidates"] or []]
                                                             for row in rows], ctx.calls)
    stats = {"human_pairs": 0.0, "human_agree": 0.0}
    for row, judgments in zip(rows, judged, strict=True):
        for cand, j in zip(row["candidates"] or [], judgments, strict=True):
            cand["judgments"] = list(cand.get("judgments") or []) + [j]
        # rows with a human's choice (HH-RLHF transcripts): does the reward model agree?
        chosen = json.loads(row.get("meta") or "{}").get("human_chosen")
        mine = {c["candidate_id"]: j["score"] for c, j in zip(row["candidates"] or [], judgments)}
        if chosen in mine and len(mine) == 2 and None not in mine.values():
            (other,) = [v for k, v in mine.items() if k != chosen]
            stats["human_pairs"] += 1
            stats["human_agree"] += float(mine[chosen] > other) + 0.5 * float(mine[chosen] == other)
    return StageResult(out=pa.Table.from_pylist(rows, schema=PROMPT_ROW_WITH_CANDIDATES), stats=stats)


def summarize(stats: dict[str, float]) -> dict[str, float]:
    """On prompts with a human's choice between two candidates: how often the reward model scores the human's
    choice higher (ties count half), beside chance."""
    if not stats.get("human_pairs"):
        return {}
    return {"human_ranking_accuracy": stats["human_agree"] / stats["human_pairs"], "chance": 0.5,
            "human_pairs": int(stats["human_pairs"])}


STAGE = StageSpec(
    name="reward_model",
    config=Config,
    reads=lambda cfg: {"messages", "system", "candidates", "candidates.response"},
    writes=lambda cfg: {"candidates.judgments", "candidates.judgments.score", "candidates.judgments.parse_ok"},
    doc="Score every candidate with a local sequence-classification reward model (transformers, CPU or GPU, "
    "batched); the scores are ordinary judgments (kind reward_model) for pairs, rank, jury and judge statistics.",
    process=process,
    keeps_model=True,
    summarize=summarize,
)
