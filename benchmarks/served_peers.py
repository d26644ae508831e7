"""The peers' side of benchmarks/served_throughput.py: the same prompts through Bespoke Curator or distilabel, on
the same local server, in a Python where that peer is installed (its own virtual environment, so its pins do not
touch curate's). Prints one JSON line: {"peer", "seconds", "answers"}.

    PEER_PYTHON served_peers.py {curator|distilabel} --base-url URL --prompts FILE --concurrency 64 --max-tokens 16
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def run_curator(base_url: str, texts: list[str], concurrency: int, max_tokens: int) -> int:
    import importlib.util
    from pathlib import Path

    # tiktoken would download cl100k_base; litellm ships a copy of it
    litellm = importlib.util.find_spec("litellm")
    if litellm is not None and litellm.origin:
        tokenizers = Path(litellm.origin).parent / "litellm_core_utils" / "tokenizers"
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(tokenizers))
    os.environ.setdefault("TELEMETRY_ENABLED", "false")
    os.environ.setdefault("CURATOR_DISABLE_CACHE", "1")
    os.environ.setdefault("CURATOR_CACHE_DIR", tempfile.mkdtemp(prefix="curator-"))
    from bespokelabs import curator

    llm = curator.LLM(model_name="bench", backend="openai",
                      backend_params={"base_url": base_url, "api_key": "none", "max_retries": 1,
                                      "max_requests_per_minute": 10**7, "max_tokens_per_minute": 10**10,
                                      "max_concurrent_requests": concurrency, "require_all_responses": False},
                      generation_params={"max_tokens": max_tokens})
    out = llm(texts)
    data = getattr(out, "dataset", out)
    return len(data)


def run_distilabel(base_url: str, texts: list[str], concurrency: int, max_tokens: int) -> int:
    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    with Pipeline(name="served-bench", cache_dir=tempfile.mkdtemp(prefix="distilabel-")) as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": t} for t in texts], batch_size=concurrency)
        gen = TextGeneration(llm=OpenAILLM(model="bench", base_url=base_url, api_key="none",
                                           generation_kwargs={"max_new_tokens": max_tokens}),
                             input_batch_size=concurrency)
        load >> gen
    distiset = pipeline.run(use_cache=False)
    return sum(len(d) for d in distiset.values()) if hasattr(distiset, "values") else len(texts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("peer", choices=["curator", "distilabel"])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()
    texts = [json.loads(line)["prompt"] for line in open(args.prompts)]
    run = run_curator if args.peer == "curator" else run_distilabel
    start = time.perf_counter()
    answers = run(args.base_url, texts, args.concurrency, args.max_tokens)
    print(json.dumps({"peer": args.peer, "seconds": time.perf_counter() - start, "answers": answers}))


if __name__ == "__main__":
    main()
