"""Provider batch APIs (`openai_batch`, `anthropic_batch`): what both share.

A hosted provider sells the same calls at about half price through its batch API: a file (or list) of requests
goes in, the answers come back within a window of up to 24 hours. `BatchEngine` turns that into the engine
interface the stages use: callers (a stage's shards and batches, in threads) ask for completions; their requests
gather in one queue, which is sent as one provider batch once it is full (the provider's limits on requests and
bytes) or once no request has come for `collect_s`; each batch is polled with backoff and its answers handed back,
and stored in the response cache, the moment it ends.

Nothing is paid twice. Every batch is recorded in a journal in the run directory (`_work/batches.sqlite`) with
the cache keys of the requests it carries (each request's `custom_id` is its cache key) *before* the engine waits
on it, and for OpenAI before the batch is even created (its uploaded file's id, which finds the batch again if
the process died between upload and create). An engine that starts in a run directory whose journal holds
batches that did not end (a killed run, `--resume`) re-attaches to them: it polls them and takes their answers
instead of sending those requests again, and their answers go to the response cache even when no shard asks.

Inside a batch, a request that failed the way the HTTP engine retries (429, 5xx) is sent again in a later batch,
up to `max_retries` times; one the provider rejects (400) is a row error, cached like an answer. An expired
batch's unanswered requests are sent once more (the reason goes to the run's notes, so the manifest says it);
a batch the provider failed as a whole (its file did not validate) stops the stage with the provider's reason.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field

from curate.engines.base import Completion, EngineError, Request
from curate.engines.cache import CachedEngine, ResponseCache, default_cache_dir, request_key
from curate.engines.openai_http import FATAL_STATUS, RETRY_STATUS, OpenAIHTTPConfig, check, redact, retry_after

#: what a provider says of a request it did not get to before the batch's window closed
EXPIRED = "expired"


class BatchFields(OpenAIHTTPConfig):
    """The fields every batch engine adds to `openai_http`'s connection fields (so a pipeline switches with one
    word: `concurrency` and the per-minute budgets are the live API's and are not used by a batch)."""

    #: the most requests and bytes one provider batch carries (the provider's documented limits by default)
    max_batch_requests: int = Field(50_000, ge=1)
    max_batch_bytes: int = Field(200_000_000, ge=1)
    #: a batch is sent once it is full or once no new request has come for this long
    collect_s: float = Field(2.0, ge=0)
    #: the first poll of a batch waits `poll_interval`, each next one 1.5 times longer, at most `poll_max_s`
    poll_interval: float = Field(2.0, gt=0)
    poll_max_s: float = Field(60.0, gt=0)
    #: how long the provider has to answer a batch (OpenAI and Anthropic offer 24 hours)
    completion_window: str = "24h"

    def window(self) -> int:
        # the requests a worker keeps asked for at once: what one provider batch collects from a stage's shards
        return min(self.max_batch_requests, 4096)


@dataclass
class Status:
    """A provider batch's state, as the engine reads it: still running, or ended one of four ways."""

    state: Literal["running", "ended", "expired", "cancelled", "failed"]
    #: the provider's own word for it (validating, in_progress, finalizing, ...) and, when it failed, why
    detail: str
    raw: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    """One provider's batch API: the engine's only link to it."""

    max_requests: int
    max_bytes: int

    def line(self, key: str, request: Request) -> dict[str, Any]:
        """One request as the provider's batch takes it, its `custom_id` the key."""

    def prepare(self, lines: list[dict]) -> str | None:
        """What has to exist before the batch is created (OpenAI: the uploaded file's id); None if nothing."""

    def create(self, ref: str | None, lines: list[dict]) -> str:
        """Create the batch; its id."""

    def find(self, ref: str) -> str | None:
        """The id of a batch created from `ref` (a process died between create and the journal), if any."""

    def status(self, batch_id: str) -> Status: ...

    def results(self, status: Status) -> Iterator[tuple[str, Completion | str]]:
        """(custom_id, completion or EXPIRED) for every request the ended batch has a line for."""

    def cancel(self, batch_id: str) -> None: ...


