"""What a done shard's marker vouches for: the hash of a stage's code (its module and every module of ours it
imports), of the files its config points at, and of its config, engines and input shard together. A shard is
redone exactly when one of them changes."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from curate.pipelines.config import StageEntry

CODE_DIRS = ("stages", "judges", "engines", "schemas")


def code_version() -> str:
    """Hash of all the code and templates that can shape stage outputs (the manifest records it)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for d in CODE_DIRS:
        for p in sorted((root / d).rglob("*")):
            if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(root)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


def module_parts(name: str) -> list[str]:
    """A module name of ours as folders under the repository root (`curate.engines.base` -> engines/base); [] for
    anything else."""
    parts = name.split(".")
    return parts[1:] if parts[0] == "curate" and len(parts) > 1 else []


def stage_module_path(stage_name: str, root: Path) -> Path:
    """The source file of the module that defines the stage's function (`spec.process.__module__`), under `root`;
    an error when it cannot be found, since a fingerprint without the stage's code would keep stale shards."""
    import sys

    from curate.stages import registry

    spec = registry()[stage_name]
    fn = spec.process or spec.source
    module = sys.modules.get(fn.__module__)
    path = root.joinpath(*module_parts(fn.__module__)).with_suffix(".py")
    if module is None or not getattr(module, "__file__", None) or not path.exists():
        raise RuntimeError(f"cannot find the source of stage {stage_name!r} (module {fn.__module__}, looked for "
                           f"{path}) to fingerprint its code")
    return path


def input_files(cfg: Any) -> list[Path]:
    """Every file a stage config points at (its Path fields, and strings that are absolute paths to files, such
    as a user's template resolved when the YAML loads), found by walking the config."""
    from pydantic import BaseModel

    found: list[Path] = []

    def walk(value: Any) -> None:
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, Path):
            found.append(value)
        elif isinstance(value, str) and value.startswith("/") and len(value) < 4096 and Path(value).is_file():
            found.append(Path(value))

    walk(cfg)
    return found


def stage_inputs(st: StageEntry) -> list[Any]:
    """The content fingerprint of every file that shapes this stage's output (StageSpec.inputs, or the files
    its config points at)."""
    return content_fingerprint((st.spec.inputs or input_files)(st.config))


def content_fingerprint(paths: list[Path]) -> list[Any]:
    """[path, sha256] for each input file (a folder: each file under it, by relative name), so editing a
    benchmark, candidates or pool file redoes the stages it shapes, and a touch without an edit does not."""
    out: list[Any] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            out.append([str(path), [[str(f.relative_to(path)), file_sha256(f)]
                                    for f in sorted(path.rglob("*")) if f.is_file()]])
        else:
            out.append([str(path), file_sha256(path) if path.exists() else None])
    return out


def _from_names(node, root: Path) -> list[str]:
    """The modules a `from M import a, b` reads: M.a where a is a module of ours (`from curate.engines import
    embed` reads engines/embed.py, not the package's registry), else M itself (a name defined in M)."""
    subs = [f"{node.module}.{a.name}" for a in node.names]

    def is_module(name: str) -> bool:
        parts = module_parts(name)
        return bool(parts) and (root.joinpath(*parts).with_suffix(".py").exists()
                                or root.joinpath(*parts, "__init__.py").exists())

    return subs if all(map(is_module, subs)) else [node.module] + subs


@functools.lru_cache(maxsize=None)
def stage_code_version(stage_name: str, root: Path | None = None) -> str:
    """Hash of the code one stage's output depends on: its module and every module of ours it imports,
    transitively (read from the source, imports inside functions too, so lazily imported engines count), plus
    the judge templates when it uses them. An edit elsewhere leaves the stage's done shards done."""
    import ast

    root = root or Path(__file__).resolve().parent.parent
    seen: set[Path] = set()
    todo = [stage_module_path(stage_name, root)]
    # a stage that configures model calls (imports engines.spec.SamplingConfig) runs on the engines, which the
    # runner builds from the registry: their modules shape its output though the stage never imports them. Other
    # users of engines/spec.py (model_identity for a packaged embedder) do not run on the configured engines.
    implied = {"curate.engines.spec.SamplingConfig": [root / "engines" / "__init__.py"]}
    while todo:
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                _from_names(node, root) if isinstance(node, ast.ImportFrom) and node.module and not node.level
                else [])
            for name in names:
                todo += implied.get(name, [])
                parts = module_parts(name)
                if parts and parts[0] in CODE_DIRS:
                    todo += [root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")]
    if root / "judges" / "templates.py" in seen:
        seen |= set((root / "judges" / "templates").glob("*.yaml"))
    h = hashlib.sha256()
    for p in sorted(seen):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]
