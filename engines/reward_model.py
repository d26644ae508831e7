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
    from curate.engines.base import EngineUnavailable
    from curate.engines.transformers_engine import check_available as check_hf

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


class ServedRewardModel:
    """A reward model behind a server's classification endpoint: vLLM's `POST /classify` in its chat form
    (`{"model", "messages"}`; `vllm serve Skywork/Skywork-Reward-V2-Qwen3-0.6B`), which applies the model's chat
    template server-side and answers `data[0].probs`. A single-output reward model's score is its first
    probability (vLLM applies the sigmoid: the order of the candidates is the logits' order).

    Requests go out `concurrency` at a time; a 5xx, 429 or connection error is retried with backoff, and a
    request that still fails raises, so the shard fails and `--resume` asks again (a dead endpoint is a failed
    run, never a judgment without a score)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 max_retries: int = 3, timeout: float = 120):
        import httpx

        self.url, self.model, self.name = base_url.rstrip("/") + "/classify", model, model.rsplit("/", 1)[-1]
        self.concurrency, self.max_retries = concurrency, max_retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=timeout,
                                    limits=httpx.Limits(max_connections=concurrency))
        self._secret = api_key

    def _one(self, messages: list[dict[str, str]], response: str) -> RewardScore:
        import time

        import httpx

        body = {"model": self.model, "messages": [*messages, {"role": "assistant", "content": response}]}
        for attempt in range(self.max_retries + 1):
            try:
                r = self._client.post(self.url, json=body)
                if r.status_code < 500 and r.status_code != 429:
                    break
                why = f"HTTP {r.status_code}"
            except httpx.TransportError as exc:
                why = type(exc).__name__
            if attempt == self.max_retries:
                raise RuntimeError(f"reward model endpoint {self.url}: {why} after {attempt + 1} tries")
            time.sleep(min(8.0, 0.5 * 2 ** attempt))
        if r.status_code != 200:  # the server refused this request: no score, with its reason
            text = r.text[:200].replace(self._secret, "[redacted]") if self._secret else r.text[:200]
            return RewardScore(None, f"HTTP {r.status_code}: {text}")
        try:
            return RewardScore(float(r.json()["data"][0]["probs"][0]))
        except (ValueError, KeyError, IndexError, TypeError):
            return RewardScore(None, f"the endpoint's reply has no data[0].probs: {r.text[:200]}")

    def score(self, items: list[tuple[list[dict[str, str]], str]]) -> list[RewardScore]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda item: self._one(*item), items))
