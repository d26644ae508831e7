"""transformers engine (CPU or GPU): the model's chat template, and batched generation in which every sampled
request keeps its own seed.

Batching decides GPU throughput, and reproducibility decides the response cache. Both hold: requests are
batched (left-padded, `batch_size` at a time) whether greedy or sampled, and each sampled row draws its tokens
from its own `torch.Generator` seeded with the request's seed (Gumbel-max over the temperature- and
top-p-shaped logits, in `RowSampler`), so a request's sample does not depend on the rest of its batch's random
draws. Only float noise from batch shape remains (a padded row's logits can differ in the last bits), which on
rare ties can flip a token; the cache then keeps the first answer. No constrained decoding here: judges fall
back to free text and the parser (with its retry and format reminder).
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from pathlib import Path

from engines.base import Completion, EngineUnavailable, Request, Sampling

INSTALL = "pip install 'curate[hf]' (transformers and torch)"


def check_available(model: str) -> None:
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None:
        raise EngineUnavailable(f"transformers is not installed; run: {INSTALL}")
    path = Path(model).expanduser()
    if not (path / "config.json").exists():
        raise EngineUnavailable(f"{path} is not a local Hugging Face model folder (no config.json)")


class RowSampler:
    """A logits processor for `generate(do_sample=False)`: sampled rows get a one-hot score on the token their
    own generator drew, so the greedy step picks it; greedy rows pass through untouched."""

    def __init__(self, samplings: list[Sampling], device: str):
        import torch

        self.torch = torch
        self.rows = [i for i, s in enumerate(samplings) if s.temperature > 0]
        self.gens = [torch.Generator(device=device).manual_seed(samplings[i].seed) for i in self.rows]
        self.temp = torch.tensor([samplings[i].temperature for i in self.rows], device=device).unsqueeze(1)
        self.top_p = torch.tensor([samplings[i].top_p for i in self.rows], device=device).unsqueeze(1)

    def __call__(self, input_ids, scores):
        if not self.rows:
            return scores
        torch = self.torch
        logits = scores[self.rows].float() / self.temp
        probs = torch.softmax(logits, dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest set of tokens whose probability reaches top_p (the first token always stays)
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= self.top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        u = torch.stack([torch.rand(scores.shape[1], generator=g, device=scores.device) for g in self.gens])
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)))
        choice = (torch.log_softmax(logits, -1) + gumbel).masked_fill(drop, float("-inf")).argmax(-1)
        onehot = torch.full_like(scores[self.rows], float("-inf"))
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
            return [Completion(text=None, error=f"{type(exc).__name__}: {exc}") for _ in requests]

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
