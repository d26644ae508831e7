"""Engine configuration (the `engines:` block of a pipeline YAML) and the factory that builds engines.

Everything here is built from the engine registry (`curate.engines.registry`): each engine module brings its own
config class, build and check (`ENGINE = EngineSpec(...)`, engines/spec.py), and nothing here names an engine
but the default kind. Adding an engine is one new module and one line in the registry (docs/engines.md).
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag, TypeAdapter

from curate.engines import registry
from curate.engines.cache import CachedEngine, ResponseCache
# the shared pieces live in engines/spec.py (which imports no engine); callers import them from here as well
from curate.engines.spec import (  # noqa: F401
    CAPABILITIES, SECRET_KEY, SECRET_VALUE, URL_USERINFO, EngineBlock, EngineSpec, SamplingConfig, model_identity,
    secret_paths, window)

#: the kind of an engine block that names none (and of a pipeline's engine when it defines no `engines:`)
DEFAULT_KIND = "llama_cpp"

#: every engine kind, by kind (the registry, read once: it is what the YAML union below was built from)
ENGINES: dict[str, EngineSpec] = registry()


def _kind(value: Any) -> str:
    return (value.get("kind") or DEFAULT_KIND) if isinstance(value, dict) else getattr(value, "kind", DEFAULT_KIND)


#: an engine block, any kind: the registry's config classes, told apart by `kind` (DEFAULT_KIND when omitted)
EngineConfig = Annotated[
    Union[tuple(Annotated[spec.config, Tag(kind)] for kind, spec in ENGINES.items())],  # noqa: UP007
    Discriminator(_kind),
]
_ENGINE = TypeAdapter(EngineConfig)


def parse_engine(data: Any):
    return _ENGINE.validate_python(data)


def default_engine():
    """The engine of a pipeline that defines none: an empty block of the default kind (the embedded model)."""
    return parse_engine({})


def engine_spec(cfg) -> EngineSpec:
    """The registered engine a parsed config block belongs to."""
    return ENGINES[cfg.kind]


def shard_driver(cfg):
    """For engines that run a stage's shards themselves ("gathered"), the function that does; else None."""
    if "gathered" in cfg.capabilities():
        return engine_spec(cfg).shard_driver
    return None


def check_engine(cfg: EngineConfig) -> None:
    """Fail fast (EngineUnavailable) when the engine cannot run here; loads no model, calls no server."""
    engine_spec(cfg).check(cfg)


def build_engine(cfg: EngineConfig, cache: ResponseCache | None) -> CachedEngine:
    engine = engine_spec(cfg).build(cfg, cache)
    engine.capabilities, engine.window = cfg.capabilities(), window(cfg)
    return engine
