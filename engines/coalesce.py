"""Batches formed across callers: for engines that are fastest on large batches (vLLM offline, transformers on a
GPU), the requests of every batch and shard a worker runs at once are merged into one engine call.

The runner runs several batches of a stage side by side against an engine that `streams` (engines/config.py);
each batch's `complete` lands here, waits until `max_batch` requests are pending or no new request has arrived
for `idle_s`, and one thread runs them all as one call. Answers go back to each caller in its own order, so a
stage sees nothing of the merging.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from curate.engines.base import Completion, Request


class Coalescer:
    def __init__(self, run: Callable[[list[Request]], list[Completion]], max_batch: int, idle_s: float = 0.02):
        self._run, self.max_batch, self.idle_s = run, max_batch, idle_s
        self._cond = threading.Condition()
        self._pending: list[tuple[list[Request], dict]] = []
        self._busy = False
        #: engine calls made and requests they carried (how large the merged batches were)
        self.calls = 0
        self.requests = 0

    def complete(self, requests: list[Request]) -> list[Completion]:
        if not requests:
            return []
        slot: dict = {}
        with self._cond:
            self._pending.append((requests, slot))
            self._cond.notify_all()
            while "result" not in slot and "error" not in slot:
                if not self._busy:
                    self._busy = True  # this caller runs the next merged batch
                    try:
                        self._flush_as_leader()
                    finally:
                        self._busy = False
                        self._cond.notify_all()
                else:
                    self._cond.wait()
        if "error" in slot:
            raise slot["error"]
        return slot["result"]

    def _flush_as_leader(self) -> None:
        """Called with the lock held: wait for more callers (up to max_batch, or until idle), run, hand back."""
        while sum(len(r) for r, _ in self._pending) < self.max_batch:
            before = len(self._pending)
            self._cond.wait(self.idle_s)
            if len(self._pending) == before:
                break
        take, size = [], 0
        while self._pending and (not take or size + len(self._pending[0][0]) <= self.max_batch):
            item = self._pending.pop(0)
            take.append(item)
            size += len(item[0])
        self._cond.release()
        try:
            flat = [r for reqs, _ in take for r in reqs]
            try:
                out = self._run(flat)
                error = None
            except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets it
                out, error = [], exc
            self.calls += 1
            self.requests += len(flat)
        finally:
            self._cond.acquire()
        k = 0
        for reqs, slot in take:
            if error is not None:
                slot["error"] = error
            else:
                slot["result"] = out[k:k + len(reqs)]
            k += len(reqs)
