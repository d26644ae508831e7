"""The engine interface: chat messages + sampling params in, text + token counts out, batched.

Nothing outside engines/ knows which engine runs; stages hold a `CachedEngine` and call `complete`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, a container's cpuset, a test worker's
    share) and a cgroup v2 CPU quota (`docker --cpus`), both of which `os.cpu_count()` ignores. llama.cpp's
    threads busy-wait, so more threads than cores slows every one of them."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS)
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


@dataclass(frozen=True)
class Request:
    messages: list[dict[str, str]]
    sampling: Sampling = field(default_factory=Sampling)
    # A GBNF grammar (llama.cpp) constraining the output; engines without constrained decoding ignore it and
    # the caller's parser decides whether the free text is usable.
    grammar: str | None = None


def with_images(messages: list[dict], images: list[str]) -> list[dict]:
    """The messages with images (data URLs) attached to the last user turn as OpenAI-style content parts, the
    form vLLM (offline `LLM.chat` and `vllm serve`), llama.cpp's multimodal handler and hosted APIs all read.
    The images are part of the messages, so the response cache's key covers their bytes."""
    out = [dict(m) for m in messages]
    last = max(i for i, m in enumerate(out) if m["role"] == "user")
    out[last]["content"] = [{"type": "text", "text": out[last]["content"]}] + [
        {"type": "image_url", "image_url": {"url": url}} for url in images]
    return out


@dataclass
class Completion:
    text: str | None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    error: str | None = None
    #: the failure may not recur (a timeout, a 5xx or 429 after every retry, a server's garbled reply): such an
    #: answer is never cached, and the shard that got it is redone by `--resume` or a rerun. A row error
    #: (a prompt too long for the context, a request the server rejects) is cached like an answer: asking again
    #: gives the same error.
    transient: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


class Engine(Protocol):
    #: what the answer depends on besides the request (engine kind, model file, ...); part of the cache key
    identity: dict[str, Any]
    #: short model name recorded on candidates and judgments
    model_name: str

    def complete(self, requests: list[Request]) -> list[Completion]:
        """One completion per request, in order; a failed request is a Completion with `error` set."""
        ...


class EngineError(RuntimeError):
    """The engine cannot answer any request (unreachable, unauthorized, a model it does not know): the stage stops
    and the run fails, instead of quarantining every row into an empty dataset. The message says what to fix."""


class EngineUnavailable(RuntimeError):
    """The engine cannot start here (missing package or model file); the message says what to install."""
