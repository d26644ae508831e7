"""What does the README's served example cost, and what would it cost through a batch API or with the cache warm?

The served-model example (pipelines/examples/served_model.yaml: load -> generate k=4 -> judge -> pairs ->
export) on the embedded SmolLM2 behind llama-cpp-python's OpenAI-compatible server, its engine named
`gpt-4o-mini` so curate prices it from its packaged table (the tokens are SmolLM2's, the prices gpt-4o-mini's:
what the same token counts would cost there). In one run of this script:
  1. `curate estimate` (before anything runs): requests, prompt tokens, completion tokens and cost at most;
  2. `curate run` with a cold cache: calls, tokens and cost at list price, from the manifest; the same tokens at
     the batch price;
  3. `curate run` with `kind: openai_batch` against tests/batch_api_server.py (OpenAI's Batch API, each line
     answered by the same llama.cpp server), its own cold cache: calls, tokens, the cost the run priced at the
     batch price, provider batches sent and wall time (the local server answers at once: a provider takes up to
     24 hours);
  4. `curate run` again with the cache warm (a new run directory): calls, cost, what the cache saved;
  5. with --peer-python (a Python where bespokelabs-curator is installed): Bespoke Curator sending the same
     generation requests (the example's prompts, k=4, the same max_tokens and temperature) to the same server
     as `gpt-4o-mini`, and the tokens and cost it reports (its `cost_info`, litellm's prices).
Canned numbers are never used: every figure comes from a run on this machine.

    python benchmarks/cost.py [--limit 10] [--peer-python /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from _common import CURATE, ROOT, free_port, print_table

MODEL = "gpt-4o-mini"
PEER = r'''
import json, os, sys, tempfile
os.environ.setdefault("TELEMETRY_ENABLED", "false")
os.environ.setdefault("CURATOR_DISABLE_CACHE", "1")
os.environ.setdefault("CURATOR_CACHE_DIR", tempfile.mkdtemp(prefix="curator-"))
import importlib.util
from pathlib import Path
spec = importlib.util.find_spec("litellm")
if spec is not None and spec.origin:  # tiktoken would download cl100k_base; litellm ships a copy
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"))
from bespokelabs import curator
args = json.loads(sys.argv[1])
llm = curator.LLM(model_name=args["model"], backend="openai",
                  backend_params={"base_url": args["base_url"], "api_key": "none", "max_retries": 1,
                                  "max_concurrent_requests": 16, "require_all_responses": False},
                  generation_params={"max_tokens": args["max_tokens"], "temperature": args["temperature"]})
out = llm(args["texts"])
print(json.dumps({"requests": len(args["texts"]), "input_tokens": out.token_usage.input,
                  "output_tokens": out.token_usage.output, "usd": out.cost_info.total_cost}))
'''


def start_server() -> tuple[subprocess.Popen, str]:
    from curate.engines.llama_cpp import embedded_model_path

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "curate.engines.llama_server", "--model", str(embedded_model_path()),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/models", timeout=2)
            return proc, url
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise SystemExit("the llama.cpp server did not start") from None
            time.sleep(0.3)


def pipeline(folder: Path, base_url: str) -> Path:
    example = ROOT / "pipelines" / "examples" / "served_model.yaml"
    data = yaml.safe_load(example.read_text())
    data["engines"]["default"].update(base_url=base_url, model=MODEL, concurrency=8)
    data["stages"][0]["load"]["path"] = str(example.parent / data["stages"][0]["load"]["path"])
    path = folder / "served.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(path: Path, run_dir: Path, limit: int, env: dict) -> dict:
    res = subprocess.run([CURATE, "run", str(path), "--limit", str(limit), "--run-dir", str(run_dir)],
                         capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"curate run failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return json.loads((run_dir / "manifest.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--peer-python", help="a Python with bespokelabs-curator installed (its own venv)")
    args = ap.parse_args()
    from curate.engines.prices import packaged

    price = packaged()[MODEL]
    proc, base_url = start_server()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="cost-") as tmp:
            folder = Path(tmp)
            env = {**os.environ, "CURATE_CACHE_DIR": str(folder / "cache"), "PREFECT_HOME": str(folder / "prefect")}
            path = pipeline(folder, base_url)
            est = subprocess.run([CURATE, "estimate", str(path), "--limit", str(args.limit)], capture_output=True,
                                 text=True, env=env)
            from curate.pipelines.config import load_pipeline
            from curate.pipelines.estimate import estimate

            os.environ["CURATE_CACHE_DIR"] = env["CURATE_CACHE_DIR"]
            e = estimate(load_pipeline(path).with_limit(args.limit))
            assert est.returncode == 0, est.stderr
            rows.append(["curate estimate (at most)", e["requests"], e["prompt_tokens"], e["completion_tokens_at_most"],
                         f"${e['usd_at_most']:.5f}", f"${e['batch_usd']:.5f}", "-"])
            cold = run(path, folder / "cold", args.limit, env)
            t = cold["cost"]["tokens"]
            calls = sum(s["model_calls"] for s in cold["stages"])
            batch = price.cost(t["prompt_tokens"], t["completion_tokens"], batch=True)
            rows.append(["curate run, cold cache", calls, t["prompt_tokens"], t["completion_tokens"],
                         f"${cold['cost']['usd']:.5f}", f"${batch:.5f}", "-"])
            for s in cold["stages"]:
                if s.get("cost"):
                    st = s["tokens"]
                    rows.append([f"  of which {s['id']}", s["model_calls"], st["prompt_tokens"],
                                 st["completion_tokens"], f"${s['cost']['usd']:.5f}",
                                 f"${price.cost(st['prompt_tokens'], st['completion_tokens'], batch=True):.5f}", "-"])
            # the same run through a batch API: `kind: openai_batch`, against the local server that speaks OpenAI's
            # Batch API and hands each line to the same llama.cpp server (tests/batch_api_server.py)
            sys.path.insert(0, str(ROOT / "tests"))
            from batch_api_server import serve

            batch_server, state = serve(backend=base_url)
            data = yaml.safe_load(path.read_text())
            data["engines"]["default"].update(
                kind="openai_batch", base_url=f"http://127.0.0.1:{batch_server.server_address[1]}/v1")
            batch_path = folder / "served_batch.yaml"
            batch_path.write_text(yaml.safe_dump(data, sort_keys=False))
            started = time.perf_counter()
            batched = run(batch_path, folder / "batch", args.limit,
                          {**env, "CURATE_CACHE_DIR": str(folder / "batch-cache")})
            wall = time.perf_counter() - started
            batch_server.shutdown()
            t = batched["cost"]["tokens"]
            sent = [e for e in state.log if e["op"] == "create"]
            rows.append([f"curate run, kind: openai_batch ({len(sent)} provider batches, {wall:.0f} s)",
                         sum(s["model_calls"] for s in batched["stages"]), t["prompt_tokens"], t["completion_tokens"],
                         f"${batched['cost']['usd']:.5f}", "(this is it)", "-"])
            warm = run(path, folder / "warm", args.limit, env)
            rows.append(["curate run, warm cache", sum(s["model_calls"] for s in warm["stages"]), 0, 0,
                         f"${warm['cost']['usd']:.5f}", "-", f"${warm['cost']['saved_usd']:.5f}"])
            if args.peer_python:
                texts = [json.loads(line)["turns"][0] for line in (ROOT / "pipelines/examples/data/"
                                                                    "mt_bench_questions.jsonl").read_text().splitlines()]
                gen = cold["config"]["stages"][1]["generate"]["models"][0]
                texts = [t for t in texts[: args.limit] for _ in range(gen["k"])]
                res = subprocess.run([args.peer_python, "-c", PEER, json.dumps(
                    {"model": MODEL, "base_url": base_url, "texts": texts, "max_tokens": gen["max_tokens"],
                     "temperature": gen["temperature"]})], capture_output=True, text=True, timeout=1800)
                if res.returncode:
                    print(f"Curator did not run: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                else:
                    got = json.loads(res.stdout.strip().splitlines()[-1])
                    g = next(s for s in cold["stages"] if s["id"] == "02_generate")
                    rows.append(["curate: generate stage alone", g["model_calls"], g["tokens"]["prompt_tokens"],
                                 g["tokens"]["completion_tokens"], f"${g['cost']['usd']:.5f}", "-", "-"])
                    rows.append(["Bespoke Curator, same generation requests", got["requests"], got["input_tokens"],
                                 got["output_tokens"], f"${got['usd']:.5f}", "-", "-"])
    finally:
        proc.kill()
    print_table(f"README served example, --limit {args.limit}, SmolLM2 tokens priced as {MODEL} ({price.source}): "
                f"${price.input}/M in, ${price.output}/M out, batch ${price.rates(True)[0] * 1e6}/M in, "
                f"${price.rates(True)[1] * 1e6}/M out",
                ["run", "calls", "prompt tokens", "completion tokens", "cost", "at batch price", "cache saved"], rows)


if __name__ == "__main__":
    main()
