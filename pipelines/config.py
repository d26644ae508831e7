"""Pydantic models of a pipeline YAML, and the checks that run before anything else does.

Every problem is reported with the YAML path where it sits (`stages[2].judge.template: ...`), all problems at
once, so a typo costs a second and not an hour of generation.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from curate.engines.config import EngineConfig, default_engine
from curate.engines.prices import Price


class ConfigError(ValueError):
    """One or more problems in a pipeline; each line names its YAML path."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + ("\n" + " " * len(head)).join(problems))


class StageRun(BaseModel):
    """How the runner runs one stage (beside the stage's own config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: parallel workers (actors) for this stage; model stages load one engine per worker
    concurrency: int | None = Field(None, ge=1)
    #: CPUs reserved per worker; fractional, since on a 2-core machine whole CPUs starve Ray's own tasks
    num_cpus: float = Field(0.5, gt=0)
    #: rows handed to the stage function at a time within a shard; default: 64 for a stage with a model (its
    #: engine's window fills from several batches), the whole shard for a pure stage (columnar kernels run best
    #: on large batches; a shard is bounded by load's shard_size)
    batch_size: int | None = Field(None, ge=1)
    #: Prefect task retries for this stage (a retry redoes only the shards that are not done)
    retries: int = Field(0, ge=0)
    retry_delay_s: float = Field(10.0, ge=0)
    #: the stage fails when more than this share of its model requests fail (judged once 20 are in, and at the
    #: end): a broken server or prompt template stops the run instead of quarantining most rows
    max_error_rate: float = Field(0.25, ge=0, le=1)
    #: the most this stage's model calls may cost, USD (engines/budget.py); the run's `budget_usd` holds too
    budget_usd: float | None = Field(None, ge=0)


class PublishSpec(BaseModel):
    """Push the run's exports to the Hub when it finishes (a scheduled flow then ends by publishing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    private: bool = False
    revision: str | None = None
    config_name: str | None = None
    license: str = "other"


class StageEntry(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    index: int
    name: str
    config: Any
    run: StageRun = StageRun()

    @property
    def id(self) -> str:
        return f"{self.index + 1:02d}_{self.name}"

    @property
    def spec(self):
        from curate.stages import registry

        return registry()[self.name]


class Pipeline(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    engines: dict[str, EngineConfig] = Field(default_factory=lambda: {"default": default_engine()})
    #: where the response cache lives (default: $CURATE_CACHE_DIR or ~/.cache/curate)
    cache_dir: Path | None = None
    #: publish to the Hub at the end of each run (token: HF_TOKEN or the local login, never here)
    publish: PublishSpec | None = None
    #: USD per million tokens by model name (or engine name), over the packaged table (engines/prices.py)
    prices: dict[str, Price] = Field(default_factory=dict)
    #: the most the run's model calls may cost, USD: a run that reaches it stops (resumable), never spends past it
    budget_usd: float | None = Field(None, ge=0)
    stages: list[StageEntry]
    #: the YAML file's folder; relative paths in stage configs resolve against it
    base_dir: Path = Path(".")

    def to_yaml_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (paths absolute, defaults filled), as stored in the run dir."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "engines": {k: v.model_dump(mode="json") for k, v in self.engines.items()},
            "cache_dir": str(self.cache_dir) if self.cache_dir else None,
            "publish": self.publish.model_dump(mode="json") if self.publish else None,
            **({"prices": {k: v.model_dump(mode="json", exclude={"source"}) for k, v in self.prices.items()}}
               if self.prices else {}),
            **({"budget_usd": self.budget_usd} if self.budget_usd is not None else {}),
            "stages": [],
        }
        for st in self.stages:
            item = {st.name: st.config.model_dump(mode="json")}
            item |= st.run.model_dump(mode="json")
            out["stages"].append(item)
        return out

    def with_limit(self, limit: int | None) -> Pipeline:
        if limit is None:
            return self
        first = self.stages[0]
        entry = first.model_copy(update={"config": first.config.model_copy(update={"limit": limit})})
        return self.model_copy(update={"stages": [entry, *self.stages[1:]]})


def _path(loc: tuple, prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def describe_errors(err: ValidationError, prefix: str, model: type[BaseModel] | None) -> list[str]:
    problems = []
    for e in err.errors(include_url=False):
        loc = e["loc"]
        msg = e["msg"]
        if e["type"] == "extra_forbidden" and model is not None:
            known = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = f"unknown key {loc[-1]!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            msg += f"; known keys: {', '.join(sorted(known))}" if known else ""
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif e["type"] not in ("missing",) and "input" in e and not isinstance(e["input"], (dict, list)):
            msg += f" (got {e['input']!r})"
        problems.append(f"{_path(loc, prefix)}: {msg}")
    return problems


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model at `loc`, for 'did you mean' hints."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or ()
        current = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(getattr(current, "model_fields", {}) or [])


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and check a pipeline YAML: schema, files, engines and the column flow. Raises ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"pipeline file not found: {path}"])
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(path)) from None
    pipeline = resolve_pipeline(parse_pipeline(data, base_dir=path.parent.resolve(), source=str(path)))
    problems = check_pipeline(pipeline)
    if problems:
        raise ConfigError(problems, str(path))
    return pipeline


