"""Content-hash response cache, so a rerun, a resume or a changed downstream filter never calls a model twice.

The key hashes everything that changes the answer: the engine identity (kind, model file), the full messages
(system prompt included), the sampling params (seed included) and the output constraint. Answers are stored, and
so are row errors (the same request fails the same way: a resume does not ask again); transient failures
(timeouts, 5xx after every retry) are not, so the next run asks again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from curate.engines.base import Completion, Engine, Request


def default_cache_dir() -> Path:
    if os.environ.get("CURATE_CACHE_DIR"):
        return Path(os.environ["CURATE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "curate"


def request_key(identity: dict[str, Any], request: Request) -> str:
    payload = {
        "engine": identity,
        "messages": request.messages,
        "sampling": request.sampling.as_dict(),
        "grammar": request.grammar,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    """The answers, in one SQLite file shared by every run and worker on the machine (WAL: readers beside one
    writer). It degrades, never blocks: a file that cannot be opened or written is moved aside
    (`responses.sqlite.damaged-<time>`) and a fresh one starts (its calls are made again), and an entry that
    cannot be read is a miss; each is noted once in `notes`, which the run reports."""

    def __init__(self, directory: Path | str | None = None, *, repair: bool = True):
        """`repair=False` (`curate cache check`): a file that cannot be opened raises instead of being moved."""
        path = Path(directory) if directory else default_cache_dir()
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "responses.sqlite"
        self.notes: list[str] = []
        # one connection, many threads (a worker runs shards and batches in threads against streaming engines)
        self._lock = threading.Lock()
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if not repair:
                raise
            self._db = self._replace(exc)

    def _open(self) -> sqlite3.Connection:
        # Several Ray actors share the file: WAL lets readers run beside one writer, the timeout waits out locks.
        db = sqlite3.connect(self.path, timeout=120, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # no fsync per answer: in WAL mode a crash loses at most the last answers, which are asked again
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL)")
            columns = {row[1] for row in db.execute("PRAGMA table_info(responses)")}
            if "created" not in columns:  # a cache written before entries were dated
                db.execute("ALTER TABLE responses ADD COLUMN created REAL")
            db.execute("SELECT key FROM responses LIMIT 1").fetchall()
        except BaseException:
            db.close()
            raise
        return db

    def _replace(self, exc: BaseException) -> sqlite3.Connection:
        """Move the damaged file (and its WAL) aside and start a fresh one."""
        import time

        aside = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            src = self.path.with_name(self.path.name + suffix)
            if src.exists():
                os.replace(src, aside.with_name(aside.name + suffix))
        self.note(f"the response cache {self.path} could not be used ({type(exc).__name__}: {exc}); moved aside to "
                  f"{aside.name}, a fresh one started: its calls are made again")
        return self._open()

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def get(self, key: str) -> Completion | None:
        try:
            with self._lock:
                row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            comp = Completion(**json.loads(row[0]))
        except (sqlite3.DatabaseError, ValueError, TypeError) as exc:
            self.note(f"an entry of the response cache {self.path} could not be read ({type(exc).__name__}): "
                      "asked again")
            return None
        comp.cached = True
        return comp

    def put(self, key: str, completion: Completion) -> None:
        value = asdict(completion)
        value["cached"] = False
        self.put_values({key: value})

    def get_values(self, keys: list[str]) -> dict[str, Any]:
        """Stored non-text results (a reward model's scores, embeddings) by key; the keys not stored (or not
        readable) are absent."""
        out: dict[str, Any] = {}
        try:
            with self._lock:
                for start in range(0, len(keys), 500):
                    chunk = keys[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    for key, value in self._db.execute(f"SELECT key, value FROM responses WHERE key IN ({marks})",
                                                       chunk):
                        out[key] = json.loads(value)
        except (sqlite3.DatabaseError, ValueError) as exc:
            self.note(f"entries of the response cache {self.path} could not be read ({type(exc).__name__}): "
                      "asked again")
        return out

    def put_values(self, values: dict[str, Any]) -> None:
        import time

        rows = [(k, json.dumps(v, ensure_ascii=False), time.time()) for k, v in values.items()]
        with self._lock:
            try:
                self._db.executemany("INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)", rows)
            except sqlite3.DatabaseError as exc:  # a damaged file cannot take writes: a fresh one can
                if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                    raise
                self._db.close()
                self._db = self._replace(exc)
                self._db.executemany("INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)", rows)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def check(self) -> list[str]:
        """SQLite's integrity check of the whole file: [] when it is sound."""
        rows = [r[0] for r in self._db.execute("PRAGMA integrity_check")]
        return [] if rows == ["ok"] else rows

    def clear(self, older_than_s: float | None = None) -> int:
        """Delete every entry (or those older than `older_than_s`, undated ones included); how many."""
        import time

        with self._lock:
            if older_than_s is None:
                cur = self._db.execute("DELETE FROM responses")
            else:
                cur = self._db.execute("DELETE FROM responses WHERE created IS NULL OR created < ?",
                                       (time.time() - older_than_s,))
        return cur.rowcount

    def vacuum(self) -> None:
        with self._lock:
            self._db.execute("VACUUM")

    def close(self) -> None:
        self._db.close()


