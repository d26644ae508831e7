"""transformers engine (CPU or GPU): the model's chat template, batched greedy generation, and per-request
seeds for sampled generation.

Reproducibility decides the batching: a greedy request's text does not depend on what it is batched with, so
greedy requests run in left-padded batches of `batch_size`; a sampled request runs alone under its own seed
(torch.manual_seed), so the same request gives the same text whatever shard or batch it lands in, which the
response cache relies on. No constrained decoding here: judges fall back to free text and the parser (with its
retry and format reminder).
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from pathlib import Path

from engines.base import Completion, EngineUnavailable, Request

INSTALL = "pip install 'curate[hf]' (transformers and torch)"


def check_available(model: str) -> None:
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None:
        raise EngineUnavailable(f"transformers is not installed; run: {INSTALL}")
    path = Path(model).expanduser()
    if not (path / "config.json").exists():
        raise EngineUnavailable(f"{path} is not a local Hugging Face model folder (no config.json)")


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
        greedy: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            if r.sampling.temperature == 0:
                greedy[r.sampling.max_tokens].append(i)
            else:
                out[i] = self._safe([r], sample=True)[0]
        for _, idx in greedy.items():
            for start in range(0, len(idx), self.cfg.batch_size):
                chunk = idx[start:start + self.cfg.batch_size]
                for i, comp in zip(chunk, self._safe([requests[i] for i in chunk], sample=False), strict=True):
                    out[i] = comp
        return out  # type: ignore[return-value]

    def _safe(self, requests: list[Request], sample: bool) -> list[Completion]:
        try:
            return self._generate(requests, sample)
        except Exception as exc:  # too long for the model, out of memory, ...: the caller quarantines the rows
            return [Completion(text=None, error=f"{type(exc).__name__}: {exc}") for _ in requests]

    def _generate(self, requests: list[Request], sample: bool) -> list[Completion]:
        torch = self._torch
        texts = [self.tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
                 for r in requests]
        enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        s = requests[0].sampling
        kwargs = dict(max_new_tokens=s.max_tokens, pad_token_id=self.tok.pad_token_id)
        if sample:
            torch.manual_seed(s.seed)
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.no_grad():
            gen = self.model.generate(**enc, **kwargs)
        new = gen[:, enc["input_ids"].shape[1]:]
        results = []
        for row, mask in zip(new, enc["attention_mask"], strict=True):
            ids = row.tolist()
            eos = self.tok.eos_token_id
            finish = "length"
            if eos in ids:
                ids, finish = ids[: ids.index(eos)], "stop"
            results.append(Completion(text=self.tok.decode(ids, skip_special_tokens=True), finish_reason=finish,
                                      prompt_tokens=int(mask.sum()), completion_tokens=len(ids)))
        return results
