"""Engines: one small adapter per backend behind one interface (`engines.base`), plus the response cache.

Each engine module exports `ENGINE` (an `engines.spec.EngineSpec`: its kind, config class, build and check);
`registry()` lists them, and `engines/config.py` builds the YAML's `engines:` blocks from it (docs/engines.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from curate.engines.spec import EngineSpec


def registry() -> dict[str, EngineSpec]:
    """Every engine kind, by kind, in the order `curate validate` names them (the first is not the default:
    engines/config.py names the kind a block without `kind:` gets)."""
    from curate.engines import (
        anthropic_batch,
        llama_cpp,
        openai_batch,
        openai_http,
        ray_llm,
        transformers_engine,
        vllm_offline,
    )

    engines = (llama_cpp, openai_http, openai_batch, anthropic_batch, vllm_offline, transformers_engine, ray_llm)
    out: dict[str, EngineSpec] = {}
    for module in engines:
        spec = module.ENGINE
        if spec.kind in out:
            raise ValueError(f"engine kind {spec.kind!r} is registered twice ({module.__name__})")
        out[spec.kind] = spec
    return out