@dataclass
class CallCounts:
    """Requests one thread made through an engine: answered by the model or the cache, and how many failed."""

    calls: int = 0
    hits: int = 0
    failed: int = 0
    transient: int = 0
    first_error: str | None = None
    #: tokens of the model's answers (its `usage`), and of the cached answers that saved a call
    prompt_tokens: int = 0
    completion_tokens: int = 0
    saved_prompt_tokens: int = 0
    saved_completion_tokens: int = 0

    TOKENS = ("prompt_tokens", "completion_tokens", "saved_prompt_tokens", "saved_completion_tokens")

    def __add__(self, other: CallCounts) -> CallCounts:
        return CallCounts(self.calls + other.calls, self.hits + other.hits, self.failed + other.failed,
                          self.transient + other.transient, self.first_error or other.first_error,
                          *(getattr(self, t) + getattr(other, t) for t in self.TOKENS))

    def __sub__(self, before: CallCounts) -> CallCounts:
        """What happened since `before` (a snapshot of the same counter)."""
        return CallCounts(self.calls - before.calls, self.hits - before.hits, self.failed - before.failed,
                          self.transient - before.transient,
                          self.first_error if self.failed > before.failed else None,
                          *(getattr(self, t) - getattr(before, t) for t in self.TOKENS))

    def snapshot(self) -> CallCounts:
        return self - CallCounts()

    def usage(self) -> dict[str, int]:
        """Calls, cache hits and tokens, as a marker records them per engine."""
        return {"calls": self.calls, "hits": self.hits, **{t: getattr(self, t) for t in self.TOKENS}}


