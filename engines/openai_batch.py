"""OpenAI's Batch API (`kind: openai_batch`), and every server that speaks it: the requests go up as a JSONL file
(`POST /files`, purpose `batch`), a batch is created from it (`POST /batches`), polled (`GET /batches/{id}`:
validating, in_progress, finalizing, then completed, expired, cancelled or failed) and its output and error files
downloaded (`GET /files/{id}/content`). Each line's `custom_id` is the request's cache key, its body the same
chat completions body `openai_http` sends, so a pipeline moves between them by its `kind:` alone; they share the
response cache. Limits per batch file: 50,000 requests, 200 MB (OpenAI's documented limits).

The batching, journal and re-attachment live in engines/batch_api.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import ConfigDict

from curate.engines.base import Completion, Request
from curate.engines.batch_api import EXPIRED, BatchFields, Status, build_batch, provider_http
from curate.engines.cache import CachedEngine, ResponseCache
from curate.engines.openai_http import RETRY_STATUS, check, completion_of, identity, request_body
from curate.engines.spec import EngineSpec

#: the provider's words for a batch, as the engine reads them
STATES = {"validating": "running", "in_progress": "running", "finalizing": "running", "cancelling": "running",
          "completed": "ended", "expired": "expired", "cancelled": "cancelled", "failed": "failed"}


class OpenAIBatchConfig(BatchFields):
    """OpenAI's Batch API (or a server that speaks it): openai_http's fields, plus the batch's."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["openai_batch"] = "openai_batch"
    #: the endpoint every line of the batch file names
    endpoint: str = "/v1/chat/completions"

    def capabilities(self) -> frozenset[str]:
        return super().capabilities() | {"batch"}


class OpenAIBatches:
    """The Provider of engines/batch_api.py for OpenAI's Batch API."""

    max_requests = 50_000
    max_bytes = 200_000_000

    def __init__(self, cfg: OpenAIBatchConfig):
        self.cfg = cfg
        self.http = provider_http(cfg, "Authorization", "Bearer {}")

    def line(self, key: str, request: Request) -> dict[str, Any]:
        return {"custom_id": key, "method": "POST", "url": self.cfg.endpoint, "body": request_body(self.cfg, request)}

    def prepare(self, lines: list[dict]) -> str:
        data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        resp = self.http.call("POST", "/files", data={"purpose": "batch"},
                              files={"file": ("curate-batch.jsonl", data, "application/jsonl")})
        return resp.json()["id"]

    def create(self, ref: str | None, lines: list[dict]) -> str:
        resp = self.http.call("POST", "/batches", json={
            "input_file_id": ref, "endpoint": self.cfg.endpoint, "completion_window": self.cfg.completion_window,
            "metadata": {"created_by": "curate"}})
        return resp.json()["id"]

    def find(self, ref: str) -> str | None:
        after = None
        while True:
            query = {"limit": 100, **({"after": after} if after else {})}
            page = self.http.call("GET", "/batches", params=query).json()
            for batch in page.get("data") or []:
                if batch.get("input_file_id") == ref:
                    return batch["id"]
            if not page.get("has_more") or not page.get("data"):
                return None
            after = page["data"][-1]["id"]

    def status(self, batch_id: str) -> Status:
        raw = self.http.call("GET", f"/batches/{batch_id}").json()
        word = raw.get("status", "")
        errors = (raw.get("errors") or {}).get("data") or []
        detail = word if not errors else f"{word}: " + "; ".join(
            f"{e.get('code')}: {e.get('message')}" + (f" (line {e['line']})" if e.get("line") else "")
            for e in errors[:3])
        return Status(STATES.get(word, "running"), self.http.redact(detail), raw)

    def results(self, status: Status) -> Iterator[tuple[str, Completion | str]]:
        for file_id in (status.raw.get("output_file_id"), status.raw.get("error_file_id")):
            if not file_id:
                continue
            text = self.http.call("GET", f"/files/{file_id}/content").text
            for line in text.splitlines():
                if line.strip():
                    yield self._answer(json.loads(line))

    def _answer(self, line: dict) -> tuple[str, Completion | str]:
        key = line.get("custom_id")
        error = line.get("error")
        response = line.get("response") or {}
        code = response.get("status_code")
        if error and not response:  # no HTTP answer at all: the batch expired before it, or another reason
            if error.get("code") == "batch_expired":
                return key, EXPIRED
            return key, Completion(text=None, transient=True,
                                   error=self.http.redact(f"{error.get('code')}: {error.get('message')}")[:300])
        if code == 200:
            return key, completion_of(response.get("body"))
        body = json.dumps(response.get("body"), ensure_ascii=False)
        return key, Completion(text=None, error=self.http.redact(f"HTTP {code}: {body}")[:300],
                               transient=code in RETRY_STATUS)

    def cancel(self, batch_id: str) -> None:
        self.http.call("POST", f"/batches/{batch_id}/cancel")


def build(cfg: OpenAIBatchConfig, cache: ResponseCache | None) -> CachedEngine:
    # the same identity as openai_http: a server's answers are the same whichever way they were asked for
    return build_batch(cfg, cache, identity(cfg), OpenAIBatches)


ENGINE = EngineSpec(kind="openai_batch", config=OpenAIBatchConfig, build=build, check=check,
                    capabilities={"streams", "grammar", "images", "batch"})
