"""OpenAI-compatible HTTP engine: vLLM serve, llama.cpp's server, hosted APIs.

One request stream per engine: a single event loop in a background thread and one long-lived `httpx.AsyncClient`
whose pool keeps `concurrency` connections alive. Every caller (the shards and batches a worker runs in threads)
submits into the same window of `concurrency` requests in flight, so no batch waits for the slowest request of
another and no request pays a new TCP (or TLS) handshake. Completions come back as each one finishes (`stream`),
so the response cache stores an answer the moment it arrives.

Requests are retried on 429, 5xx and connection errors with exponential backoff and jitter, honoring
`Retry-After`; a 429 pauses the whole stream, not just the request that got it, and so does an answer whose
rate-limit headers (OpenAI's `x-ratelimit-*`, Anthropic's `anthropic-ratelimit-*`) say the window is spent. Optional budgets
(`requests_per_minute`, `tokens_per_minute`) pace the stream. A request that still fails comes back as a failed
Completion carrying the error, so the stage quarantines its row: nothing is lost and nothing is invented. A failure
that may pass (a timeout, 5xx or 429 after every retry, a garbled reply) is marked transient: the next run asks
again; a request the server rejects (400, 422: too long, malformed) is a row error and stays quarantined. The API
key is read from the environment variable the YAML names (`api_key_env`); it is sent in the Authorization header
and never logged, stored or put in an error message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import ConfigDict, Field

from curate.engines.base import Completion, EngineError, EngineUnavailable, Request
from curate.engines.cache import CachedEngine, ResponseCache
from curate.engines.prices import estimated_tokens
from curate.engines.spec import EngineBlock, EngineSpec

#: connections per httpx pool (see `_open`)
POOL_CONNECTIONS = 8
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
#: answers that no request can get past: the engine is misconfigured, not the row
FATAL_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not found (a wrong base_url or model name?)"}


class OpenAIHTTPConfig(EngineBlock):
    """Any OpenAI-compatible chat completions server (vLLM serve, llama.cpp server, hosted APIs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["openai_http"] = "openai_http"
    #: e.g. http://127.0.0.1:8000/v1
    base_url: str = Field(pattern=r"^https?://")
    model: str
    #: the NAME of the environment variable holding the API key; keys never go in YAML
    api_key_env: str | None = None
    #: extra request headers (e.g. OpenRouter's HTTP-Referer); credentials are refused here
    headers: dict[str, str] = Field(default_factory=dict)
    #: headers whose values come from environment variables, by NAME (e.g. {x-api-key: ANTHROPIC_API_KEY})
    headers_env: dict[str, str] = Field(default_factory=dict)
    concurrency: int = Field(8, ge=1)
    #: on 429s, fewer requests in flight (halved per 429, then back up by one per window of answers), never
    #: more than `concurrency`; off: always `concurrency`, each 429 only pausing the stream
    adaptive_concurrency: bool = True
    connect_timeout: float = Field(10, gt=0)
    read_timeout: float = Field(300, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_base: float = Field(0.5, ge=0)
    backoff_max: float = Field(30, ge=0)
    #: the request field that carries a GBNF grammar (llama.cpp server: "grammar"); None sends free text
    grammar_param: str | None = None
    #: extra fields merged into every request body (e.g. vLLM's structured-output options)
    extra_body: dict[str, Any] = Field(default_factory=dict)
    #: optional budgets that pace the whole request stream (a hosted API's rate limits)
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    #: the served model reads images (a vision-language model: `vllm serve Qwen/Qwen2.5-VL-3B-Instruct`); they
    #: are sent as OpenAI-style `image_url` content parts holding base64 data URLs
    images: bool = False

    def capabilities(self) -> frozenset[str]:
        return frozenset({"streams"} | ({"grammar"} if self.grammar_param else set())
                         | ({"images"} if self.images else set()))

    def window(self) -> int:
        # A stage waits for a whole batch, so a batch's slowest request holds its rows back: keep eight times the
        # concurrency outstanding, and the other batches fill the window while a few stragglers finish (served
        # latencies are heavy-tailed: the slowest of 64 lognormal(sigma 0.8) replies takes ~5x the mean)
        return 8 * self.concurrency


def identity(cfg: OpenAIHTTPConfig) -> dict[str, Any]:
    """The cache identity of a server's answers: the server (its base URL) and the model it serves."""
    return {"kind": "openai_http", "base_url": cfg.base_url.rstrip("/"), "model": cfg.model}


def check(cfg: OpenAIHTTPConfig) -> None:
    """Every environment variable the block names is set (EngineUnavailable names the one that is not); calls
    no server."""
    for var, field in [(cfg.api_key_env, "api_key_env"), *((v, f"headers_env.{h}") for h, v in cfg.headers_env.items())]:
        if var and not os.environ.get(var):
            raise EngineUnavailable(f"environment variable {var} ({field}) is not set")


def redact(text: str, secrets: list[str]) -> str:
    """Error texts are stored (quarantine, manifest, card): a server that echoes a key must not leak it.
    `secrets` longest first, so a key that contains another is replaced whole."""
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


#: a provider's rate-limit headers: (remaining, reset) for requests and for tokens, OpenAI's names then Anthropic's
RATE_HEADERS = {
    "requests": [("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
                 ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset")],
    "tokens": [("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
               ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset"),
               ("anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset")],
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def reset_seconds(value: str | None) -> float | None:
    """Seconds until a rate-limit window resets: OpenAI's durations ("1s", "6m0s", "20ms", "1h2m3.5s") or
    Anthropic's RFC 3339 times ("2026-12-04T05:00:00Z")."""
    if not value:
        return None
    value = value.strip()
    parts = _DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        return sum(float(n) * scale[u] for n, u in parts)
    try:
        from datetime import datetime

        return max(0.0, datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - time.time())
    except ValueError:
        return None


def rate_limit_wait(headers, tokens_next: int) -> float | None:
    """How long to hold the stream after an answer whose headers say the provider's window is spent: no request
    left, or fewer tokens left than the next request may use; None when the headers allow more (or say
    nothing)."""
    wait = None
    for kind, pairs in RATE_HEADERS.items():
        for remaining_name, reset_name in pairs:
            remaining = headers.get(remaining_name)
            if remaining is None:
                continue
            try:
                left = float(remaining)
            except ValueError:
                continue
            if left < (1 if kind == "requests" else tokens_next):
                reset = reset_seconds(headers.get(reset_name))
                if reset is not None:
                    wait = max(wait or 0.0, reset)
    return wait


class _Budget:
    """A per-minute budget (requests or tokens) refilled continuously; `take` waits until the amount fits."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = per_minute
        self.level = per_minute
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, amount: float) -> None:
        amount = min(amount, self.capacity)
        async with self.lock:  # first come, first served: one waiter refills at a time
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)


class _Window:
    """At most `limit` requests in flight, the limit adapting to the server (additive increase, multiplicative
    decrease, as TCP does): a 429 halves it, once per round (the requests already in flight when it was cut do not
    cut it again), and every `limit` answers in a row raise it by one, up to the configured concurrency. A server
    or API tier that takes fewer requests than configured then gets about what it takes, instead of a wave of
    429s and retries each time the pause ends.

    A semaphore of `cap` places; a cut keeps back the places of requests as they finish (`owed`) rather than
    waking anyone, so only `acquire` waits and a cancelled request always gives its place back."""

    def __init__(self, cap: int, adaptive: bool):
        self.cap = self.limit = cap
        self.adaptive = adaptive
        self.round = 0
        self._owed = 0
        self._answers = 0
        self._sem = asyncio.Semaphore(cap)

    async def acquire(self) -> int:
        """Wait for a free place; returns the round the request starts in."""
        await self._sem.acquire()
        return self.round

    def release(self) -> None:
        if self._owed:
            self._owed -= 1  # this place is kept back: the window is smaller now
        else:
            self._sem.release()

    def answered(self) -> None:
        if not self.adaptive or self.limit >= self.cap:
            return
        self._answers += 1
        if self._answers >= self.limit:
            self._answers = 0
            self.limit += 1
            if self._owed:
                self._owed -= 1
            else:
                self._sem.release()  # one of the places kept back

    def throttled(self, started_in: int) -> None:
        if self.adaptive and started_in == self.round:
            cut = self.limit - max(1, self.limit // 2)
            self.limit -= cut
            self._owed += cut
            self.round += 1
            self._answers = 0


class OpenAIHTTPEngine:
    def __init__(self, cfg):
        self.cfg = cfg
        self.identity = identity(cfg)
        self.model_name = cfg.model
        check(cfg)  # every variable it names is set (EngineUnavailable names the one that is not)
        self._key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        self._secret_headers = {h: os.environ[var] for h, var in cfg.headers_env.items()}
        #: every credential this engine sends, removed from any error text it stores
        self._secrets = sorted({v for v in [self._key, *self._secret_headers.values()] if v}, key=len, reverse=True)
        self.retries_done = 0
        #: the most requests that were in flight at once (the window's bound, checked by the tests)
        self.peak_in_flight = 0
        self._in_flight = 0
        self._paused_until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_lock = threading.Lock()

    # -- the stream ------------------------------------------------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                ready = threading.Event()
                loop = asyncio.new_event_loop()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.run_until_complete(self._open())
                    ready.set()
                    loop.run_forever()

                threading.Thread(target=main, name="curate-http", daemon=True).start()
                ready.wait()
                self._loop = loop
        return self._loop

    async def _open(self) -> None:
        import httpx

        cfg = self.cfg
        headers = {**cfg.headers, **self._secret_headers}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        timeout = httpx.Timeout(cfg.read_timeout, connect=cfg.connect_timeout, pool=None)
        # `concurrency` connections kept alive (httpx's default pool keeps 20: at higher concurrency most requests
        # would open a new one), split over pools of at most POOL_CONNECTIONS: httpcore's pool scans all of its
        # connections (a socket syscall each) for every request it assigns, which at 64 connections took 40% of
        # the event loop's time here. A request goes to the pool with the fewest in flight, so no pool queues
        # while another has a free connection (the semaphore keeps the total at `concurrency`).
        pools = -(-cfg.concurrency // POOL_CONNECTIONS)
        per_pool = -(-cfg.concurrency // pools)
        limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        tls = httpx.create_ssl_context()  # one for all pools: loading the CA bundle takes ~40 ms a client
        self._clients = [httpx.AsyncClient(base_url=cfg.base_url.rstrip("/"), headers=headers, timeout=timeout,
                                           limits=limits, verify=tls) for _ in range(pools)]
        self._pool_load = [0] * pools
        self._window = _Window(cfg.concurrency, cfg.adaptive_concurrency)
        self._rpm = _Budget(cfg.requests_per_minute) if cfg.requests_per_minute else None
        self._tpm = _Budget(cfg.tokens_per_minute) if cfg.tokens_per_minute else None

    def stream(self, requests: list[Request]) -> Iterator[tuple[int, Completion]]:
        """(index, completion) for every request, as each finishes. Safe to call from many threads at once: all
        callers share the engine's window of `concurrency` requests in flight."""
        if not requests:
            return
        loop = self._ensure_loop()
        futures = {asyncio.run_coroutine_threadsafe(self._one(r), loop): i for i, r in enumerate(requests)}
        try:
            for fut in concurrent.futures.as_completed(futures):
                yield futures[fut], fut.result()
        finally:
            for fut in futures:  # a caller that stops early (an error, a kill) frees the window
                fut.cancel()

    def complete(self, requests: list[Request]) -> list[Completion]:
        out: list[Completion | None] = [None] * len(requests)
        for i, comp in self.stream(requests):
            out[i] = comp
        return out  # type: ignore[return-value]

    # -- one request -----------------------------------------------------------------------------------------
    async def _pace(self, r: Request) -> None:
        """Wait out a 429 pause of the whole stream, then the per-minute budgets."""
        while (delay := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        if self._rpm is not None:
            await self._rpm.take(1)
        if self._tpm is not None:
            await self._tpm.take(sum(estimated_tokens(r)))

    async def _one(self, r: Request) -> Completion:
        import httpx

        cfg = self.cfg
        body = request_body(self.cfg, r)
        last = ""
        for attempt in range(cfg.max_retries + 1):
            wait = None
            started_in = await self._window.acquire()
            try:
                await self._pace(r)
                self._in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
                pool = min(range(len(self._clients)), key=self._pool_load.__getitem__)
                self._pool_load[pool] += 1
                try:
                    resp = await self._clients[pool].post("/chat/completions", json=body)
                except httpx.TransportError as exc:  # connect errors, timeouts, dropped connections
                    last = self._redact(f"{type(exc).__name__}: {exc}")
                    connect_failed = isinstance(exc, httpx.ConnectError)
                else:
                    connect_failed = False
                    if resp.status_code == 200:
                        self._window.answered()
                        # the provider's window is spent: hold the whole stream until it resets, not just this
                        # caller (the next request would draw a 429)
                        if (hold := rate_limit_wait(resp.headers, sum(estimated_tokens(r)))) is not None:
                            self._paused_until = max(self._paused_until, time.monotonic() + hold)
                        return self._completion(resp)
                    last = f"HTTP {resp.status_code}: {self._redact(resp.text)[:200]}"  # redacted, then cut
                    if resp.status_code in FATAL_STATUS:
                        raise EngineError(f"{self.cfg.base_url} answered {resp.status_code} "
                                          f"{FATAL_STATUS[resp.status_code]}: {last}")
                    if resp.status_code not in RETRY_STATUS:
                        return Completion(text=None, error=last)  # the server rejects this request: a row error
                    wait = retry_after(resp.headers.get("retry-after"))
                    if resp.status_code == 429:  # the server is saturated: slow the whole stream, not one request
                        pause = wait if wait is not None else min(cfg.backoff_max, cfg.backoff_base * 2 ** attempt)
                        self._paused_until = max(self._paused_until, time.monotonic() + pause)
                        self._window.throttled(started_in)
                finally:
                    self._in_flight -= 1
                    self._pool_load[pool] -= 1
            finally:
                self._window.release()
            if attempt == cfg.max_retries:
                break
            self.retries_done += 1
            backoff = min(cfg.backoff_max, cfg.backoff_base * 2 ** attempt) * (0.5 + random.random())
            await asyncio.sleep(max(backoff, wait or 0.0))
        if connect_failed:  # nothing listens there: no row can be answered
            raise EngineError(f"cannot reach {self.cfg.base_url} ({last}, after {cfg.max_retries + 1} attempts)")
        return Completion(text=None, error=f"{last} (after {cfg.max_retries + 1} attempts)", transient=True)

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    @staticmethod
    def _completion(resp) -> Completion:
        try:
            data = resp.json()
        except ValueError as exc:
            return Completion(text=None, error=f"malformed response: {type(exc).__name__}: {exc}", transient=True)
        return completion_of(data)


def request_body(cfg: OpenAIHTTPConfig, r: Request) -> dict[str, Any]:
    """The chat completions request body of one request (the live API's and a batch file's lines alike)."""
    s = r.sampling
    body: dict[str, Any] = {"model": cfg.model, "messages": r.messages, "temperature": s.temperature,
                            "top_p": s.top_p, "max_tokens": s.max_tokens, "seed": s.seed, **cfg.extra_body}
    if r.grammar is not None and cfg.grammar_param:
        body[cfg.grammar_param] = r.grammar
    return body


def completion_of(data: Any) -> Completion:
    """A chat completion's JSON as a Completion; a reply without the fields is a transient failure (a garbled
    answer), never an empty answer."""
    try:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return Completion(text=choice["message"].get("content") or "", finish_reason=choice.get("finish_reason"),
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        return Completion(text=None, error=f"malformed response: {type(exc).__name__}: {exc}", transient=True)


def build(cfg: OpenAIHTTPConfig, cache: ResponseCache | None) -> CachedEngine:
    return CachedEngine(lambda: OpenAIHTTPEngine(cfg), identity=identity(cfg), model_name=cfg.model, cache=cache)


ENGINE = EngineSpec(kind="openai_http", config=OpenAIHTTPConfig, build=build, check=check,
                    capabilities={"streams", "grammar", "images"})
