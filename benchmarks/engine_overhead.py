"""What does curate cost on top of the engine? The same prompts and sampling through
  (a) the engine called directly in a loop (llama.cpp, in a process of its own), or a plain async httpx client
      (HTTP), and
  (b) curate: `curate run` of load -> generate in its own process (shards, Parquet, cache with no hits), or
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

from _common import CURATE, ROOT, example_pipeline, free_port, print_table



def prompts(n: int) -> list[str]:
    lines = (ROOT / "pipelines/examples/data/mt_bench_questions.jsonl").read_text().splitlines()[:n]
    return [json.loads(line)["turns"][0] for line in lines]


def direct_child(n: int, max_tokens: int) -> None:
    """The baseline in a process of its own: the engine's own loop over the same requests (model load excluded,
    as the stage's shard time excludes it too)."""
    from curate.engines.llama_cpp import LlamaCppEngine

    engine = LlamaCppEngine()
    start = time.perf_counter()
    comps = engine.complete(requests(n, max_tokens))
    print(json.dumps({"seconds": time.perf_counter() - start, "tokens": sum(c.completion_tokens for c in comps)}))


def requests(n: int, max_tokens: int):
    from curate.engines.base import Request, Sampling

    return [Request([{"role": "user", "content": t}], Sampling(temperature=0.8, max_tokens=max_tokens, seed=7))
            for t in prompts(n)]


def stage_run(tmp: Path, n: int, max_tokens: int) -> dict:
    """`curate run` of load -> generate (a fresh cache: every call is made), as a user runs it: its wall time, the
    generate stage's seconds (model load included) and the time inside its shard."""
    path = example_pipeline(tmp, limit=n, shard_size=n, k=1, max_tokens=max_tokens)
    data = yaml.safe_load(path.read_text())
    data["stages"] = data["stages"][:2]
    data["cache_dir"] = str(tmp / "cache")
    path.write_text(yaml.safe_dump(data))
    start = time.perf_counter()
    subprocess.run([CURATE, "run", str(path), "--run-dir", str(tmp / "run")], check=True, capture_output=True)
    wall = time.perf_counter() - start
    manifest = json.loads((tmp / "run" / "manifest.json").read_text())
    marker = json.loads((tmp / "run" / "_done" / "02_generate" / "part-00000.json").read_text())
    return {"wall": wall, "stage": manifest["stages"][1]["seconds"], "shard": marker["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each path, alternating; medians compared")
    ap.add_argument("--direct-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.direct_child:
        return direct_child(args.prompts, args.max_tokens)
    from statistics import median

    from curate.engines.llama_cpp import embedded_model_path

    reqs = requests(args.prompts, args.max_tokens)
    rows = []
    # llama.cpp: the engine's loop and `curate run`, each in its own process (one llama.cpp thread pool at a
    # time on the machine's cores), alternating, `repeats` times each; medians are compared
    direct, runs = [], []
    for rep in range(args.repeats):
        out = subprocess.run([sys.executable, __file__, "--direct-child", "--prompts", str(args.prompts),
                              "--max-tokens", str(args.max_tokens)], check=True, capture_output=True, text=True)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        direct.append(got["seconds"])
        tokens = got["tokens"]
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(stage_run(Path(tmp), args.prompts, args.max_tokens))
    direct_s = median(direct)
    spread = lambda xs: f"{min(xs):.1f}-{max(xs):.1f} s"  # noqa: E731
    rows.append([f"llama.cpp: engine loop, own process (baseline; {spread(direct)})", tokens, direct_s,
                 tokens / direct_s, 1.0])
    for key, label in (("shard", "generate stage, inside its shard"), ("stage", "generate stage, with model load"),
                       ("wall", "curate run load -> generate, wall")):
        xs = [r[key] for r in runs]
        rows.append([f"llama.cpp: {label} ({spread(xs)})", tokens, median(xs), tokens / median(xs),
                     direct_s / median(xs)])

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
