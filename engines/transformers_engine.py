"""transformers engine (CPU or GPU): the model's chat template, and batched generation in which every sampled
request keeps its own seed.

Batching decides GPU throughput, and reproducibility decides the response cache. Both hold: requests are
batched (left-padded, `batch_size` at a time) whether greedy or sampled, and each sampled row draws its tokens
from its own stream seeded with the request's seed (`RowSampler`), so a request's sample does not depend on
the rest of its batch's random draws. The same requests in the same order (a rerun of the same shard) give the
same text. Float noise from batch shape remains (a padded row's logits differ in the last bits, much more in
bfloat16 on a GPU), so the same request in a different batch can drift after a near-tie; the response cache
keeps the first answer, so a resumed run does not change what it already wrote. No constrained decoding here: judges fall
back to free text and the parser (with its retry and format reminder).
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from curate.engines.base import Completion, EngineUnavailable, Request, Sampling
from curate.engines.cache import CachedEngine, ResponseCache
from curate.engines.spec import EngineBlock, EngineSpec, model_identity

INSTALL = "pip install 'curate[hf]' (transformers and torch)"


class TransformersConfig(EngineBlock):
    """transformers on CPU or GPU: a local Hugging Face model folder; free-text judging (no grammars)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["transformers"] = "transformers"
    model: str
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    #: greedy requests per generate() call
    batch_size: int = Field(8, ge=1)

    def capabilities(self) -> frozenset[str]:
        return frozenset()


def check_available(model: str) -> None:
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None:
        raise EngineUnavailable(f"transformers is not installed; run: {INSTALL}")
    path = Path(model).expanduser()
    if not (path / "config.json").exists():
        raise EngineUnavailable(f"{path} is not a local Hugging Face model folder (no config.json)")


M32 = 0xFFFFFFFF


def _mulmod32(x, c: int):
    """(x * c) mod 2**32 for int64 tensors holding 32-bit values, in 16-bit halves so nothing overflows."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & M32


def fmix32(x):
    """MurmurHash3's finalizer on int64 tensors holding 32-bit values: a counter-based random number source."""
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mulmod32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


class RowSampler:
    """A logits processor for `generate(do_sample=False)`: each sampled row gets a one-hot score on the token it
    draws, so the greedy step picks it; greedy rows pass through untouched.

    The draw is Gumbel-max over the temperature- and top-p-shaped logits, with uniforms hashed from (the row's
    seed, the step, the token id): a counter-based generator, so every row has its own seeded stream and the
    whole batch is drawn in a few vectorized kernels (a torch.Generator per row costs a launch per row per step).
    """

    def __init__(self, samplings: list[Sampling], device: str):
        import torch

        self.torch = torch
        rows = [i for i, s in enumerate(samplings) if s.temperature > 0]
        self.rows = torch.tensor(rows, device=device, dtype=torch.long)
        self.step = 0
        if not rows:
            return
        seeds = torch.tensor([[samplings[i].seed & M32, (samplings[i].seed >> 32) & M32] for i in rows],
                             dtype=torch.long, device=device)
        self.key = fmix32(fmix32(seeds[:, 0]) ^ seeds[:, 1]).unsqueeze(1)
        self.temp = torch.tensor([samplings[i].temperature for i in rows], device=device).unsqueeze(1)
        top_p = [samplings[i].top_p for i in rows]
        self.top_p = torch.tensor(top_p, device=device).unsqueeze(1) if min(top_p) < 1 else None

    def __call__(self, input_ids, scores):
        self.step += 1
        if not len(self.rows):
            return scores
        torch = self.torch
        if self.step == 1:
            vocab = torch.arange(scores.shape[1], device=scores.device, dtype=torch.long)
            self.token_hash = fmix32(vocab + 0x68E31DA4).unsqueeze(0)
        logits = scores[self.rows].float() / self.temp
        logp = torch.log_softmax(logits, dim=-1)
        step_key = fmix32((self.key + self.step * 0x9E3779B9) & M32)
        bits = fmix32(self.token_hash ^ step_key)
        u = ((bits >> 9).to(torch.float32) + 0.5) / float(1 << 23)  # in (0, 1): 23 bits are exact in float32
        perturbed = logp - torch.log(-torch.log(u))
        if self.top_p is not None:
            # keep the most probable tokens until their mass reaches top_p, and every token as probable as the
            # last one kept: a cut by value, so tied probabilities (common in bfloat16) do not depend on the
            # order an unstable GPU sort leaves them in
            probs = logp.exp()
            sorted_p = probs.sort(dim=-1, descending=True).values
            kept = ((sorted_p.cumsum(-1) - sorted_p) < self.top_p).sum(-1, keepdim=True)
            perturbed = perturbed.masked_fill(probs < sorted_p.gather(1, kept - 1), float("-inf"))
        choice = perturbed.argmax(-1)
        onehot = torch.full((len(self.rows), scores.shape[1]), float("-inf"), device=scores.device,
                            dtype=scores.dtype)
        onehot.scatter_(1, choice.unsqueeze(1), 0.0)
        scores[self.rows] = onehot
        return scores


