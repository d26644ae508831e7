"""refine: critique-and-revise pairs. For each prompt, a model critiques one candidate (the lowest-scored when
judged, else the first) and rewrites it to fix what the critique found; a pairwise judge then compares the
revision with the original in both orders. Only a revision the judge prefers becomes `chosen` against the
original (`rejected`); the pair keeps the `critique` and the `edit_distance` (0 identical .. 1 nothing shared,
by characters), so pairs that differ only cosmetically can be filtered (`min_edit_distance`). A revision the
judge does not confirm, or a cosmetic one, is dropped with the reason.
"""

from __future__ import annotations

import difflib

import pyarrow as pa
from pydantic import Field

from curate.engines.base import Request
from curate.engines.spec import SamplingConfig
from curate.judges.jury import mean_score
from curate.judges.pairwise import compare
from curate.judges.templates import load_template, template_path
from curate.schemas.records import PAIR_ROW
from curate.schemas.validate import quarantine_table
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec, fixed
from curate.schemas.rows import chat
from curate.schemas.rows import PAIR_HEAD, PAIR_HEAD_CARRIED, pair_head

CRITIQUE = ("Here is a response to the user's last message:\n\n[Response]\n{response}\n\n"
            "List the response's most important problems (errors, missing parts, unclear wording) in a few short "
            "bullet points. Do not rewrite it.")
REVISE = ("[Response]\n{response}\n\n[Critique]\n{critique}\n\n"
          "Rewrite the response so that it fixes the problems in the critique. Reply with the new response only.")


class Config(StageConfig):
    engine: str = "default"
    sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_tokens=256)
    critique_prompt: str = CRITIQUE
    revise_prompt: str = REVISE
    #: the judge that must confirm the revision is better (both orders)
    judge_engine: str = "default"
    judge_template: str = "mt_bench_pair_v2"
    judge_sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_tokens=256)
    #: revisions closer to the original than this are cosmetic and dropped
    min_edit_distance: float = Field(0.05, ge=0, le=1)


def edit_distance(a: str, b: str) -> float:
    return 1.0 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def _target(row: dict) -> dict | None:
    cands = row.get("candidates") or []
    scored = [(m, c) for c in cands if (m := mean_score(c)) is not None]
    if scored:
        return min(scored, key=lambda t: (t[0], t[1]["candidate_id"]))[1]
    return cands[0] if cands else None


def _ask(engine, rows_and_prompts: list[tuple[dict, str]], sampling) -> list:
    reqs = [Request(chat(row) + [{"role": "user", "content": prompt}], sampling) for row, prompt in rows_and_prompts]
    return engine.complete(reqs)


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    engine, judge = ctx.engine(cfg.engine), ctx.engine(cfg.judge_engine)
    sampling = cfg.sampling.sampling()
    rows = table.to_pylist()
    dropped, reasons, bad, errors = [], [], [], []
    live = []
    for row in rows:
        target = _target(row)
        if target is None:
            dropped.append(row)
            reasons.append("no candidate to refine")
        else:
            live.append((row, target))
    critiques = _ask(engine, [(r, cfg.critique_prompt.format(response=t["response"])) for r, t in live], sampling)
    step = []
    for (row, target), comp in zip(live, critiques, strict=True):
        if comp.ok and comp.text.strip():
            step.append((row, target, comp.text.strip()))
        else:
            bad.append(row)
            errors.append(f"critique failed: {comp.error or 'empty critique'}")
    revisions = _ask(engine, [(r, cfg.revise_prompt.format(response=t["response"], critique=c)) for r, t, c in step],
                     sampling)
    judged = []
    for (row, target, critique), comp in zip(step, revisions, strict=True):
        text = (comp.text or "").strip()
        if not comp.ok or not text:
            bad.append(row)
            errors.append(f"revision failed: {comp.error or 'empty revision'}")
            continue
        distance = edit_distance(target["response"], text)
        if distance < cfg.min_edit_distance:
            dropped.append(row)
            reasons.append(f"cosmetic revision: edit distance {distance:.3f} < {cfg.min_edit_distance:g}")
            continue
        judged.append((row, target, critique, text, distance))
    template = load_template(template_path(cfg.judge_template))
    items = [(row["prompt"], text, target["response"], "revision", target["candidate_id"], {})
             for row, target, _, text, _ in judged]
    verdicts = compare(judge, template, items, cfg.judge_sampling.sampling(), 1, True) if items else []
    out = []
    for (row, target, critique, text, distance), res in zip(judged, verdicts, strict=True):
        if not isinstance(res, tuple):
            bad.append(row)
            errors.append(f"judge call failed: {res.error}")
            continue
        scores = [j["score"] for j in res[0]]
        if any(s is None for s in scores) or sum(scores) / 2 <= 0.5:
            dropped.append(row)
            shown = "no parsable verdict" if any(s is None for s in scores) else f"revision scored {sum(scores) / 2:g}"
            reasons.append(f"the judge did not confirm the revision ({shown}; both orders)")
            continue
        out.append(pair_head(row) | {
            "chosen": text, "rejected": target["response"],
            "chosen_score": sum(scores) / 2, "rejected_score": 1 - sum(scores) / 2,
            "chosen_model": f"{engine.model_name}:refine", "rejected_model": target["model"],
            "chosen_id": f"{target['candidate_id']}:refined", "rejected_id": target["candidate_id"],
            "judge": f"{judge.model_name}:{template.name}", "critique": critique, "edit_distance": distance,
        })
    return StageResult(out=pa.Table.from_pylist(out, schema=PAIR_ROW),
                       dropped=quarantine_table(dropped, reasons),
                       quarantined=quarantine_table(bad, errors))


STAGE = StageSpec(
    name="refine",
    config=Config,
    reads=fixed("prompt_id", "prompt", "messages", "candidates", "candidates.response"),
    writes=lambda cfg: set(PAIR_HEAD) | {"chosen_score", "rejected_score", "critique", "edit_distance"},
    derived_from=PAIR_HEAD_CARRIED,
    doc="Critique-and-revise pairs: a model critiques and rewrites a candidate; the revision is chosen against "
    "the original only when a pairwise judge (both orders) prefers it; keeps the critique and edit distance.",
    process=process,
    reshapes=True,
    engines=lambda cfg: sorted({cfg.engine, cfg.judge_engine}),
)
