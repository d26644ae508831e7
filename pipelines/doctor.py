"""`curate validate --engines`: load each engine a pipeline uses and answer one real prompt, before a long run.

Each engine is tried in a process of its own (`python -m curate.pipelines.doctor PIPELINE ENGINE`), so an engine
that crashes the process (a native kernel bug, an instruction the CPU lacks) is reported with its signal instead of
taking the check down. The prompt is a few hundred tokens: a one-token prompt can pass where a real one crashes
(llama.cpp's AMX kernels did exactly that). The answer is not cached, and nothing is written.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

#: ~300 tokens of the kind of text a judge reads, so prompt evaluation runs in full-size batches
PROBE = (
    "You are checking a preference dataset. Read the question and the two answers below, then say in one short "
    "sentence which answer is more helpful and why.\n\nQuestion: " + " ".join(
        f"Step {i}: explain how a reward model learns from pairs of chosen and rejected answers, and why the pairs "
        "must be checked for ties, duplicates and contamination before training." for i in range(1, 7))
    + "\n\nAnswer A: It learns a score so that chosen answers score higher than rejected ones.\n"
    "Answer B: It memorizes the chosen answers.\n"
)


def probe(pipeline_path: Path, engine: str) -> dict:
    """Build the engine (no response cache) and answer PROBE; what it took."""
    from curate.engines.base import Request, Sampling
    from curate.engines.config import build_engine
    from curate.pipelines.config import load_pipeline

    cfg = load_pipeline(pipeline_path).engines[engine]
    start = time.perf_counter()
    model = build_engine(cfg, None)
    request = Request([{"role": "user", "content": PROBE}], Sampling(temperature=0.0, max_tokens=16))
    (answer,) = model.complete([request])
    return {"engine": engine, "kind": cfg.kind, "error": answer.error, "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens, "seconds": round(time.perf_counter() - start, 2),
            "text": (answer.text or "")[:60]}


def check(pipeline_path: Path, engines: list[str], timeout: float = 600) -> list[tuple[str, bool, str]]:
    """(engine, ok, one line) for each engine, each probed in its own process."""
    out = []
    for name in engines:
        try:
            res = subprocess.run([sys.executable, "-m", "curate.pipelines.doctor", str(pipeline_path), name],
                                 capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            out.append((name, False, f"no answer in {timeout:.0f} s"))
            continue
        if res.returncode < 0:
            sig = signal.Signals(-res.returncode).name
            out.append((name, False, f"the engine's process died with {sig} on a {len(PROBE.split())}-word prompt"))
            continue
        lines = res.stdout.strip().splitlines()
        try:
            got = json.loads(lines[-1])
        except (IndexError, ValueError):
            tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
            out.append((name, False, f"exit {res.returncode}: {tail}"))
            continue
        if got["error"]:
            out.append((name, False, f"{got['kind']}: the probe prompt failed: {got['error']}"))
        else:
            out.append((name, True, f"{got['kind']}: {got['prompt_tokens']} prompt tokens + {got['completion_tokens']} "
                                    f"answered in {got['seconds']} s (load included)"))
    return out


if __name__ == "__main__":
    print(json.dumps(probe(Path(sys.argv[1]), sys.argv[2])))
