"""A scripted engine for the fast test tier: the same `Engine` protocol as the real ones, answering what the test
says (a function of the request). It tests parsers, judges' arithmetic and stage logic in milliseconds; it never
stands in for a model where a test claims quality or end-to-end behaviour (those tests run the real engines)."""

from __future__ import annotations

from collections.abc import Callable

from curate.engines.base import Completion, Request
from curate.engines.cache import CachedEngine


class ScriptedEngine:
    def __init__(self, answer: Callable[[Request], str | None], model_name: str = "scripted"):
        self.answer, self.model_name = answer, model_name
        self.identity = {"kind": "scripted", "model": model_name}
        self.requests: list[Request] = []

    def complete(self, requests: list[Request]) -> list[Completion]:
        self.requests += requests
        out = []
        for r in requests:
            text = self.answer(r)
            out.append(Completion(text=text, finish_reason="stop", prompt_tokens=1, completion_tokens=1)
                       if text is not None else Completion(text=None, error="scripted failure"))
        return out


def scripted(answer: Callable[[Request], str | None], capabilities: frozenset[str] = frozenset(),
             model_name: str = "scripted") -> tuple[CachedEngine, ScriptedEngine]:
    """(the engine as stages get it: behind the cache wrapper, no cache; the scripted engine, to inspect)."""
    inner = ScriptedEngine(answer, model_name)
    engine = CachedEngine(lambda: inner, identity=inner.identity, model_name=model_name, cache=None)
    engine.capabilities = capabilities
    return engine, inner
