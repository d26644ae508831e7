"""GPU smoke test and overhead check for the engines that run on a GPU machine, with no Ray, Prefect or hub:
only torch, transformers, pydantic and (when installed) vLLM are needed, so it runs on a bare GPU image.

For each engine present (transformers always; vLLM when importable):
  1. generate k sampled candidates for N MT-Bench prompts through curate's engine (batched, a seed per request);
  2. the same again, in the same order (a rerun: identical texts expected) and in reverse order (other batch
     companions: float noise of another batch shape may change a text after a near-tie);
  3. judge every candidate with the MT-Bench single-answer template (greedy) and count what parses;
and, as the baseline measured in the same run, the engine's own library called directly (transformers'
`generate` over the same batches with one seed per batch). Prints tokens/s, the ratio curate/direct, the
reproducibility share and the judge's parse rate; writes the numbers as JSON when --out is given.

    python benchmarks/gpu_smoke.py --model HF_FOLDER [--prompts 64 --k 4 --max-tokens 128 --batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def questions(n: int) -> list[str]:
    lines = (ROOT / "pipelines/examples/data/mt_bench_questions.jsonl").read_text().splitlines()
    texts = [json.loads(line)["turns"][0] for line in lines]
    return [texts[i % len(texts)] for i in range(n)]


def direct_transformers(engine, requests, batch_size: int) -> tuple[float, int]:
    """The baseline: transformers' own sampling over the same batches, one seed per batch."""
    import torch

    tok, model = engine.tok, engine.model
    start, tokens = time.perf_counter(), 0
    for b in range(0, len(requests), batch_size):
        chunk = requests[b:b + batch_size]
        texts = [tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in chunk]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(engine.device)
        torch.manual_seed(b)
        s = chunk[0].sampling
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=s.max_tokens, do_sample=True, temperature=s.temperature,
                                 top_p=s.top_p, pad_token_id=tok.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            tokens += row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
    if engine.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, tokens


def run_engine(name: str, engine, args, direct=None) -> list[dict]:
    from curate.engines.base import Request, Sampling
    from curate.judges.calls import ask
    from curate.judges.templates import load_template, template_path

    qs = questions(args.prompts)
    requests = [Request([{"role": "user", "content": q}],
                        Sampling(temperature=0.8, top_p=0.95, max_tokens=args.max_tokens, seed=1000 * i + j))
                for i, q in enumerate(qs) for j in range(args.k)]
    def timed(reqs):
        start = time.perf_counter()
        comps = engine.complete(reqs)
        return comps, time.perf_counter() - start

    # a whole pass first, so no pass measured below pays for first calls (kernels, allocator, clocks); then
    # curate and the baseline alternate, and each keeps its best time
    comps, _ = timed(requests)
    rerun, curate_s = timed(requests)
    same = sum(a.text == b.text for a, b in zip(comps, rerun, strict=True)) / len(comps)
    direct_runs = [direct(engine, requests, args.batch_size)] if direct is not None else []
    reversed_, reversed_s = timed(requests[::-1])
    same_rev = sum(a.text == b.text for a, b in zip(comps, reversed_[::-1], strict=True)) / len(comps)
    curate_s = min(curate_s, reversed_s)
    if direct is not None:
        direct_runs.append(direct(engine, requests, args.batch_size))
    tokens = sum(c.completion_tokens for c in rerun if c.ok)
    rows = [{"engine": name, "what": "generate through curate's engine (best of 2)", "requests": len(requests),
             "tokens": tokens, "seconds": curate_s, "tokens_per_s": tokens / curate_s,
             "failed": sum(not c.ok for c in comps), "same_text_rerun": same,
             "same_text_reversed_order": same_rev}]
    if direct_runs:
        direct_s, direct_tokens = min(direct_runs)
        rows.append({"engine": name, "what": "generate, library called directly (baseline, best of 2)",
                     "requests": len(requests), "tokens": direct_tokens, "seconds": direct_s,
                     "tokens_per_s": direct_tokens / direct_s})
        rows[0]["ratio_vs_direct"] = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    template = load_template(template_path("mt_bench_single_v1"))
    prompts = [template.render(q, c.text or "") for q, c in zip([q for q in qs for _ in range(args.k)], comps)]
    start = time.perf_counter()
    results = ask(engine, template, prompts, Sampling(temperature=0.0, max_tokens=160), retries=1,
                  grammar=name == "vllm")
    judge_s = time.perf_counter() - start
    parsed = sum(1 for _, p in results if p is not None and p.ok)
    rows.append({"engine": name, "what": "judge (mt_bench_single_v1, greedy, 1 retry)", "requests": len(prompts),
                 "seconds": judge_s, "parsed": parsed, "parse_rate": parsed / len(prompts)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a local Hugging Face model folder")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import importlib.util

    import torch

    from curate.engines.transformers_engine import TransformersConfig, TransformersEngine
    from curate.engines.vllm_offline import VLLMConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}; torch {torch.__version__}")
    rows = []
    hf = TransformersEngine(TransformersConfig(model=args.model, device=device, dtype=args.dtype,
                                               batch_size=args.batch_size))
    rows += run_engine("transformers", hf, args, direct=direct_transformers)
    del hf
    if importlib.util.find_spec("vllm") is not None:
        from curate.engines.vllm_offline import VLLMEngine

        rows += run_engine("vllm", VLLMEngine(VLLMConfig(model=args.model, gpu_memory_utilization=0.5)), args)
    else:
        print("vllm is not installed here: the vLLM engine is skipped")
    from _common import print_table

    keys = ["engine", "what", "requests", "tokens", "seconds", "tokens_per_s", "ratio_vs_direct",
            "same_text_rerun", "same_text_reversed_order", "parse_rate", "failed"]
    print_table(f"GPU smoke ({device}, {args.prompts} prompts x k={args.k}, max_tokens={args.max_tokens}, "
                f"batch {args.batch_size})", keys, [[r.get(k, "") for k in keys] for r in rows])
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    if any(r.get("failed") for r in rows):
        sys.exit("smoke failed: a generation failed")


if __name__ == "__main__":
    main()
