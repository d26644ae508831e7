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
    kind: Literal["pointwise", "pairwise"] = "pointwise"
    aspect: str = "overall"
    origin: str | None = None
    system: str | None = None
    prompt: str
    parser: Literal["rating_brackets", "verdict_brackets"] = "rating_brackets"
    scale: tuple[float, float] = (1, 10)
    #: GBNF grammar that forces the output format on engines with constrained decoding
    grammar: str | None = None
    #: appended to the prompt when an output did not parse and the judge is asked again
    reminder: str | None = None

    @model_validator(mode="after")
    def _fields_known(self):
        fields = {f for _, f, _, _ in string.Formatter().parse(self.prompt) if f}
        answers = {"answer"} if self.kind == "pointwise" else {"answer_a", "answer_b"}
        unknown = fields - {"question", "reference"} - answers
        if unknown:
            raise ValueError(f"prompt uses unknown fields {sorted(unknown)}; allowed: question, reference, "
                             f"{', '.join(sorted(answers))}")
        if not answers <= fields:
            raise ValueError(f"a {self.kind} prompt must contain {' and '.join('{' + a + '}' for a in sorted(answers))}")
        return self

    def render(self, question: str, answer: str, reference: str | None = None) -> list[dict[str, str]]:
        return self._chat(self.prompt.format(question=question, answer=answer, reference=reference or ""))

    def render_pair(self, question: str, answer_a: str, answer_b: str, reference: str | None = None):
        return self._chat(self.prompt.format(question=question, answer_a=answer_a, answer_b=answer_b,
                                             reference=reference or ""))

    def with_reminder(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        default = ('End with your verdict in exactly this format: "[[A]]", "[[B]]" or "[[C]]".'
                   if self.kind == "pairwise" else 'End with your rating in exactly this format: "Rating: [[5]]".')
        last = messages[-1]
        return messages[:-1] + [{**last, "content": f"{last['content']}\n\n{self.reminder or default}"}]

    def _chat(self, user: str) -> list[dict[str, str]]:
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
