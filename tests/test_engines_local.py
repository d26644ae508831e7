"""The transformers engine on the CPU with the embedded model converted to a Hugging Face folder: a pipeline
runs from YAML by changing the engine block only, and a rerun without the cache reproduces every candidate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import curate

ROOT = Path(__file__).resolve().parent.parent


def test_transformers_engine_pipeline_is_reproducible(hf_model, tmp_path):
    shutil.copytree(ROOT / "pipelines" / "examples" / "data", tmp_path / "data")
    text = (ROOT / "pipelines" / "examples" / "transformers.yaml").read_text()
    spec = tmp_path / "hf.yaml"
    spec.write_text(text.replace("model: /tmp/smollm2-hf", f"model: {hf_model}")
                    .replace("device: auto", "device: cpu").replace("max_tokens: 96", "max_tokens: 32")
                    .replace("max_tokens: 160", "max_tokens: 64") + f"cache_dir: {tmp_path / 'cache1'}\n")
    res = curate("run", spec, "--limit", "2", "--run-dir", tmp_path / "a")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    for s in manifest["stages"]:
        assert s["in"] == s["out"] + s["dropped"] + s["quarantined"], s
    gen = next(s for s in manifest["stages"] if s["stage"] == "generate")
    assert gen["model_calls"] == 4 and gen["out"] == 2
    first = pq.read_table(tmp_path / "a" / "02_generate").to_pylist()
    for row in first:
        for cand in row["candidates"]:
            assert cand["response"] and cand["n_tokens"] > 0 and cand["model"] == "smollm2-hf"
    # judgments are free text here (no grammar): each is either parsed or recorded as a failure, never defaulted
    judged = pq.read_table(tmp_path / "a" / "03_judge").to_pylist()
    for j in (j for r in judged for c in r["candidates"] for j in c["judgments"]):
        assert (j["score"] is not None) == j["parse_ok"]
    # a fresh cache: every call is made again, and the sampled candidates come out the same (generation only)
    data = yaml.safe_load(spec.read_text().replace("cache1", "cache2"))
    data["stages"] = data["stages"][:2]
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    res = curate("run", spec, "--limit", "2", "--run-dir", tmp_path / "b")
    assert res.returncode == 0, res.stderr[-3000:]
    again = pq.read_table(tmp_path / "b" / "02_generate").to_pylist()
    assert [[c["response"] for c in r["candidates"]] for r in again] == [
        [c["response"] for c in r["candidates"]] for r in first]


def test_row_sampler_draws_each_row_from_its_own_seeded_top_p_distribution():
    """Sampled rows in one batch: each follows softmax(logits / T) cut to top_p, independent of its neighbours;
    a greedy row in the same batch keeps its scores."""
    import torch

    from curate.engines.base import Sampling
    from curate.engines.transformers_engine import RowSampler

    logits = torch.randn(1, 40, generator=torch.Generator().manual_seed(3))
    n = 8000
    samplings = [Sampling(temperature=1.3, top_p=0.9, seed=s) for s in range(n)] + [Sampling(temperature=0)]
    scores = logits.repeat(n + 1, 1)
    out = RowSampler(samplings, "cpu")(None, scores.clone())
    assert torch.equal(out[-1], logits[0])
    drawn = torch.bincount(out[:-1].argmax(-1), minlength=40).float() / n
    p = torch.softmax(logits[0] / 1.3, -1)
    sorted_p = p.sort(descending=True).values
    cut = sorted_p[((sorted_p.cumsum(0) - sorted_p) < 0.9).sum() - 1]
    q = torch.where(p >= cut, p, torch.zeros_like(p))
    q /= q.sum()
    assert drawn[q == 0].sum() == 0
    assert 0.5 * (drawn - q).abs().sum() < 0.05
    # the same seed draws the same token whatever else is in the batch; the next step draws anew
    alone = RowSampler([samplings[5]], "cpu")(None, logits.clone())
    assert alone.argmax() == out[5].argmax()
    sampler = RowSampler(samplings[:200], "cpu")
    first = sampler(None, logits.repeat(200, 1)).argmax(-1)
    second = sampler(None, logits.repeat(200, 1)).argmax(-1)
    assert (first != second).any()


def test_ray_llm_gate_sends_each_round_of_all_running_shards_as_one_batch():
    """The ray_llm engine's gate (runner side): shards run in threads; each round of their engine calls reaches
    the engine as one batch once every shard waits or is done. The batches here go to the embedded llama.cpp."""
    import threading

    from curate.engines.base import Request, Sampling
    from curate.engines.llama_cpp import LlamaCppEngine
    from curate.engines.ray_llm import Gate

    class Recording:
        def __init__(self):
            self.llm, self.batches = LlamaCppEngine(), []

        def run(self, requests):
            self.batches.append(len(requests))
            return self.llm.complete(requests)

    gate, engine, answers = Gate(), Recording(), {}

    def shard(n: int, rounds: int) -> None:
        try:
            for r in range(rounds):
                reqs = [Request([{"role": "user", "content": f"Say the number {n}{r}{i}."}],
                                Sampling(temperature=0, max_tokens=4)) for i in range(n)]
                answers[(n, r)] = [c.text for c in gate.submit(engine, reqs)]
        finally:
            gate.leave()

    threads = [threading.Thread(target=shard, args=(n, rounds)) for n, rounds in ((1, 2), (2, 2), (3, 1))]
    gate.expect(len(threads))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    # round 1: all three shards (1 + 2 + 3 requests); round 2: the two shards with a second round (1 + 2)
    assert engine.batches == [6, 3]
    assert all(len(answers[(n, r)]) == n and all(a is not None for a in answers[(n, r)])
               for n, r in ((1, 0), (1, 1), (2, 0), (2, 1), (3, 0)))
    # outside any runner, a call is a batch of its own at once
    assert len(gate.submit(engine, [Request([{"role": "user", "content": "Hi"}], Sampling(max_tokens=2))])) == 1
    assert engine.batches[-1] == 1


def test_coalescer_merges_the_calls_of_concurrent_batches_into_one_engine_call():
    """What vLLM offline gets from a worker running many batches at once: one large call, each caller's answers
    in its own order (here on the real embedded llama.cpp model, greedy, so answers can be compared)."""
    import threading

    from curate.engines.base import Request, Sampling
    from curate.engines.coalesce import Coalescer
    from curate.engines.llama_cpp import LlamaCppEngine

    engine = LlamaCppEngine(n_ctx=512)
    asks = [[Request([{"role": "user", "content": f"Say the number {i}{j}."}], Sampling(temperature=0, max_tokens=4))
             for j in range(2)] for i in range(4)]
    direct = [engine.complete(a) for a in asks]
    coalescer = Coalescer(engine.complete, max_batch=8, idle_s=0.5)
    got: dict[int, list] = {}
    start = threading.Barrier(4)

    def ask(i: int) -> None:
        start.wait()
        got[i] = coalescer.complete(asks[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert coalescer.requests == 8 and coalescer.calls == 1
    assert [[c.text for c in got[i]] for i in range(4)] == [[c.text for c in d] for d in direct]
