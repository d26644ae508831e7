"""OpenAI-compatible HTTP engine: vLLM serve, llama.cpp's server, hosted APIs.

Requests go out concurrently (an asyncio semaphore of `concurrency`), with connect/read timeouts, and are retried
on 429, 5xx and connection errors with exponential backoff and jitter, honoring `Retry-After`. A request that
still fails comes back as a failed Completion carrying the error, so the stage quarantines its row: nothing is
lost and nothing is invented. The API key is read from the environment variable the YAML names
(`api_key_env`); it is sent in the Authorization header and never logged, stored or put in an error message.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from typing import Any

from engines.base import Completion, EngineUnavailable, Request

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class OpenAIHTTPEngine:
    def __init__(self, cfg):
        self.cfg = cfg
        self.identity = {"kind": "openai_http", "base_url": cfg.base_url.rstrip("/"), "model": cfg.model}
        self.model_name = cfg.model
        self._key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if cfg.api_key_env and not self._key:
            raise EngineUnavailable(f"environment variable {cfg.api_key_env} (api_key_env) is not set")
        self.retries_done = 0

    def complete(self, requests: list[Request]) -> list[Completion]:
        return asyncio.run(self._all(requests))

    async def _all(self, requests: list[Request]) -> list[Completion]:
        import httpx

        cfg = self.cfg
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        timeout = httpx.Timeout(cfg.read_timeout, connect=cfg.connect_timeout)
        sem = asyncio.Semaphore(cfg.concurrency)
        async with httpx.AsyncClient(base_url=cfg.base_url.rstrip("/"), headers=headers, timeout=timeout) as client:
            return list(await asyncio.gather(*(self._one(client, sem, r) for r in requests)))

    def _body(self, r: Request) -> dict[str, Any]:
        s = r.sampling
        body: dict[str, Any] = {"model": self.cfg.model, "messages": r.messages, "temperature": s.temperature,
                                "top_p": s.top_p, "max_tokens": s.max_tokens, "seed": s.seed, **self.cfg.extra_body}
        if r.grammar is not None and self.cfg.grammar_param:
            body[self.cfg.grammar_param] = r.grammar
        return body

    async def _one(self, client, sem: asyncio.Semaphore, r: Request) -> Completion:
        import httpx

        cfg = self.cfg
        last = ""
        for attempt in range(cfg.max_retries + 1):
            wait = None
            async with sem:
                try:
                    resp = await client.post("/chat/completions", json=self._body(r))
                except httpx.TransportError as exc:  # connect errors, timeouts, dropped connections
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if resp.status_code == 200:
                        return self._completion(resp)
                    last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                    if resp.status_code not in RETRY_STATUS:
                        return Completion(text=None, error=last)
                    wait = retry_after(resp.headers.get("retry-after"))
            if attempt == cfg.max_retries:
                break
            self.retries_done += 1
            backoff = min(cfg.backoff_max, cfg.backoff_base * 2 ** attempt) * (0.5 + random.random())
            await asyncio.sleep(max(backoff, wait or 0.0))
        return Completion(text=None, error=f"{last} (after {cfg.max_retries + 1} attempts)")

    @staticmethod
    def _completion(resp) -> Completion:
        try:
            data = resp.json()
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return Completion(text=choice["message"].get("content") or "", finish_reason=choice.get("finish_reason"),
                              prompt_tokens=int(usage.get("prompt_tokens") or 0),
                              completion_tokens=int(usage.get("completion_tokens") or 0))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return Completion(text=None, error=f"malformed response: {type(exc).__name__}: {exc}")
