"""Stages: one module per stage, each exporting `STAGE` (see stages/base.py for the contract)."""

from __future__ import annotations

from curate.stages.base import StageSpec


def registry() -> dict[str, StageSpec]:
    from curate.stages import (caption, debate, decontaminate, dedup, export, feedback_mine, filter, generate, judge, jury, load,
                        pairs, rank, rationale, reference_margin, refine, retrieval_pairs, reward_augment,
                        reward_model)

    stages = (load, generate, judge, reward_model, jury, debate, pairs, rank, rationale, reward_augment, retrieval_pairs,
              reference_margin, refine, feedback_mine, caption, filter, dedup, decontaminate, export)
    return {m.STAGE.name: m.STAGE for m in stages}
