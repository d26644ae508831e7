"""Anthropic's Message Batches API (`kind: anthropic_batch`): the requests go in one `POST /messages/batches`
(`requests: [{custom_id, params}]`, params as the Messages API takes them), the batch is polled
(`GET /messages/batches/{id}`: `processing_status` in_progress, canceling, ended) and its results read from its
`results_url` (JSONL: each line's `result.type` succeeded, errored, canceled or expired). Limits per batch:
100,000 requests, 256 MB (Anthropic's documented limits). `api_key_env` names the variable whose key goes in
`x-api-key`; the API version header is `anthropic-version: 2023-06-01`.

The chat messages the stages build are carried over as the Messages API wants them: system messages become the
top-level `system`, OpenAI-style `image_url` parts (data URLs) become base64 `image` blocks. The Messages API has
no grammar (constrained decoding), no seed and takes `temperature` in [0, 1]: a block with `grammar_param` is
refused, and judges parse free text as they do on any hosted API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import ConfigDict, model_validator

from curate.engines.base import Completion, Request
from curate.engines.batch_api import EXPIRED, BatchFields, Status, build_batch, provider_http
from curate.engines.cache import CachedEngine, ResponseCache
from curate.engines.openai_http import check
from curate.engines.spec import EngineSpec

API_VERSION = "2023-06-01"
#: errors of a request that may pass when asked again (Anthropic's error types)
TRANSIENT = {"api_error", "overloaded_error", "rate_limit_error", "timeout_error"}
FINISH = {"max_tokens": "length", "end_turn": "stop", "stop_sequence": "stop"}


class AnthropicBatchConfig(BatchFields):
    """Anthropic's Message Batches (base_url e.g. https://api.anthropic.com/v1): openai_http's fields, plus the
    batch's."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["anthropic_batch"] = "anthropic_batch"
    max_batch_requests: int = 100_000
    max_batch_bytes: int = 256_000_000

    @model_validator(mode="after")
    def _no_grammar(self) -> AnthropicBatchConfig:
        if self.grammar_param:
            raise ValueError("grammar_param: Anthropic's Messages API has no grammar (constrained decoding); drop "
                             "it (judges parse free text on this engine)")
        return self

    def capabilities(self) -> frozenset[str]:
        return frozenset({"streams", "batch"} | ({"images"} if self.images else set()))


def identity(cfg: AnthropicBatchConfig) -> dict[str, Any]:
    return {"kind": "anthropic", "base_url": cfg.base_url.rstrip("/"), "model": cfg.model}


def _part(part: dict) -> dict:
    """An OpenAI-style content part as a Messages API block."""
    if part.get("type") != "image_url":
        return part
    url = part["image_url"]["url"]
    if url.startswith("data:"):
        media, _, data = url[5:].partition(";base64,")
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def params(cfg: AnthropicBatchConfig, request: Request) -> dict[str, Any]:
    """The Messages API parameters of one request."""
    system = [m["content"] for m in request.messages if m["role"] == "system"]
    messages = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
                 else [_part(p) for p in m["content"]]} for m in request.messages if m["role"] != "system"]
    out: dict[str, Any] = {"model": cfg.model, "max_tokens": request.sampling.max_tokens, "messages": messages,
                           "temperature": request.sampling.temperature, **cfg.extra_body}
    if system:
        out["system"] = "\n\n".join(system)
    return out


class AnthropicBatches:
    """The Provider of engines/batch_api.py for Anthropic's Message Batches."""

    max_requests = 100_000
    max_bytes = 256_000_000

    def __init__(self, cfg: AnthropicBatchConfig):
        self.cfg = cfg
        self.http = provider_http(cfg, "x-api-key", **{"anthropic-version": API_VERSION})

    def line(self, key: str, request: Request) -> dict[str, Any]:
        return {"custom_id": key, "params": params(self.cfg, request)}

    def prepare(self, lines: list[dict]) -> None:
        return None  # the requests go in the create call itself

    def create(self, ref: str | None, lines: list[dict]) -> str:
        return self.http.call("POST", "/messages/batches", json={"requests": lines}).json()["id"]

    def find(self, ref: str) -> str | None:
        return None

    def status(self, batch_id: str) -> Status:
        raw = self.http.call("GET", f"/messages/batches/{batch_id}").json()
        word = raw.get("processing_status", "")
        counts = raw.get("request_counts") or {}
        detail = word + (" (" + ", ".join(f"{k} {v}" for k, v in counts.items() if v) + ")" if counts else "")
        return Status("ended" if word == "ended" else "running", detail, raw)

    def results(self, status: Status) -> Iterator[tuple[str, Completion | str]]:
        url = status.raw.get("results_url")
        if not url:
            return
        for line in self.http.call("GET", url).text.splitlines():
            if line.strip():
                yield self._answer(json.loads(line))

    def _answer(self, line: dict) -> tuple[str, Completion | str]:
        key, result = line.get("custom_id"), line.get("result") or {}
        kind = result.get("type")
        if kind == "succeeded":
            try:
                message = result["message"]
                usage = message.get("usage") or {}
                text = "".join(b.get("text", "") for b in message["content"] if b.get("type") == "text")
                return key, Completion(text=text, finish_reason=FINISH.get(message.get("stop_reason"), "stop"),
                                       prompt_tokens=int(usage.get("input_tokens") or 0),
                                       completion_tokens=int(usage.get("output_tokens") or 0))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                return key, Completion(text=None, error=f"malformed result: {type(exc).__name__}: {exc}",
                                       transient=True)
        if kind == "expired":
            return key, EXPIRED
        if kind == "errored":
            error = (result.get("error") or {}).get("error") or result.get("error") or {}
            return key, Completion(text=None, error=self.http.redact(f"{error.get('type')}: {error.get('message')}")
                                   [:300], transient=error.get("type") in TRANSIENT)
        return key, Completion(text=None, error=f"batch request {kind or 'without a result'}", transient=True)

    def cancel(self, batch_id: str) -> None:
        self.http.call("POST", f"/messages/batches/{batch_id}/cancel")


def build(cfg: AnthropicBatchConfig, cache: ResponseCache | None) -> CachedEngine:
    return build_batch(cfg, cache, identity(cfg), AnthropicBatches)


ENGINE = EngineSpec(kind="anthropic_batch", config=AnthropicBatchConfig, build=build, check=check,
                    capabilities={"streams", "images", "batch"})
