"""Judge templates: YAML files with the judge's system prompt, prompt template, parser and output grammar.

Built-in templates live in judges/templates/ and are named by file stem (`mt_bench_single_v1`); a user's own
template is a path to a YAML file of the same shape.
"""

from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, model_validator

TEMPLATE_DIR = Path(__file__).parent / "templates"


class Template(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    kind: Literal["pointwise"] = "pointwise"
    aspect: str = "overall"
    origin: str | None = None
    system: str | None = None
    prompt: str
    parser: Literal["rating_brackets"] = "rating_brackets"
    scale: tuple[float, float] = (1, 10)
    #: GBNF grammar that forces the output format on engines with constrained decoding
    grammar: str | None = None

    @model_validator(mode="after")
    def _fields_known(self):
        fields = {f for _, f, _, _ in string.Formatter().parse(self.prompt) if f}
        unknown = fields - {"question", "answer", "reference"}
        if unknown:
            raise ValueError(f"prompt uses unknown fields {sorted(unknown)}; allowed: question, answer, reference")
        if "answer" not in fields:
            raise ValueError("prompt must contain {answer}")
        return self

    def render(self, question: str, answer: str, reference: str | None = None) -> list[dict[str, str]]:
        user = self.prompt.format(question=question, answer=answer, reference=reference or "")
        return ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": user}
        ]


def builtin_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))


def template_path(ref: str, base_dir: Path | None = None) -> Path:
    """A built-in template name or a path (relative to the pipeline YAML) -> the template file."""
    builtin = TEMPLATE_DIR / f"{ref}.yaml"
    if builtin.exists():
        return builtin
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.exists():
        raise ValueError(f"no built-in template {ref!r} (built-ins: {', '.join(builtin_names())}) and no file {path}")
    return path.resolve()


@lru_cache(maxsize=64)
def load_template(path: Path) -> Template:
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return Template.model_validate(data)
