"""What does curate cost on top of the engine? The same prompts and sampling through
  (a) the engine called directly in a loop (llama.cpp), or a plain async httpx client (HTTP), and
  (b) curate: the generate stage through the runner (Ray actor, shards, Parquet, cache with no hits), or
      curate's HTTP engine at the same concurrency.
Each path runs --repeats times, alternating with its baseline, and medians are compared (this machine's
run-to-run noise is several percent). Prints tokens/s of each and the ratio curate/direct (target >= 0.95). For
the stage, both the stage's wall time (with Ray's actor start) and the time inside its shards are shown.

    python benchmarks/engine_overhead.py [--prompts 16] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from _common import ROOT, example_pipeline, free_port, print_table



def prompts(n: int) -> list[str]:
    lines = (ROOT / "pipelines/examples/data/mt_bench_questions.jsonl").read_text().splitlines()[:n]
    return [json.loads(line)["turns"][0] for line in lines]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each path, alternating; medians compared")
    args = ap.parse_args()
    from curate.engines.base import Request, Sampling
    from curate.engines.llama_cpp import LlamaCppEngine, embedded_model_path

    texts = prompts(args.prompts)
    reqs = [Request([{"role": "user", "content": t}], Sampling(temperature=0.8, max_tokens=args.max_tokens, seed=7))
            for t in texts]
    rows = []

    # llama.cpp: direct loop vs the generate stage, alternating, `repeats` times each (this machine's run-to-run
    # noise is several percent; medians are compared)
    from statistics import median

    from curate.pipelines.config import load_pipeline
    from curate.pipelines.runner import run_pipeline

    engine = LlamaCppEngine()
    direct, inside, wall = [], [], []
    for rep in range(args.repeats):
        start = time.perf_counter()
        comps = engine.complete(reqs)
        direct.append(time.perf_counter() - start)
        tokens = sum(c.completion_tokens for c in comps)
        with tempfile.TemporaryDirectory() as tmp:
            path = example_pipeline(Path(tmp), limit=args.prompts, shard_size=args.prompts, k=1,
                                    max_tokens=args.max_tokens)
            data = yaml.safe_load(path.read_text())
            data["stages"] = data["stages"][:2]
            data["cache_dir"] = str(Path(tmp) / "cache")  # a fresh cache: every call is made
            path.write_text(yaml.safe_dump(data))
            manifest = run_pipeline(load_pipeline(path), Path(tmp) / "run")
            wall.append(manifest["stages"][1]["seconds"])
            marker = json.loads((Path(tmp) / "run" / "_done" / "02_generate" / "part-00000.json").read_text())
            inside.append(marker["seconds"])
    del engine
    direct_s = median(direct)
    spread = lambda xs: f"{min(xs):.1f}-{max(xs):.1f} s"  # noqa: E731
    rows.append([f"llama.cpp: engine loop (baseline; {spread(direct)})", tokens, direct_s, tokens / direct_s, 1.0])
    rows.append([f"llama.cpp: generate stage, inside the shard ({spread(inside)})", tokens, median(inside),
                 tokens / median(inside), direct_s / median(inside)])
    rows.append([f"llama.cpp: generate stage, wall with Ray actor start ({spread(wall)})", tokens, median(wall),
                 tokens / median(wall), direct_s / median(wall)])

    # HTTP: plain async client vs curate's engine, same server, same concurrency
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "curate.engines.llama_server", "--model", str(embedded_model_path()),
                               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/models", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        import httpx

        async def plain():
            sem = asyncio.Semaphore(args.concurrency)
            async with httpx.AsyncClient(base_url=url, timeout=300) as client:
                async def one(r):
                    async with sem:
                        resp = await client.post("/chat/completions", json={
                            "model": "m", "messages": r.messages, "temperature": r.sampling.temperature,
                            "top_p": r.sampling.top_p, "max_tokens": r.sampling.max_tokens, "seed": r.sampling.seed})
                        return resp.json()["usage"]["completion_tokens"]
                return sum(await asyncio.gather(*(one(r) for r in reqs)))

        from curate.engines.openai_http import OpenAIHTTPConfig, OpenAIHTTPEngine

        http = OpenAIHTTPEngine(OpenAIHTTPConfig(base_url=url, model="m", concurrency=args.concurrency))
        plain_times, curate_times = [], []
        for rep in range(args.repeats):
            start = time.perf_counter()
            plain_tokens = asyncio.run(plain())
            plain_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            comps = http.complete(reqs)
            curate_times.append(time.perf_counter() - start)
            curate_tokens = sum(c.completion_tokens for c in comps)
        plain_s, curate_s = median(plain_times), median(curate_times)
    finally:
        server.terminate()
        server.wait()
    rows.append([f"HTTP: plain httpx client (baseline; {spread(plain_times)})", plain_tokens, plain_s,
                 plain_tokens / plain_s, 1.0])
    rows.append([f"HTTP: curate openai_http engine ({spread(curate_times)})", curate_tokens, curate_s,
                 curate_tokens / curate_s,
                 (curate_tokens / curate_s) / (plain_tokens / plain_s)])
    print_table(f"engine overhead, {args.prompts} MT-Bench prompts x {args.max_tokens} tokens, embedded SmolLM2, "
                f"median of {args.repeats} alternating runs",
                ["path", "tokens", "seconds", "tokens/s", "ratio vs its baseline"], rows)


if __name__ == "__main__":
    main()