class CachedEngine:
    """An engine behind the response cache; counts real model calls and cache hits for the run summary.

    The engine itself is created on the first cache miss, so a fully cached rerun never loads a model.
    """

    def __init__(self, make_engine, identity: dict[str, Any], model_name: str, cache: ResponseCache | None):
        self._make_engine = make_engine
        #: what the engine can do and how many requests it wants outstanding (set by engines.config.build_engine
        #: from the engine's config, so asking loads no model)
        self.capabilities: frozenset[str] = frozenset()
        self.window = 1
        self._count_lock = threading.Lock()
        self._engine: Engine | None = None
        self.identity = identity
        self.model_name = model_name
        self.cache = cache
        self.calls = 0
        self.hits = 0
        #: the run's spending limit on this engine's calls (engines.budget.Budget), set by the worker; None: none
        self.budget = None
        #: the run directory the worker runs in (a batch engine keeps its journal of provider batches there)
        self.run_dir = None
        # the same counts for the calling thread alone: a stage whose shards share one engine in threads
        # (the ray_llm engine) reports each shard's own calls
        self._mine = threading.local()

    def thread_counts(self) -> CallCounts:
        """What the calling thread's requests came to: model calls, cache hits, failures (and the first error)."""
        counts = getattr(self._mine, "counts", None)
        if counts is None:
            counts = self._mine.counts = CallCounts()
        return counts

    def _count(self, calls: int, hits: int, comps: list[Completion] = ()) -> None:
        with self._count_lock:
            self.calls += calls
            self.hits += hits
        mine = self.thread_counts()
        mine.calls += calls
        mine.hits += hits
        saved = "saved_" if hits else ""
        for comp in comps:
            if not comp.ok:
                mine.failed += 1
                mine.transient += int(comp.transient)
                mine.first_error = mine.first_error or comp.error
            setattr(mine, f"{saved}prompt_tokens", getattr(mine, f"{saved}prompt_tokens") + comp.prompt_tokens)
            setattr(mine, f"{saved}completion_tokens", getattr(mine, f"{saved}completion_tokens")
                    + comp.completion_tokens)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._count_lock:  # shards in threads share one engine (one window, one batch queue)
                if self._engine is None:
                    self._engine = self._make_engine()
        return self._engine

    def logprobs(self, items):
        """Reference-model scoring, where the engine can (llama.cpp): not cached, it is deterministic."""
        engine = self.engine
        if not hasattr(engine, "logprobs"):
            raise NotImplementedError(f"the {self.identity.get('kind')} engine cannot score responses' log-probabilities")
        return engine.logprobs(items)

    def complete(self, requests: list[Request]) -> list[Completion]:
        """One completion per request, in order. Each fresh answer is stored in the cache as soon as the engine
        returns it (engines that stream hand them over one by one), so a killed run loses only the calls that
        were in flight: a resume asks for none of the answers already received."""
        results: list[Completion | None] = [None] * len(requests)
        keys = [request_key(self.identity, r) for r in requests]
        todo = []
        for i, key in enumerate(keys):
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                results[i] = hit
            else:
                todo.append(i)
        self._count(0, len(requests) - len(todo), [r for r in results if r is not None])
        if not todo:
            return [r for r in results if r is not None]
        refused = None
        if self.budget is not None:  # send only what the budget can pay for at most; the rest after the stop
            rid, fits = self.budget.reserve([requests[i] for i in todo])
            if fits < len(todo):
                refused = self.budget.exhausted(requests[todo[fits]])
                todo = todo[:fits]
        answers: list[Completion] = []
        try:
            if todo:
                engine = self.engine
                asked = [requests[i] for i in todo]
                fresh = engine.stream(asked) if hasattr(engine, "stream") else enumerate(engine.complete(asked))
                for j, comp in fresh:
                    i = todo[j]
                    results[i] = comp
                    answers.append(comp)
                    self._count(1, 0, [comp])
                    if self.cache is not None and (comp.ok or not comp.transient):
                        self.cache.put(keys[i], comp)
        finally:
            if self.budget is not None:
                self.budget.settle(rid, answers)
        if refused is not None:
            raise refused
        return [r for r in results if r is not None]


def value_key(identity: dict[str, Any], item: Any) -> str:
    """The cache key of one non-text model call (a reward model scoring a conversation and response, an embedding
    of a text): the model's identity and the whole input."""
    payload = {"engine": identity, "input": item}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class CachedCalls:
    """Reward models and embedding models behind the same response cache as the text engines: `map` answers what
    the cache holds and calls the model for the rest only, storing what it returns (except what `keep` refuses:
    a transient failure). Counts model calls and cache hits for the run's accounting."""

    def __init__(self, cache: ResponseCache | None):
        self.cache = cache
        self.counts = CallCounts()

    def map(self, identity: dict[str, Any], items: list[Any], compute, encode=lambda v: v, decode=lambda v: v,
            keep=lambda v: True) -> list[Any]:
        keys = [value_key(identity, item) for item in items]
        stored = self.cache.get_values(list(dict.fromkeys(keys))) if self.cache is not None and items else {}
        todo = [i for i, k in enumerate(keys) if k not in stored]
        out: list[Any] = [decode(stored[k]) if k in stored else None for k in keys]
        if todo:
            fresh = compute([items[i] for i in todo])
            for i, value in zip(todo, fresh, strict=True):
                out[i] = value
            if self.cache is not None:
                self.cache.put_values({keys[i]: encode(v) for i, v in zip(todo, fresh, strict=True) if keep(v)})
        self.counts.calls += len(todo)
        self.counts.hits += len(items) - len(todo)
        return out
