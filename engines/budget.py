"""Spending limits on model calls (`budget_usd` for a run, or for one stage): a request is sent only when what it
could cost at most fits what is left, so a run never spends past its budget.

Every worker of a run (threads, Ray actors, nodes sharing the run directory) writes to one SQLite ledger in the
run directory: before sending requests it reserves their most (engines.prices.most_tokens, at the engine's price), and when their answers are in it replaces the reservation by what the provider's `usage` says they cost.
A reservation left by a killed process stays counted at its most: the budget errs on the side of spending less.
When the next request does not fit, the engine sends none of the rest and raises `BudgetExhausted`: the run stops
as `stopped: budget`, everything answered so far is in the response cache and every finished shard is kept, so
`curate run --resume RUN_DIR --budget-usd MORE` goes on where it stopped.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from curate.engines.base import Completion, Request
from curate.engines.prices import Price, most_tokens


class BudgetExhausted(Exception):
    """The next model request could cost more than the budget has left: nothing more is sent."""


class Ledger:
    """What a run has spent and reserved, by stage: one SQLite file every worker of the run shares."""

    def __init__(self, path: Path | str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=120, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS spend (id INTEGER PRIMARY KEY, stage TEXT NOT NULL, "
                         "usd REAL NOT NULL, settled INTEGER NOT NULL DEFAULT 0)")
        self._lock = threading.Lock()

    def spent(self, stage: str | None = None) -> float:
        """USD spent or reserved, by the whole run or one stage."""
        with self._lock:
            row = self._db.execute("SELECT COALESCE(SUM(usd), 0) FROM spend" + (" WHERE stage = ?" if stage else ""),
                                   (stage,) if stage else ()).fetchone()
        return float(row[0])

    def reserve(self, stage: str, costs: list[float], limits: dict[str | None, float]) -> tuple[int | None, int]:
        """Reserve the longest prefix of `costs` that keeps every limit (None: the run's; else a stage's);
        returns (reservation id, how many fit)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # one reserving worker at a time, across processes
            try:
                room = min(limit - float(self._db.execute(
                    "SELECT COALESCE(SUM(usd), 0) FROM spend" + (" WHERE stage = ?" if scope else ""),
                    (scope,) if scope else ()).fetchone()[0]) for scope, limit in limits.items())
                n, total = 0, 0.0
                while n < len(costs) and total + costs[n] <= room + 1e-12:
                    total += costs[n]
                    n += 1
                rid = None
                if n:
                    rid = self._db.execute("INSERT INTO spend (stage, usd) VALUES (?, ?)", (stage, total)).lastrowid
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return rid, n

    def settle(self, rid: int, usd: float) -> None:
        with self._lock:
            self._db.execute("UPDATE spend SET usd = ?, settled = 1 WHERE id = ?", (usd, rid))


class Budget:
    """One engine's gate for one stage: reserves before requests are sent, settles when answers are in."""

    def __init__(self, ledger: Ledger, stage: str, limits: dict[str | None, float], price: Price, batch: bool):
        self.ledger, self.stage, self.limits, self.price, self.batch = ledger, stage, limits, price, batch

    def most(self, r: Request) -> float:
        return self.price.cost(*most_tokens(r), batch=self.batch)

    def reserve(self, requests: list[Request]) -> tuple[int | None, int]:
        return self.ledger.reserve(self.stage, [self.most(r) for r in requests], self.limits)

    def settle(self, rid: int | None, answers: list[Completion]) -> None:
        if rid is not None:
            self.ledger.settle(rid, sum(self.price.cost(c.prompt_tokens, c.completion_tokens, self.batch)
                                        for c in answers))

    def exhausted(self, request: Request) -> BudgetExhausted:
        where = ", ".join(f"{f'stage {scope}' if scope else 'run'} ${self.ledger.spent(scope):.4f} of ${limit:g}"
                          for scope, limit in self.limits.items())
        return BudgetExhausted(f"budget reached ({where} spent or reserved); the next request could cost "
                               f"${self.most(request):.4f}")
