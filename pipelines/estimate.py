"""`curate estimate`: how many model calls a pipeline makes, how many tokens and what they cost, before a run.

The pipeline's own stages build the requests, from the real prompts (`load` runs for real), so counts follow
every stage's logic (k candidates per model, a pairwise judge's position swap, a jury's members). No model is
called: each engine is replaced by one that answers from the response cache where the real run would (that answer,
its real tokens, and the cost it saves), and otherwise with a placeholder of `max_tokens` tokens, so a later stage
(a judge reading candidates) is sized on the longest answers the earlier one may give. Completion tokens and cost
are therefore upper bounds ("at most"); prompt tokens are counted with the model's own tokenizer and chat template
where the model file is local (llama.cpp), and at CHARS_PER_TOKEN characters a token plus the template's tokens
otherwise. A judge's re-asks of outputs that do not parse are not counted (each stage says how many there may be
at most per request). A placeholder never reaches a dataset: nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from curate.engines.base import Completion, Request
from curate.engines.prices import CHARS_PER_TOKEN, TOKENS_PER_IMAGE, engine_price, is_batch

#: tokens a chat template adds per message, and per request, where the model's own template is not at hand
TEMPLATE_TOKENS_PER_MESSAGE = 4
TEMPLATE_TOKENS = 3


def prompt_counter(cfg: Any) -> tuple[Callable[[Request], int], str]:
    """How to count a request's prompt tokens for this engine, and how it counts (for the table's note)."""
    if cfg.kind == "llama_cpp":
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from curate.engines.llama_cpp import resolve_model_path

        llm = Llama(model_path=str(resolve_model_path(cfg.model_path)), vocab_only=True, verbose=False)
        template = llm.metadata.get("tokenizer.chat_template")
        if template:
            fmt = Jinja2ChatFormatter(template, eos_token=llm.detokenize([llm.token_eos()]).decode(errors="ignore"),
                                      bos_token=llm.detokenize([llm.token_bos()]).decode(errors="ignore"))

            def count(r: Request) -> int:
                text = fmt(messages=r.messages).prompt
                return len(llm.tokenize(text.encode(), add_bos=False, special=True))

            return count, "the model's tokenizer and chat template"

    def approx(r: Request) -> int:
        chars = images = 0
        for m in r.messages:
            content = m.get("content")
            for part in content if isinstance(content, list) else [{"type": "text", "text": content or ""}]:
                images += part.get("type") == "image_url"
                chars += len(str(part.get("text", ""))) if part.get("type") != "image_url" else 0
        return (-(-chars // CHARS_PER_TOKEN) + TEMPLATE_TOKENS_PER_MESSAGE * len(r.messages) + TEMPLATE_TOKENS
                + TOKENS_PER_IMAGE * images)

    return approx, f"{CHARS_PER_TOKEN} characters a token"


class Tally:
    """What one engine would be asked: requests, the cached ones, prompt tokens, completion tokens at most."""

    def __init__(self) -> None:
        self.requests = self.cached = self.prompt_tokens = self.completion_tokens = 0
        self.cached_prompt_tokens = self.cached_completion_tokens = 0


class EstimatingEngine:
    """Stands in for a stage's engine: the cached answer where the real run would get one, else a placeholder
    of `max_tokens` tokens; counts both."""

    def __init__(self, real: Any, cache: Any, count: Callable[[Request], int]):
        self.real, self.cache, self.count, self.tally = real, cache, count, Tally()
        self.capabilities, self.window = real.capabilities, real.window
        self.identity, self.model_name = real.identity, real.model_name

    def complete(self, requests: list[Request]) -> list[Completion]:
        from curate.engines.cache import request_key

        out = []
        for r in requests:
            hit = self.cache.get(request_key(self.identity, r)) if self.cache is not None else None
            t = self.tally
            t.requests += 1
            if hit is not None:
                t.cached += 1
                t.cached_prompt_tokens += hit.prompt_tokens
                t.cached_completion_tokens += hit.completion_tokens
                out.append(hit)
                continue
            n = r.sampling.max_tokens
            t.prompt_tokens += self.count(r)
            t.completion_tokens += n
            out.append(Completion(text=" ".join(["word"] * n), finish_reason="length", prompt_tokens=0,
                                  completion_tokens=n))
        return out

    def thread_counts(self):
        from curate.engines.cache import CallCounts

        return CallCounts()


def estimate(pipeline) -> dict[str, Any]:
    """Every model stage's requests, tokens and cost per engine, and the totals (see the module's doc)."""
    from curate.engines.cache import ResponseCache
    from curate.engines.config import build_engine
    from curate.stages.base import StageContext

    cache = ResponseCache(pipeline.cache_dir)
    counters: dict[str, tuple[Callable[[Request], int], str]] = {}
    stages_out: list[dict[str, Any]] = []
    table: pa.Table | None = None
    for st in pipeline.stages:
        if st.spec.source is not None:
            table = pa.concat_tables([r.out for r in st.spec.source(st.config)], promote_options="permissive")
            stages_out.append({"id": st.id, "rows": table.num_rows, "engines": {}})
            continue
        names = st.spec.engines(st.config)
        engines = {}
        for n in names:
            if n not in counters:
                counters[n] = prompt_counter(pipeline.engines[n])
            engines[n] = EstimatingEngine(build_engine(pipeline.engines[n], None), cache, counters[n][0])
        ctx = StageContext(engines, cache)
        rows_in = table.num_rows
        # a judge asks again when an output does not parse (`retries`): placeholders never parse, so the estimate
        # counts first asks only and says how many re-asks there may be at most
        retries = getattr(st.config, "retries", 0) if "retries" in type(st.config).model_fields else 0
        cfg = st.config.model_copy(update={"retries": 0}) if retries else st.config
        result = st.spec.process(table, cfg, ctx) if rows_in else None
        if result is not None:
            table = result.out
        entry: dict[str, Any] = {"id": st.id, "rows": rows_in, "engines": {}, "reasks_per_request_at_most": retries}
        for n, e in engines.items():
            t = e.tally
            price = engine_price(n, pipeline.engines[n], pipeline.prices)
            batch = is_batch(pipeline.engines[n])
            cost = price.cost(t.prompt_tokens, t.completion_tokens, batch) if price else None
            entry["engines"][n] = {
                "model": getattr(pipeline.engines[n], "model", None) or pipeline.engines[n].kind,
                "requests": t.requests, "cached": t.cached, "prompt_tokens": t.prompt_tokens,
                "completion_tokens_at_most": t.completion_tokens, "counted_with": counters[n][1],
                "usd_at_most": cost,
                # the same calls at the list price and through a batch API, with no cache
                "list_usd": price.cost(t.prompt_tokens + t.cached_prompt_tokens,
                                       t.completion_tokens + t.cached_completion_tokens) if price else None,
                "batch_usd": price.cost(t.prompt_tokens + t.cached_prompt_tokens,
                                        t.completion_tokens + t.cached_completion_tokens, True) if price else None,
                "cache_saves_usd": price.cost(t.cached_prompt_tokens, t.cached_completion_tokens, batch)
                if price else None,
            }
        stages_out.append(entry)
    engines = [e for s in stages_out for e in s["engines"].values()]

    def total(key: str) -> float | int | None:
        values = [e[key] for e in engines]
        return None if any(v is None for v in values) else sum(values)

    return {"stages": stages_out, "requests": total("requests"), "cached": total("cached"),
            "prompt_tokens": total("prompt_tokens"), "completion_tokens_at_most": total("completion_tokens_at_most"),
            "usd_at_most": total("usd_at_most"), "list_usd": total("list_usd"), "batch_usd": total("batch_usd"),
            "cache_saves_usd": total("cache_saves_usd")}
