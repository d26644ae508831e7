"""A sequence-classification reward model (a local Hugging Face folder: Skywork-Reward-V2, a model trained with
TRL's RewardTrainer, ...) scoring (conversation, response) pairs through transformers, batched, on CPU or GPU.

The score is the model's first output logit for the conversation with the response as the last assistant turn,
rendered with the tokenizer's chat template (the format reward models are trained on). A conversation longer
than `max_length` tokens is not cut: it gets no score and the reason, like a judge output that did not parse.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RewardScore:
    score: float | None
    error: str | None = None


def check_available(model: str) -> None:
    from engines.base import EngineUnavailable
    from engines.transformers_engine import check_available as check_hf

    check_hf(model)
    import json

    config = json.loads((Path(model).expanduser() / "config.json").read_text())
    archs = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise EngineUnavailable(f"{model} is not a sequence-classification reward model (architectures: "
                                f"{', '.join(archs) or 'none'}); a reward model folder has e.g. "
                                "LlamaForSequenceClassification, as TRL's RewardTrainer saves it")


class RewardModel:
    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", batch_size: int = 8,
                 max_length: int = 4096):
        check_available(model)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._torch = torch
        self.device = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size, self.max_length = batch_size, max_length
        self.tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.tok.padding_side = "right"
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForSequenceClassification.from_pretrained(model, dtype=torch_dtype,
                                                                        local_files_only=True).to(self.device)
        self.model.config.pad_token_id = self.tok.pad_token_id
        self.model.eval()
        self.name = Path(model).name

    def text(self, messages: list[dict[str, str]], response: str) -> str:
        chat = [*messages, {"role": "assistant", "content": response}]
        if self.tok.chat_template:
            return self.tok.apply_chat_template(chat, tokenize=False)
        return "\n\n".join(m["content"] for m in chat)

    def score(self, items: list[tuple[list[dict[str, str]], str]]) -> list[RewardScore]:
        """One score per (conversation, response), in order."""
        torch = self._torch
        texts = [self.text(m, r) for m, r in items]
        lengths = [len(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]
        out: list[RewardScore | None] = [None] * len(items)
        fits = []
        for i, n in enumerate(lengths):
            if n > self.max_length:
                out[i] = RewardScore(None, f"{n} tokens, more than the reward model's max_length {self.max_length}")
            else:
                fits.append(i)
        fits.sort(key=lambda i: lengths[i])  # similar lengths batch together: less padding
        for start in range(0, len(fits), self.batch_size):
            chunk = fits[start:start + self.batch_size]
            enc = self.tok([texts[i] for i in chunk], return_tensors="pt", padding=True,
                           add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                logits = self.model(**enc).logits.float()
            for i, value in zip(chunk, logits[:, 0].tolist(), strict=True):
                out[i] = RewardScore(float(value))
        return out  # type: ignore[return-value]
