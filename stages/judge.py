"""judge: grade every candidate of every prompt as the template says: pointwise (a score per candidate, or one
per aspect; MT-Bench single-v1 by default, HelpSteer2, Prometheus absolute), listwise (all candidates in one
shuffled call; UltraFeedback's aspects) or pairwise (every pair of candidates, in both orders; MT-Bench pair-v2,
Prometheus relative, preference strength -3..3). Image templates (`image_*`) judge image candidates the same
way, with the images sent as content parts to an engine that reads them.

Judgments are appended to each candidate's `judgments` list, so several judge stages (other templates or
models) accumulate on the same candidates. The judge sees the final user turn as the question.
"""

from __future__ import annotations


import pyarrow as pa

from curate.engines.spec import SamplingConfig
from curate.judges.items import Judge, judge_items
from curate.judges.templates import load_template, template_path
from curate.stages.base import StageContext, StageResult, StageSpec
from curate.stages.judging import TemplateJudging, items, settle


class Config(TemplateJudging):
    engine: str = "default"
    #: the judge's label on its judgments (default "<model>:<template>"); name two judges apart when they
    #: share a model and template but differ in sampling
    name: str | None = None
    template: str = "mt_bench_single_v1"
    sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_tokens=512)

    def resolved_template(self):
        return load_template(template_path(self.template))

    def judge(self, engine) -> Judge:
        return Judge(engine, self.resolved_template(), self.sampling.sampling(), self.retries, self.grammar,
                     self.name, self.inconsistent, self.sampling.seed)


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    rows = table.to_pylist()
    judge = cfg.judge(ctx.engine(cfg.engine))
    return settle(rows, judge_items(judge, items(rows, cfg, images=judge.template.images)), "judge")


STAGE = StageSpec(
    name="judge",
    config=Config,
    reads=lambda cfg: cfg.reads(images=cfg.resolved_template().images),
    writes=lambda cfg: {"candidates.judgments", "candidates.judgments.score", "candidates.judgments.parse_ok"}
    | ({"candidates.judgments.strength"} if cfg.resolved_template().parser == "strength_brackets" else set()),
    doc="Grade candidates: pointwise (MT-Bench single-v1 by default, HelpSteer2 attributes, Prometheus "
    "absolute), listwise (UltraFeedback aspects, shuffled), or pairwise with position swap (MT-Bench pair-v2, "
    "Prometheus relative, strength -3..3); unparsable outputs are kept with parse_ok=false, never given a score.",
    process=process,
    engines=lambda cfg: [cfg.engine],
    needs=lambda cfg, engine: frozenset({"images"}) if cfg.resolved_template().images else frozenset(),
)