class TransformersEngine:
    def __init__(self, cfg):
        check_available(cfg.model)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self._torch = torch
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = device
        self.tok = AutoTokenizer.from_pretrained(cfg.model, local_files_only=True)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype, local_files_only=True).to(device)
        self.model.eval()

    def complete(self, requests: list[Request]) -> list[Completion]:
        out: list[Completion | None] = [None] * len(requests)
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            by_length[r.sampling.max_tokens].append(i)
        for idx in by_length.values():
            for start in range(0, len(idx), self.cfg.batch_size):
                chunk = idx[start:start + self.cfg.batch_size]
                for i, comp in zip(chunk, self._safe([requests[i] for i in chunk]), strict=True):
                    out[i] = comp
        return out  # type: ignore[return-value]

    def _safe(self, requests: list[Request]) -> list[Completion]:
        try:
            return self._generate(requests)
        except Exception as exc:  # too long for the model, out of memory, ...: the caller quarantines the rows
            transient = "out of memory" in str(exc).lower()  # another batch (or a rerun) may fit
            return [Completion(text=None, error=f"{type(exc).__name__}: {exc}", transient=transient)
                    for _ in requests]

    def _generate(self, requests: list[Request]) -> list[Completion]:
        from transformers import LogitsProcessorList

        torch = self._torch
        texts = [self.tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
                 for r in requests]
        enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sampler = RowSampler([r.sampling for r in requests], self.device)
        with torch.no_grad():
            gen = self.model.generate(**enc, max_new_tokens=requests[0].sampling.max_tokens,
                                      pad_token_id=self.tok.pad_token_id, do_sample=False, temperature=None,
                                      top_p=None, top_k=None, logits_processor=LogitsProcessorList([sampler]))
        new = gen[:, enc["input_ids"].shape[1]:]
        results = []
        eos = self.tok.eos_token_id
        for row, mask in zip(new, enc["attention_mask"], strict=True):
            ids = row.tolist()
            finish = "length"
            if eos in ids:
                ids, finish = ids[: ids.index(eos)], "stop"
            results.append(Completion(text=self.tok.decode(ids, skip_special_tokens=True), finish_reason=finish,
                                      prompt_tokens=int(mask.sum()), completion_tokens=len(ids)))
        return results


def identity(cfg: TransformersConfig) -> dict[str, Any]:
    """The cache identity of the model's answers: the model folder (by content, see model_identity), the dtype."""
    return {"kind": "transformers", "model": model_identity(cfg.model), "dtype": cfg.dtype}


def check(cfg: TransformersConfig) -> None:
    check_available(cfg.model)


def build(cfg: TransformersConfig, cache: ResponseCache | None) -> CachedEngine:
    return CachedEngine(lambda: TransformersEngine(cfg), identity=identity(cfg), model_name=Path(cfg.model).name,
                        cache=cache)


ENGINE = EngineSpec(kind="transformers", config=TransformersConfig, build=build, check=check)
