"""Judge calls with retries: an output that does not parse is asked again with a format reminder (a new seed,
and a nonzero temperature when the first try was greedy, since greedy decoding would repeat itself); after the
retries it is recorded as a parse failure with the raw text, never given a default."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from engines.base import Completion, Request, Sampling
from judges.parse import PARSERS, Parsed
from judges.templates import Template

RETRY_TEMPERATURE = 0.7


def request(template: Template, messages: list[dict[str, str]], sampling: Sampling, attempt: int,
            grammar: bool) -> Request:
    if attempt:
        messages = template.with_reminder(messages)
        sampling = replace(sampling, seed=sampling.seed + attempt,
                           temperature=sampling.temperature or RETRY_TEMPERATURE)
    return Request(messages, sampling, template.grammar if grammar else None)


def ask(engine, template: Template, prompts: list[list[dict[str, str]]], sampling: Sampling, retries: int,
        grammar: bool) -> list[tuple[Completion, Parsed | None]]:
    """(completion, parsed) per prompt; parsed is None when the engine itself failed."""
    parse: Callable[..., Parsed] = PARSERS[template.parser]
    results: list[tuple[Completion, Parsed | None] | None] = [None] * len(prompts)
    pending = list(range(len(prompts)))
    for attempt in range(retries + 1):
        if not pending:
            break
        comps = engine.complete([request(template, prompts[i], sampling, attempt, grammar) for i in pending])
        retry = []
        for i, comp in zip(pending, comps, strict=True):
            if not comp.ok:
                results[i] = (comp, None)
                continue
            parsed = parse(comp.text, *template.scale)
            results[i] = (comp, parsed)
            if not parsed.ok:
                retry.append(i)
        pending = retry
    return results  # type: ignore[return-value]
