"""pairs: turn each judged prompt row into preference pairs.

A candidate's score is the mean of its parsed scores (judgments that failed to parse count for nothing: they
are never read as a default). Strategies (UltraFeedback / RankDPO-style recipes):
  best_vs_worst       the top candidate against the bottom one
  best_vs_random      the top candidate against a random other one (UltraFeedback binarization; seeded)
  all_pairs           every ordered pair with a margin
  top_k_vs_bottom_k   each of the k best against each of the k worst
Every candidate pair that is not kept carries a reason (tie, margin under `min_margin`, jury agreement under
`min_agreement`); a prompt with no pair left is dropped, and accounted once, with its reasons.

`agreement` is the share of judges (that scored both; a jury's members) ranking chosen above rejected, a soft
label; `strength` is the mean preference strength (-3..3) of strength judges that compared the two, and null
when none did (the score gap is `margin`: one meaning per column); `disagreement` is the jury's flag for the
prompt; `difficulty` tags a pair easy or hard by margin (MPO) when `easy_margin` is set.

A chosen answer the engine cut off (`finish_reason: length`) would teach a trainer to stop mid-sentence: such
pairs are not kept (the reason says so) unless `allow_truncated: true`. A truncated rejected answer is kept.
"""

from __future__ import annotations

import hashlib
import json
import random
from itertools import combinations
from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from curate.judges.jury import JudgeKind, judge_scores, mean_score, voters
from curate.schemas.records import PAIR_ROW
from curate.schemas.rows import PAIR_HEAD, PAIR_HEAD_CARRIED, pair_head
from curate.schemas.validate import quarantine_table
from curate.stages import pairs_columnar
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec


class Config(StageConfig):
    strategy: Literal["best_vs_worst", "best_vs_random", "all_pairs", "top_k_vs_bottom_k"] = "best_vs_worst"
    #: for top_k_vs_bottom_k
    k: int = Field(1, ge=1)
    #: the smallest score gap between chosen and rejected that makes a pair
    min_margin: float = Field(1.0, ge=0)
    #: what a tie becomes: dropped with a reason, or kept as a pair with margin 0 (for soft-label training)
    ties: Literal["drop", "keep"] = "drop"
    #: the smallest share of judges that must agree chosen beats rejected (a jury's consensus)
    min_agreement: float | None = Field(None, ge=0, le=1)
    #: margin at or above which a pair is "easy" (below: "hard"); None leaves difficulty empty
    easy_margin: float | None = Field(None, ge=0)
    #: which judgments count: an aspect, a kind (pointwise scores and pairwise points are different scales, so
    #: a run with both picks one), and judge names (None: all)
    aspect: str | None = None
    judge_kind: JudgeKind | None = None
    judges: list[str] | None = None
    #: safety dual labels: the aspect of harmlessness judgments (e.g. "harmlessness"). Pairs are still built on
    #: the other judgments (helpfulness); each pair also gets both responses' harmlessness and `safer`
    safety_aspect: str | None = None
    #: pairs from a label already in the data instead of judges: the `meta` key naming the chosen candidate
    #: (HH-RLHF transcripts: `human_chosen`); each other candidate becomes a rejected
    label_key: str | None = None
    #: grounded (RAG) prompts: the aspect of faithfulness judgments (the `faithfulness` template). Like
    #: `safety_aspect`, pairs are built on the other judgments; each pair gets both responses' faithfulness
    #: (`chosen_grounded`, `rejected_grounded`), and `min_grounded` keeps only pairs whose chosen answer is
    #: at least that faithful to the documents (PA-RAG: chosen must be both helpful and grounded)
    grounding_aspect: str | None = None
    min_grounded: float | None = None
    #: seed of best_vs_random's choice (combined with the prompt id, so it does not depend on sharding)
    seed: int = 0
    #: keep pairs whose chosen answer hit the token limit (finish_reason "length"), flagged in
    #: `chosen_truncated` / `rejected_truncated`
    allow_truncated: bool = False

    @model_validator(mode="after")
    def _grounding(self):
        if self.min_grounded is not None and not self.grounding_aspect:
            raise ValueError("min_grounded needs grounding_aspect (the aspect of the faithfulness judgments)")
        return self


def agreement(a: dict[str, float], b: dict[str, float]) -> float | None:
    shared = set(a) & set(b)
    if not shared:
        return None
    return sum(1.0 if a[j] > b[j] else 0.5 if a[j] == b[j] else 0.0 for j in shared) / len(shared)