class Http:
    """The provider's control calls (upload, create, poll, download): retried on 429, 5xx and dropped
    connections as the HTTP engine retries requests; any other failure stops the stage with a one-line reason
    (a control call that is refused is a misconfigured engine, not a row)."""

    def __init__(self, cfg: BatchFields, headers: dict[str, str], secrets: list[str]):
        import httpx

        self.cfg = cfg
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._client = httpx.Client(base_url=cfg.base_url.rstrip("/"), headers={**cfg.headers, **headers},
                                    timeout=httpx.Timeout(cfg.read_timeout, connect=cfg.connect_timeout))

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def call(self, method: str, path: str, **kwargs):
        import httpx

        cfg = self.cfg
        last = ""
        for attempt in range(cfg.max_retries + 1):
            wait = None
            try:
                resp = self._client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                last = self.redact(f"{type(exc).__name__}: {exc}")
            else:
                if resp.status_code < 300:
                    return resp
                last = f"HTTP {resp.status_code}: {self.redact(resp.text)[:200]}"
                if resp.status_code in FATAL_STATUS:
                    raise EngineError(f"{cfg.base_url} answered {resp.status_code} {FATAL_STATUS[resp.status_code]}"
                                      f" to {method} {path}: {last}")
                if resp.status_code not in RETRY_STATUS:
                    raise EngineError(f"{cfg.base_url} refused {method} {path}: {last}")
                wait = retry_after(resp.headers.get("retry-after"))
            if attempt < cfg.max_retries:
                time.sleep(max(wait or 0.0, min(cfg.backoff_max, cfg.backoff_base * 2 ** attempt)))
        raise EngineError(f"{cfg.base_url}: {method} {path} failed after {cfg.max_retries + 1} attempts: {last}")


