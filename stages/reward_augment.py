"""reward_augment: reward-conditioned relabeling (Reward-Augmented DPO). Each scored pair becomes two rows whose
prompt asks for a response of a goal score:

  goal = the chosen score     the order is kept: at that goal, chosen is still the better answer
  goal = the rejected score   chosen and rejected swap: asked for a response that scores that low, the rejected
                              response is the one that fits

so a model learns from the whole quality range instead of only "more is better". The goal instruction is a
template (`{score}`, `{max_score}`), put before the user's turn (`where: prompt`, kept by every export format)
or into the system prompt (`where: system`, for conversational exports). Judge scores are mapped linearly from
`judge_scale` to 0..`max_score`. A pair without both scores is dropped with the reason; so is the swapped row of
a pair whose two goals round to the same number (that goal cannot tell the answers apart).
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from curate.schemas.records import PAIR_ROW
from curate.schemas.rows import swap_sides
from curate.schemas.validate import quarantine_table
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec

TEMPLATE = "Generate a response that would receive an overall score of {score} out of {max_score}."


class Config(StageConfig):
    template: str = TEMPLATE
    #: the range of the scores in `chosen_score` / `rejected_score` (MT-Bench single: 1..10)
    judge_scale: tuple[float, float] = (1, 10)
    max_score: int = Field(10, ge=1)
    #: decimals of the goal score in the prompt
    digits: int = Field(0, ge=0, le=3)
    where: Literal["prompt", "system"] = "prompt"
    #: also keep each pair as it was (no goal), beside its two augmented rows
    keep_original: bool = False

    @model_validator(mode="after")
    def _check(self):
        low, high = self.judge_scale
        if not low < high:
            raise ValueError(f"judge_scale must be (low, high) with low < high, got {self.judge_scale}")
        if "{score}" not in self.template:
            raise ValueError("the template needs {score}")
        return self


def goal(score: float, cfg: Config) -> float:
    low, high = cfg.judge_scale
    clipped = min(max(score, low), high)
    return round((clipped - low) / (high - low) * cfg.max_score, cfg.digits)


def conditioned(row: dict, score: float, swap: bool, cfg: Config) -> dict:
    shown = int(score) if cfg.digits == 0 else score
    instruction = cfg.template.format(score=shown, max_score=cfg.max_score)
    out = dict(row, goal_score=score, augmented="goal=rejected" if swap else "goal=chosen")
    if cfg.where == "system":
        out["system"] = f"{row['system']}\n\n{instruction}" if row.get("system") else instruction
    else:
        out["prompt"] = f"{instruction}\n\n{row['prompt']}"
        messages = [dict(m) for m in row["messages"] or []]
        if messages:
            messages[-1]["content"] = f"{instruction}\n\n{messages[-1]['content']}"
        out["messages"] = messages
    return swap_sides(out) if swap else out


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    out, dropped, reasons = [], [], []
    sources_out = sources_dropped = 0
    for row in table.to_pylist():
        cs, rs = row.get("chosen_score"), row.get("rejected_score")
        if cs is None or rs is None:
            dropped.append(row)
            reasons.append("no chosen_score/rejected_score to condition on")
            sources_dropped += 1
            continue
        sources_out += 1
        if cfg.keep_original:
            out.append(row)
        gc, gr = goal(cs, cfg), goal(rs, cfg)
        out.append(conditioned(row, gc, False, cfg))
        if gr == gc:
            dropped.append({"prompt_id": row["prompt_id"], "chosen_id": row["chosen_id"]})
            reasons.append(f"swapped row: goals round to the same score {gc:g}")
        else:
            out.append(conditioned(row, gr, True, cfg))
    return StageResult(
        out=pa.Table.from_pylist(out, schema=PAIR_ROW),
        dropped=quarantine_table(dropped, reasons),
        out_sources=sources_out,
        dropped_sources=sources_dropped,
    )


STAGE = StageSpec(
    name="reward_augment",
    config=Config,
    reads=lambda cfg: {"prompt", "messages", "chosen", "rejected", "chosen_score", "rejected_score"},
    writes=lambda cfg: {"goal_score", "augmented"},
    doc="Reward-conditioned relabeling: each pair -> a goal=chosen row (order kept) and a goal=rejected row "
    "(swapped), the goal score written into the prompt.",
    process=process,
)
