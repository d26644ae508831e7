"""Stages: one module per stage, each exporting `STAGE` (see stages/base.py for the contract)."""

from __future__ import annotations

from stages.base import StageSpec


def registry() -> dict[str, StageSpec]:
    from stages import export, generate, judge, load, pairs

    return {s.name: s for s in (load.STAGE, generate.STAGE, judge.STAGE, pairs.STAGE, export.STAGE)}