class Journal:
    """The batches a run sent, with the keys each carries: one SQLite file in the run directory, written before
    the engine waits on a batch, so a later process finds what is still running at the provider."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=120, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS batches (row INTEGER PRIMARY KEY, engine TEXT NOT NULL, "
                         "batch_id TEXT, ref TEXT, requests INTEGER NOT NULL, status TEXT NOT NULL, "
                         "created REAL NOT NULL, ended REAL, note TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS requests (key TEXT NOT NULL, row INTEGER NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS requests_row ON requests (row)")
        self._lock = threading.Lock()

    def add(self, engine: str, ref: str | None, keys: list[str]) -> int:
        """A batch about to be created: its keys, and the reference that finds it again (before `create`)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # one transaction: the batch and every key, or nothing
            try:
                row = self._db.execute("INSERT INTO batches (engine, ref, requests, status, created) VALUES "
                                       "(?, ?, ?, 'creating', ?)", (engine, ref, len(keys), time.time())).lastrowid
                self._db.executemany("INSERT INTO requests VALUES (?, ?)", [(k, row) for k in keys])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return int(row)

    def update(self, row: int, **values: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._lock:
            self._db.execute(f"UPDATE batches SET {sets} WHERE row = ?", (*values.values(), row))

    def unended(self, engine: str) -> list[tuple[int, str | None, str | None, list[str]]]:
        """(row, batch id, ref, keys) of this engine's batches that were sent (or being sent) and did not end."""
        with self._lock:
            rows = self._db.execute("SELECT row, batch_id, ref FROM batches WHERE engine = ? AND ended IS NULL "
                                    "ORDER BY row", (engine,)).fetchall()
            return [(row, bid, ref, [k for (k,) in self._db.execute("SELECT key FROM requests WHERE row = ?",
                                                                    (row,))]) for row, bid, ref in rows]

    def batches(self) -> list[dict[str, Any]]:
        """Every batch recorded, oldest first (`curate batches`)."""
        with self._lock:
            cur = self._db.execute("SELECT * FROM batches ORDER BY row")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def journal_path(run_dir: Path | str | None) -> Path:
    """Where the batches of a run are recorded: its run directory (the cache folder for an engine used outside a
    run)."""
    return (Path(run_dir) / "_work" if run_dir else default_cache_dir()) / "batches.sqlite"


@dataclass
class _Open:
    """A batch at the provider that this engine waits on."""

    row: int
    batch_id: str
    keys: list[str]
    next_poll: float
    interval: float


class BatchEngine:
    """The engine interface over a provider's batch API (see the module's docstring)."""

    def __init__(self, cfg: BatchFields, provider: Provider, identity: dict[str, Any], cache: ResponseCache | None,
                 run_dir: Path | str | None):
        self.cfg = cfg
        self.provider = provider
        self.identity = identity
        self.model_name = cfg.model
        self.cache = cache
        self.journal = Journal(journal_path(run_dir))
        #: the journal's name for this engine's batches: its identity (the keys it may re-attach to are its own)
        self._engine = json.dumps(identity, sort_keys=True)
        self._cond = threading.Condition()
        self._futures: dict[str, Future] = {}  # keys a caller waits on
        self._requests: dict[str, Request] = {}  # their requests (to send again after a transient failure)
        self._pending: dict[str, tuple[dict, int]] = {}  # key -> its line and its size, for the next batch
        self._pending_bytes = 0
        self._last_add = 0.0
        self._attempts: dict[str, int] = {}
        self._expired: set[str] = set()
        self._open: dict[int, _Open] = {}
        self._in_batch: dict[str, int] = {}  # key -> journal row of the open batch carrying it
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        #: batches this process created (the tests read it; the server's log is the real witness)
        self.submitted = 0

    # -- callers ---------------------------------------------------------------------------------------------
    def stream(self, requests: list[Request]) -> Iterator[tuple[int, Completion]]:
        """(index, completion) for every request, as the batches carrying them end; safe from many threads."""
        if not requests:
            return
        futures: dict[Future, list[int]] = {}
        for i, r in enumerate(requests):
            futures.setdefault(self._want(request_key(self.identity, r), r), []).append(i)
        for fut in as_completed(futures):
            comp = fut.result()  # an EngineError stops the stage
            for i in futures[fut]:
                yield i, comp

    def complete(self, requests: list[Request]) -> list[Completion]:
        out: list[Completion | None] = [None] * len(requests)
        for i, comp in self.stream(requests):
            out[i] = comp
        return out  # type: ignore[return-value]

    def _want(self, key: str, request: Request) -> Future:
        with self._cond:
            self._start()
            if self._error is not None:
                raise self._error
            fut = self._futures.get(key)
            if fut is None:
                fut = self._futures[key] = Future()
                self._requests[key] = request
                if key not in self._in_batch:  # not already at the provider in a batch this run directory sent
                    self._queue(key, request)
            return fut

    def _queue(self, key: str, request: Request) -> None:
        line = self.provider.line(key, request)
        size = len(json.dumps(line, ensure_ascii=False).encode()) + 1
        self._pending[key] = (line, size)
        self._pending_bytes += size
        self._last_add = time.monotonic()
        self._cond.notify_all()

    def cancel_unended(self) -> list[str]:
        """Cancel this engine's batches of the run that did not end (`curate batches cancel`); their ids."""
        out = []
        for row, batch_id, _, _ in self.journal.unended(self._engine):
            if batch_id is not None:
                self.provider.cancel(batch_id)
                self.journal.update(row, status="cancel requested")
                out.append(batch_id)
        return out

    # -- the manager thread ----------------------------------------------------------------------------------
    def _start(self) -> None:
        """On first use: re-attach to the journal's batches that did not end, then start the manager thread."""
        if self._thread is not None:
            return
        for row, batch_id, ref, keys in self.journal.unended(self._engine):
            if batch_id is None and ref is not None:  # died between create and the journal: ask the provider
                batch_id = self.provider.find(ref)
                if batch_id is not None:
                    self.journal.update(row, batch_id=batch_id, status="sent")
            if batch_id is None:  # never created: its requests go in a new batch when asked
                self.journal.update(row, status="not created", ended=time.time())
                continue
            self._attach(row, batch_id, keys, delay=0.0)
        self._thread = threading.Thread(target=self._run, name="curate-batches", daemon=True)
        self._thread.start()

    def _attach(self, row: int, batch_id: str, keys: list[str], delay: float) -> None:
        self._open[row] = _Open(row, batch_id, keys, time.monotonic() + delay, self.cfg.poll_interval)
        for key in keys:
            self._in_batch[key] = row

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                batch = self._take(now)
                due = [b for b in self._open.values() if b.next_poll <= now]
                if not batch and not due:
                    wake = [b.next_poll for b in self._open.values()]
                    if self._pending:
                        wake.append(self._last_add + self.cfg.collect_s)
                    self._cond.wait(timeout=min(wake) - now if wake else None)
                    continue
            try:
                if batch:
                    self._submit(batch)
                for b in due:
                    self._poll(b)
            except BaseException as exc:  # the provider cannot be used: every waiting caller gets the reason
                with self._cond:
                    self._error = exc
                    for fut in self._futures.values():
                        fut.set_exception(exc)
                    self._futures.clear()
                return

    def _take(self, now: float) -> dict[str, dict] | None:
        """The next batch's lines, when it is due: full, or nothing new came for `collect_s`."""
        limit, size = min(self.cfg.max_batch_requests, self.provider.max_requests), min(
            self.cfg.max_batch_bytes, self.provider.max_bytes)
        if not self._pending or (len(self._pending) < limit and self._pending_bytes < size
                                 and now - self._last_add < self.cfg.collect_s):
            return None
        out: dict[str, dict] = {}
        used = 0
        for key, (line, n) in list(self._pending.items()):
            if out and (len(out) >= limit or used + n > size):
                break
            out[key] = line
            del self._pending[key]
            used += n
        self._pending_bytes -= used
        return out

    def _submit(self, batch: dict[str, dict]) -> None:
        keys, lines = list(batch), list(batch.values())
        ref = self.provider.prepare(lines)
        row = self.journal.add(self._engine, ref, keys)  # recorded before the batch exists
        batch_id = self.provider.create(ref, lines)
        self.journal.update(row, batch_id=batch_id, status="sent")
        self.submitted += 1
        with self._cond:
            self._attach(row, batch_id, keys, delay=self.cfg.poll_interval)

    def _poll(self, b: _Open) -> None:
        status = self.provider.status(b.batch_id)
        if status.state == "running":
            self.journal.update(b.row, status=status.detail)
            b.interval = min(self.cfg.poll_max_s, b.interval * 1.5)
            b.next_poll = time.monotonic() + b.interval
            return
        if status.state == "failed":
            self.journal.update(b.row, status="failed", ended=time.time(), note=status.detail)
            raise EngineError(f"batch {b.batch_id} failed at {self.cfg.base_url}: {status.detail}")
        results = dict(self.provider.results(status)) if status.state in ("ended", "expired", "cancelled") else {}
        self._finish(b, status, results)

    def _finish(self, b: _Open, status: Status, results: dict[str, Completion | str]) -> None:
        """Hand an ended batch's answers to whoever waits, store them, and queue what goes again."""
        store: dict[str, dict] = {}
        again = expired = 0
        with self._cond:
            del self._open[b.row]
            for key in b.keys:
                if self._in_batch.get(key) == b.row:
                    del self._in_batch[key]
                comp = results.get(key)
                waiting = key in self._futures
                if comp is None or comp == EXPIRED:
                    if (comp == EXPIRED or status.state == "expired") and key not in self._expired:
                        self._expired.add(key)  # an expired batch's unanswered requests go once more
                        expired += waiting
                        if waiting:
                            self._queue(key, self._requests[key])
                        continue
                    comp = Completion(text=None, transient=True, error=f"no answer: batch {b.batch_id} "
                                      f"{status.detail}" + (" (expired twice)" if key in self._expired else ""))
                assert isinstance(comp, Completion)
                if comp.ok or not comp.transient:
                    store[key] = asdict(comp)
                elif waiting and self._attempts.get(key, 0) < self.cfg.max_retries:
                    self._attempts[key] = self._attempts.get(key, 0) + 1
                    self._queue(key, self._requests[key])
                    again += 1
                    continue
                if waiting:
                    self._futures.pop(key).set_result(comp)
                    self._requests.pop(key, None)
        if store and self.cache is not None:
            self.cache.put_values({k: {**v, "cached": False} for k, v in store.items()})
        notes = []
        if expired:
            notes.append(f"batch {b.batch_id} expired at {self.cfg.base_url} ({self.cfg.completion_window} window): "
                         f"{expired} unanswered requests sent once more")
            if self.cache is not None:  # the run's notes: the manifest says why those requests went twice
                self.cache.note(notes[-1])
        if again:
            notes.append(f"{again} requests failed transiently, sent again")
        self.journal.update(b.row, status=status.detail, ended=time.time(), note="; ".join(notes) or None)


def provider_http(cfg: BatchFields, key_header: str, key_format: str = "{}", **fixed: str) -> Http:
    """The provider's client: the block's environment-named headers, the API key (`api_key_env`) in the
    provider's header (`key_format` around it), any fixed headers; every credential is redacted from errors."""
    import os

    check(cfg)
    headers = {h: os.environ[var] for h, var in cfg.headers_env.items()}
    secrets = list(headers.values())
    if cfg.api_key_env:
        secrets.append(os.environ[cfg.api_key_env])
        headers[key_header] = key_format.format(os.environ[cfg.api_key_env])
    return Http(cfg, {**headers, **fixed}, secrets)


def build_batch(cfg: BatchFields, cache: ResponseCache | None, identity: dict[str, Any], provider) -> CachedEngine:
    """A batch engine behind the response cache; the engine (and its journal) is made on the first miss, in the
    run directory the worker gives the cached engine."""
    cached = CachedEngine(lambda: BatchEngine(cfg, provider(cfg), identity, cache, cached.run_dir),
                          identity=identity, model_name=cfg.model, cache=cache)
    return cached
