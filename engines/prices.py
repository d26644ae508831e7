"""What model calls cost: a price per million tokens for each model, from the pipeline's own `prices:`, then the
packaged table (engines/prices.yaml, dated, with its source), then litellm's map where litellm is installed.

Tokens are the engines' own counts (a provider's `usage`; the local engines' tokenizers): cost is never guessed
from characters once a call has been made. A model on a local engine (llama.cpp, vLLM offline, transformers)
costs nothing per token; a served model with no price anywhere is *unpriced*: its tokens are shown, its cost is
not, and a budget cannot be kept on it (`curate validate` says so).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from curate.engines.base import Request

#: prompt characters per token where no tokenizer is at hand (English text with BPE tokenizers: ~4)
CHARS_PER_TOKEN = 4
#: tokens a vision encoder usually spends on one image (the data URL's length says nothing of it), and the most
#: the hosted APIs charge for one (OpenAI's high detail and Anthropic's largest image stay under it)
TOKENS_PER_IMAGE = 1000
MOST_TOKENS_PER_IMAGE = 2000
#: the most a chat template adds per message (role markers, separators) and per request
MOST_TEMPLATE_TOKENS = 16


class Price(BaseModel):
    """USD per million tokens. A batch price left out is half the list price (what OpenAI, Anthropic, Gemini
    and Mistral charge for their batch APIs); a cached-input price left out is the input price."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0)
    batch_input: float | None = Field(None, ge=0)
    batch_output: float | None = Field(None, ge=0)
    #: where the figure comes from (the packaged table's date and source, "pipeline", "litellm", "local")
    source: str = "pipeline"

    def rates(self, batch: bool) -> tuple[float, float]:
        """(input, output) USD per token."""
        if batch:
            return ((self.batch_input if self.batch_input is not None else self.input / 2) / 1e6,
                    (self.batch_output if self.batch_output is not None else self.output / 2) / 1e6)
        return self.input / 1e6, self.output / 1e6

    def cost(self, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float:
        rate_in, rate_out = self.rates(batch)
        return prompt_tokens * rate_in + completion_tokens * rate_out


LOCAL = Price(input=0, output=0, source="local")


@functools.lru_cache(maxsize=1)
def packaged() -> dict[str, Price]:
    import yaml

    data = yaml.safe_load((Path(__file__).with_name("prices.yaml")).read_text())
    source = f"curate's price table of {data['date']} ({data['source']})"
    return {m: Price(**v, source=source) for m, v in data["models"].items()}


def _litellm(model: str) -> Price | None:
    """litellm's price map entry for a model, when litellm is installed (it ships the map; no network)."""
    try:
        import litellm  # noqa: F401 - optional
    except ImportError:
        return None
    entry = litellm.model_cost.get(model) or litellm.model_cost.get(model.split("/")[-1])
    if not entry or entry.get("input_cost_per_token") is None:
        return None

    def per_m(key: str) -> float | None:
        return None if entry.get(key) is None else entry[key] * 1e6

    return Price(input=per_m("input_cost_per_token"), output=per_m("output_cost_per_token") or 0.0,
                 cached_input=per_m("cache_read_input_token_cost"),
                 batch_input=per_m("input_cost_per_token_batches"), batch_output=per_m("output_cost_per_token_batches"),
                 source="litellm's model_cost map")


def is_batch(cfg: Any) -> bool:
    """The engine sends its calls through a provider's batch API (priced at the batch price)."""
    return "batch" in cfg.capabilities()


def engine_price(name: str, cfg: Any, own: dict[str, Price]) -> Price | None:
    """The price of one engine block's calls: the pipeline's entry for the engine's name or its model, the
    packaged table, litellm's map; a local engine (no `base_url`) costs nothing; None: a served model with no
    price known."""
    model = getattr(cfg, "model", None)
    for key in (name, model):
        if key and key in own:
            return own[key]
    if not hasattr(cfg, "base_url"):
        return LOCAL
    if model in packaged():
        return packaged()[model]
    return _litellm(model) if model else None


def _prompt_parts(r: Request) -> tuple[str, int]:
    """The request's prompt text and its number of images."""
    texts, images = [], 0
    for m in r.messages:
        parts = m.get("content")
        for part in parts if isinstance(parts, list) else [{"type": "text", "text": parts or ""}]:
            if part.get("type") == "image_url":
                images += 1
            else:
                texts.append(str(part.get("text", "")))
    return "".join(texts), images


def estimated_tokens(r: Request) -> tuple[int, int]:
    """(prompt, completion) tokens a request will likely use, before it is sent: prompt characters /
    CHARS_PER_TOKEN plus TOKENS_PER_IMAGE an image, and `max_tokens`. For pacing and estimates, never for
    accounting (that reads the answer's usage)."""
    text, images = _prompt_parts(r)
    return -(-len(text) // CHARS_PER_TOKEN) + TOKENS_PER_IMAGE * images, r.sampling.max_tokens


def most_tokens(r: Request) -> tuple[int, int]:
    """(prompt, completion) tokens a request can use at most, for budgets: a byte-level tokenizer spends at most
    a token a UTF-8 byte, a chat template at most MOST_TEMPLATE_TOKENS a message, and the answer `max_tokens`."""
    text, images = _prompt_parts(r)
    return (len(text.encode()) + MOST_TEMPLATE_TOKENS * (len(r.messages) + 1) + MOST_TOKENS_PER_IMAGE * images,
            r.sampling.max_tokens)