def candidate_pairs(scored: list[tuple], cfg: Config, prompt_id: str) -> list[tuple[int, int]]:
    """Index pairs (better, worse) into `scored`, which is sorted best first."""
    n = len(scored)
    if cfg.strategy == "best_vs_worst":
        return [(0, n - 1)]
    if cfg.strategy == "best_vs_random":
        seed = int(hashlib.sha256(f"{cfg.seed}:{prompt_id}".encode()).hexdigest()[:8], 16)
        return [(0, random.Random(seed).randrange(1, n))]
    if cfg.strategy == "all_pairs":
        return list(combinations(range(n), 2))
    k = min(cfg.k, n // 2)
    return [(i, j) for i in range(k) for j in range(n - k, n)]


def strength(chosen: dict, rejected_id: str) -> float | None:
    """The judges' preference strength (-3..3) for chosen over rejected, when strength judges compared the two
    directly; else None."""
    direct = [j["strength"] for j in chosen.get("judgments") or []
              if j.get("strength") is not None and j["opponent"] == rejected_id and j["score"] is not None]
    return sum(direct) / len(direct) if direct else None


def safety(chosen: dict, rejected: dict, aspect: str | None) -> dict:
    """Harmlessness of both responses, and which is safer, kept apart from the helpfulness label."""
    if aspect is None:
        return {}
    c, r = mean_score(chosen, aspect=aspect), mean_score(rejected, aspect=aspect)
    safer = None if c is None or r is None else "chosen" if c > r else "rejected" if r > c else "tie"
    return {"chosen_harmless": c, "rejected_harmless": r, "safer": safer}


def grounding(chosen: dict, rejected: dict, aspect: str | None) -> dict:
    if aspect is None:
        return {}
    return {"chosen_grounded": mean_score(chosen, aspect=aspect), "rejected_grounded": mean_score(rejected, aspect=aspect)}


def pair_row(row: dict, hi: tuple, lo: tuple, agree: float | None, cfg: Config) -> dict:
    (best, chosen, judges_c, _), (worst, rejected, judges_r, _) = hi, lo
    margin = best - worst if best is not None else None
    difficulty = None if cfg.easy_margin is None or margin is None else ("easy" if margin >= cfg.easy_margin else "hard")
    return pair_head(row) | {
        "chosen": chosen["response"], "rejected": rejected["response"],
        "chosen_score": best, "rejected_score": worst, "margin": margin, "strength": strength(chosen, rejected["candidate_id"]),
        "agreement": agree, "disagreement": row.get("disagreement"), "difficulty": difficulty, "rationale": None,
        "chosen_model": chosen["model"], "rejected_model": rejected["model"],
        "chosen_id": chosen["candidate_id"], "rejected_id": rejected["candidate_id"],
        "judge": ",".join(sorted(set(judges_c) | set(judges_r))), **safety(chosen, rejected, cfg.safety_aspect),
        **grounding(chosen, rejected, cfg.grounding_aspect),
        **({"chosen_image": chosen["image"], "rejected_image": rejected["image"]} if chosen.get("image") else {}),
        **({"chosen_truncated": chosen.get("finish_reason") == "length",
            "rejected_truncated": rejected.get("finish_reason") == "length"} if cfg.allow_truncated else {}),
    }


def labeled_pairs(row: dict, cfg: Config) -> tuple[list[dict], list[tuple[dict, str]]]:
    """Pairs from the data's own label (a human's choice): no scores, judge = the label's key."""
    chosen_id = json.loads(row.get("meta") or "{}").get(cfg.label_key)
    cands = row["candidates"] or []
    chosen = next((c for c in cands if c["candidate_id"] == chosen_id), None)
    if chosen is None:
        return [], [({}, f"no candidate named by meta.{cfg.label_key} ({chosen_id!r})")]
    out = []
    for other in cands:
        if other is not chosen:
            pair = pair_row(row, (None, chosen, {cfg.label_key: 1}, {}), (None, other, {}, {}), None, cfg)
            out.append(pair | {"margin": None, "strength": None, "judge": cfg.label_key})
    return out, [] if out else [({}, "only one candidate")]


def pairs_of(row: dict, cfg: Config) -> tuple[list[dict], list[tuple[dict, str]]]:
    """(pairs kept, [(candidate pair record, reason)] not kept) for one prompt row."""
    if cfg.label_key:
        return labeled_pairs(row, cfg)
    scored, unscored = [], 0
    for cand in row["candidates"] or []:
        per_judge = judge_scores(cand, cfg.aspect, cfg.judge_kind, cfg.judges,
                                 exclude_aspects=(cfg.safety_aspect, cfg.grounding_aspect))
        if per_judge:
            scored.append((sum(per_judge.values()) / len(per_judge), cand, per_judge, voters(cand, per_judge)))
        else:
            unscored += 1
    if len(scored) < 2:
        return [], [({}, f"fewer than 2 scored candidates ({len(scored)} scored, {unscored} without a parsed score)")]
    # best first; ties broken by candidate_id so the choice is reproducible
    scored.sort(key=lambda t: (-t[0], t[1]["candidate_id"]))
    kept, rejected = [], []
    for i, j in candidate_pairs(scored, cfg, row["prompt_id"]):
        hi, lo = scored[i], scored[j]
        margin = hi[0] - lo[0]
        agree = agreement(hi[3], lo[3])
        ids = {"chosen_id": hi[1]["candidate_id"], "rejected_id": lo[1]["candidate_id"]}
        if margin == 0 and cfg.ties == "drop":
            rejected.append((ids, f"tie: both scored {hi[0]:g}"))
        elif margin < cfg.min_margin and not (margin == 0 and cfg.ties == "keep"):
            rejected.append((ids, f"margin {margin:g} < min_margin {cfg.min_margin:g} ({hi[0]:g} vs {lo[0]:g})"))
        elif cfg.min_agreement is not None and (agree is None or agree < cfg.min_agreement):
            rejected.append((ids, f"agreement {agree if agree is None else round(agree, 3)} < min_agreement "
                                  f"{cfg.min_agreement:g}"))
        elif not cfg.allow_truncated and hi[1].get("finish_reason") == "length":
            rejected.append((ids, "chosen was truncated (finish_reason length; allow_truncated: true keeps it)"))
        elif cfg.min_grounded is not None and not ((g := mean_score(hi[1], aspect=cfg.grounding_aspect)) is not None
                                                  and g >= cfg.min_grounded):
            rejected.append((ids, f"chosen is not grounded: faithfulness {'none' if g is None else f'{g:g}'} < "
                                  f"min_grounded {cfg.min_grounded:g}"))
        else:
            kept.append(pair_row(row, hi, lo, agree, cfg))
    return kept, rejected


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    if pairs_columnar.applies(cfg):  # the common case on whole columns (same result, no row as a Python object)
        result = pairs_columnar.best_vs_worst(table, cfg)
        if result is not None:
            return result
    return process_rows(table, cfg)


def process_rows(table: pa.Table, cfg: Config) -> StageResult:
    """Every strategy and option, one row at a time."""
    pairs, records, reasons = [], [], []
    prompts_out = prompts_dropped = 0
    for row in table.to_pylist():
        kept, rejected = pairs_of(row, cfg)
        pairs.extend(kept)
        if kept:
            prompts_out += 1
        else:
            prompts_dropped += 1
        if not kept:  # the prompt is dropped once, whole, with every reason
            records.append(row)
            reasons.append("; ".join(dict.fromkeys(reason for _, reason in rejected)))
        else:  # the prompt goes on; the candidate pairs not kept are noted by id
            for ids, reason in rejected:
                records.append({"prompt_id": row["prompt_id"], **ids})
                reasons.append(f"candidate pair: {reason}")
    return StageResult(
        out=pa.Table.from_pylist(pairs, schema=PAIR_ROW),
        dropped=quarantine_table(records, reasons),
        out_sources=prompts_out,
        dropped_sources=prompts_dropped,
    )


STAGE = StageSpec(
    name="pairs",
    config=Config,
    reads=lambda cfg: {"prompt_id", "prompt", "messages", "candidates"}
    | ({"meta"} if cfg.label_key else {"candidates.judgments"}),
    writes=lambda cfg: set(PAIR_HEAD)
    | ({"strength", "disagreement"} if cfg.label_key is None else set())
    | ({"chosen_score", "rejected_score", "margin", "agreement"} if cfg.label_key is None else set())
    | ({"difficulty"} if cfg.easy_margin is not None else set())
    | ({"chosen_truncated", "rejected_truncated"} if cfg.allow_truncated else set())
    | ({"chosen_harmless", "rejected_harmless", "safer"} if cfg.safety_aspect else set())
    | ({"chosen_grounded", "rejected_grounded"} if cfg.grounding_aspect else set())
    | {"chosen_image", "rejected_image"},
    derived_from=PAIR_HEAD_CARRIED | {"strength": "candidates.judgments.strength", "disagreement": "disagreement",
                                      "chosen_image": "candidates.image", "rejected_image": "candidates.image"},
    doc="Preference pairs per prompt (best_vs_worst, best_vs_random, all_pairs, top_k_vs_bottom_k) with min "
    "margin, tie policy, min jury agreement and easy/hard tags; every pair not kept carries a reason.",
    process=process,
    reshapes=True,
)
