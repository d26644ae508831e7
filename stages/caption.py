"""caption: give each image pair a caption per image, as DCPO (Dual Caption Preference Optimization) trains
diffusion models on: the preferred image keeps a caption that fits it, the less-preferred image gets its own.

  perturb  a text model rewrites the prompt into a caption of the less-preferred image, changing it as much as
           `level` says (weak: one detail; medium: a few attributes; strong: the subject or the scene), as in
           DCPO's perturbation method; the chosen image keeps the prompt
  caption  a vision-language model describes each image of the pair (an engine with the `images` capability:
           `vllm serve` a VLM, llama.cpp with an `mmproj`, a hosted API)
  hybrid   the vision model captions the less-preferred image, then the text model perturbs that caption; the
           chosen image keeps the prompt

Writes `chosen_caption` and `rejected_caption`. A caption that comes back empty, or equal to its prompt (so the
pair would teach nothing), drops the pair with the reason; an engine failure quarantines it. Captions are
whatever the models wrote: their quality is the models', and is not measured here.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa

from curate.engines.base import Request, with_images
from curate.engines.spec import SamplingConfig
from curate.schemas.images import data_url
from curate.schemas.records import PAIR_ROW
from curate.schemas.validate import quarantine_table
from curate.stages.base import StageConfig, StageContext, StageResult, StageSpec

LEVELS = {
    "weak": "Change exactly one small detail (a color, a count, or one attribute of one object); keep everything "
            "else word for word.",
    "medium": "Change two or three attributes or objects (colors, materials, positions, counts), so the description "
              "no longer fits the original picture; keep the subject.",
    "strong": "Change the main subject or the scene, so the description shows clearly different content.",
}
PERTURB = ("Rewrite this image description so that it describes a different image. {level}\n"
           "Answer with the rewritten description only, on one line.\n\nDescription: {text}")
DESCRIBE = "Describe this image in one sentence, as a prompt for a text-to-image model would."


class Config(StageConfig):
    method: Literal["perturb", "caption", "hybrid"] = "perturb"
    #: the text model that perturbs (perturb, hybrid)
    engine: str = "default"
    #: the vision-language model that describes images (caption, hybrid); default: `engine`
    vision_engine: str | None = None
    level: Literal["weak", "medium", "strong"] = "medium"
    sampling: SamplingConfig = SamplingConfig(temperature=0.7, max_tokens=96)
    #: the instruction the vision model gets with each image
    describe: str = DESCRIBE

    def vision(self) -> str:
        return self.vision_engine or self.engine


def _same(a: str, b: str) -> bool:
    return " ".join(a.casefold().split()) == " ".join(b.casefold().split())


def _describe(cfg: Config, url: str) -> Request:
    return Request(with_images([{"role": "user", "content": cfg.describe}], [url]), cfg.sampling.sampling())


def _perturb(cfg: Config, text: str) -> Request:
    body = PERTURB.format(level=LEVELS[cfg.level], text=text)
    return Request([{"role": "user", "content": body}], cfg.sampling.sampling())


def process(table: pa.Table, cfg: Config, ctx: StageContext) -> StageResult:
    rows = table.to_pylist()
    failed: dict[int, str] = {}
    dropped: dict[int, str] = {}

    def ask(engine: str, requests: dict[int, Request], what: str) -> dict[int, str]:
        """Each live row's answer text; failures and empty answers take the row out with the reason."""
        live = [r for r in requests if r not in failed and r not in dropped]
        got = {}
        for r, comp in zip(live, ctx.engine(engine).complete([requests[r] for r in live]), strict=True):
            text = (comp.text or "").strip()
            if not comp.ok:
                failed[r] = f"{what}: {comp.error}"
            elif not text:
                dropped[r] = f"{what}: the model returned an empty caption"
            else:
                got[r] = text
        return got

    def need(side: str) -> dict[int, str]:
        """Each live row's image of one side as a data URL, encoded once; a missing image, or a file changed or
        gone since loading, quarantines its row with the reason."""
        urls = {}
        for r, row in enumerate(rows):
            if row.get(f"{side}_image") is None:
                failed[r] = f"{side}_image is missing: captioning needs image pairs (load's `images`)"
            elif r not in failed:
                try:
                    urls[r] = data_url(row[f"{side}_image"])
                except (OSError, ValueError) as exc:
                    failed[r] = f"{side}_image: {exc}"
        return urls

    if cfg.method == "caption":
        chosen_urls, rejected_urls = need("chosen"), need("rejected")
        chosen = ask(cfg.vision(), {r: _describe(cfg, u) for r, u in chosen_urls.items()}, "chosen caption")
        rejected = ask(cfg.vision(), {r: _describe(cfg, u) for r, u in rejected_urls.items()}, "rejected caption")
    else:
        chosen = {r: row["prompt"] for r, row in enumerate(rows)}
        source = {r: row["prompt"] for r, row in enumerate(rows)}
        if cfg.method == "hybrid":
            source = ask(cfg.vision(), {r: _describe(cfg, u) for r, u in need("rejected").items()},
                         "rejected image's caption")
        rejected = ask(cfg.engine, {r: _perturb(cfg, text) for r, text in source.items()}, "perturbed caption")
    for r, row in enumerate(rows):
        if r in failed or r in dropped:
            continue
        if _same(rejected[r], row["prompt"]) or _same(rejected[r], chosen[r]):
            dropped[r] = "the rejected image's caption equals the prompt (nothing to learn from the pair)"
        elif cfg.method == "caption" and _same(chosen[r], row["prompt"]):
            dropped[r] = "the chosen image's caption equals the prompt"
        else:
            row["chosen_caption"], row["rejected_caption"] = chosen[r], rejected[r]
    good = [row for r, row in enumerate(rows) if r not in failed and r not in dropped]
    return StageResult(
        out=pa.Table.from_pylist(good, schema=PAIR_ROW),
        dropped=quarantine_table([rows[r] for r in sorted(dropped)], [dropped[r] for r in sorted(dropped)]),
        quarantined=quarantine_table([rows[r] for r in sorted(failed)],
                                     [f"caption call failed: {failed[r]}" for r in sorted(failed)]),
    )


def _engines(cfg: Config) -> list[str]:
    return sorted({cfg.engine} if cfg.method == "perturb" else {cfg.vision()} | ({cfg.engine} if cfg.method == "hybrid" else set()))


def _needs(cfg: Config, engine: str) -> frozenset[str]:
    """The vision engine must read images; the text engine of perturb and hybrid need not."""
    return frozenset({"images"}) if cfg.method != "perturb" and engine == cfg.vision() else frozenset()


STAGE = StageSpec(
    name="caption",
    config=Config,
    reads=lambda cfg: {"prompt"} | ({"chosen_image", "rejected_image"} if cfg.method != "perturb" else set()),
    writes=lambda cfg: {"chosen_caption", "rejected_caption"},
    doc="DCPO captions for image pairs: perturb (a text model rewrites the prompt for the less-preferred image, "
    "weak/medium/strong), caption (a VLM describes each image) or hybrid; empty or unchanged captions are dropped.",
    process=process,
    engines=_engines,
    needs=_needs,
)