def parse_pipeline(data: Any, base_dir: Path, source: str | None = None) -> Pipeline:
    from curate.stages import registry

    stages = registry()
    if not isinstance(data, dict):
        raise ConfigError([f"(top level): expected a mapping with name, engines and stages, got {type(data).__name__}"], source)
    problems: list[str] = []
    entries: list[StageEntry] = []
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        problems.append("stages: expected a non-empty list of stages, e.g. [{load: {path: prompts.jsonl}}, ...]")
        raw_stages = []
    run_keys = set(StageRun.model_fields)
    for i, item in enumerate(raw_stages):
        if not isinstance(item, dict):
            problems.append(f"stages[{i}]: expected a mapping like {{judge: {{...}}}}, got {type(item).__name__}")
            continue
        names = [k for k in item if k not in run_keys]
        if len(names) != 1:
            problems.append(f"stages[{i}]: expected exactly one stage name, found {names or 'none'}")
            continue
        name = names[0]
        if name not in stages:
            close = difflib.get_close_matches(str(name), list(stages), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"stages[{i}]: unknown stage {name!r}{hint}; stages: {', '.join(stages)}")
            continue
        spec = stages[name]
        try:
            cfg = spec.config.model_validate(item[name] or {}, context={"base_dir": base_dir})
        except ValidationError as err:
            problems.extend(describe_errors(err, f"stages[{i}].{name}", spec.config))
            continue
        try:
            run = StageRun.model_validate({k: v for k, v in item.items() if k in run_keys})
        except ValidationError as err:
            problems.extend(describe_errors(err, f"stages[{i}]", StageRun))
            continue
        entries.append(StageEntry(index=i, name=name, config=cfg, run=run))
    top = {k: v for k, v in data.items() if k != "stages"}
    try:
        pipeline = Pipeline.model_validate(top | {"stages": [], "base_dir": base_dir})
    except ValidationError as err:
        problems.extend(describe_errors(err, "", Pipeline))
        pipeline = None
    if problems:
        raise ConfigError(problems, source)
    return pipeline.model_copy(update={"stages": entries})


def columns_after(spec, cfg, available: set[str]) -> set[str]:
    """The columns after a stage: what it writes (a column it derives from an upstream one only when that one
    is there), plus what it passes on unless it reshapes rows."""
    writes = {c for c in spec.writes(cfg) if c not in spec.derived_from or spec.derived_from[c] in available}
    return writes if spec.reshapes else available | writes


def resolve_pipeline(pipeline: Pipeline) -> Pipeline:
    """Fill the config defaults that depend on the column flow (StageSpec.resolve: export's columns), stage by
    stage, so the run's stored config says exactly what each stage was asked to do."""
    available: set[str] = set()
    entries = []
    for st in pipeline.stages:
        spec = st.spec
        if spec.resolve is not None:
            st = st.model_copy(update={"config": spec.resolve(st.config, available)})
        entries.append(st)
        available = columns_after(spec, st.config, available)
    return pipeline.model_copy(update={"stages": entries})


def check_pipeline(pipeline: Pipeline) -> list[str]:
    """Checks across stages: the column flow, engine references, and that each engine can start here."""
    from curate.engines.base import EngineUnavailable
    from curate.engines.config import check_engine

    problems: list[str] = []
    available: set[str] = set()
    used_engines: set[str] = set()
    for st in pipeline.stages:
        where = f"stages[{st.index}].{st.name}"
        spec = st.spec
        if st.index == 0 and spec.source is None:
            problems.append(f"{where}: the first stage must read input (load), not {st.name}")
        if st.index > 0 and spec.source is not None:
            problems.append(f"{where}: {st.name} reads a source and can only be the first stage")
        missing = sorted(spec.reads(st.config) - available)
        for col in missing:
            close = difflib.get_close_matches(col, sorted(available), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{where}: reads column {col!r}, which no earlier stage writes{hint}")
        available = columns_after(spec, st.config, available)
        for name in spec.engines(st.config):
            if name not in pipeline.engines:
                problems.append(f"{where}.engine: unknown engine {name!r}; defined: {', '.join(pipeline.engines)}")
            else:
                used_engines.add(name)
                lacking = sorted(spec.needs_of(st.config, name) - pipeline.engines[name].capabilities())
                if lacking:
                    problems.append(f"{where}.engine: {st.name} needs an engine with {', '.join(lacking)}; engine "
                                    f"{name!r} ({pipeline.engines[name].kind}) lacks it")
    for name in sorted(used_engines):
        try:
            check_engine(pipeline.engines[name])
        except EngineUnavailable as exc:
            problems.append(f"engines.{name}: {exc}")
    problems += unpriced_under_budget(pipeline)
    return problems


def unpriced_under_budget(pipeline: Pipeline) -> list[str]:
    """A budget can only be kept on calls with a price: each budgeted stage's served engines must have one."""
    from curate.engines.prices import engine_price

    out = []
    for st in pipeline.stages:
        if pipeline.budget_usd is None and st.run.budget_usd is None:
            continue
        for name in st.spec.engines(st.config):
            cfg = pipeline.engines.get(name)
            if cfg is not None and engine_price(name, cfg, pipeline.prices) is None:
                out.append(f"stages[{st.index}].{st.name}: a budget is set, but engine {name!r} (model "
                           f"{getattr(cfg, 'model', '?')!r}) has no known price: add it under prices: "
                           f"{{{getattr(cfg, 'model', name)}: {{input: USD_PER_M, output: USD_PER_M}}}}")
    return out
