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

from curate.engines.base import with_images

TEMPLATE_DIR = Path(__file__).parent / "templates"


ANSWERS = {"pointwise": {"answer"}, "pairwise": {"answer_a", "answer_b"}, "listwise": {"texts"},
           "debate": {"answer_a", "answer_b"}, "feedback": {"answer", "reply"}}
CONTEXT = {"question", "reference", "rubric", "context", "documents"}
DEFAULT_REMINDERS = {
    "rating_brackets": 'End with your rating in exactly this format: "Rating: [[5]]".',
    "verdict_brackets": 'End with your verdict in exactly this format: "[[A]]", "[[B]]" or "[[C]]".',
    "result_tag": 'End with "[RESULT] " and an integer score.',
    "result_ab": 'End with "[RESULT] A" or "[RESULT] B".',
    "strength_brackets": 'End with your preference in exactly this format: "[[-1]]" (a whole number from -3 to 3).',
    "aspect_lines": "Give one line per attribute, exactly as in the format above.",
    "text_ratings": 'Give one "#### Output for Text N" block with "Rating: n" for every text.',
    "signal_brackets": 'End with exactly: Evidence: "<quote>" and Signal: [[dissatisfied]], [[satisfied]] or [[neutral]].',
}


class Template(BaseModel):
    """kind: pointwise (one answer -> a score, or one score per aspect), pairwise (two answers -> a verdict or a
    strength, judged in both orders), listwise (all of a prompt's answers in one call, shuffled -> a score each;
    UltraFeedback), debate (pairwise, with a rebuttal round prompt and a moderator prompt), feedback (an
    assistant turn and the user's next message -> how the user reacted; feedback_mine)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    kind: Literal["pointwise", "pairwise", "listwise", "debate", "feedback"] = "pointwise"
    aspect: str = "overall"
    #: aspect_lines templates: the aspects one output scores (one judgment per aspect)
    aspects: tuple[str, ...] = ()
    origin: str | None = None
    system: str | None = None
    prompt: str
    parser: Literal["rating_brackets", "verdict_brackets", "result_tag", "result_ab", "strength_brackets",
                    "aspect_lines", "text_ratings", "signal_brackets"] = "rating_brackets"
    scale: tuple[float, float] = (1, 10)
    #: the rubric filled into {rubric} when the judge stage gives none (Prometheus-style templates)
    rubric: str | None = None
    #: GBNF grammar that forces the output format on engines with constrained decoding; listwise grammars may
    #: use {n}, the number of texts shown
    grammar: str | None = None
    #: appended to the prompt when an output did not parse and the judge is asked again
    reminder: str | None = None
    #: debate templates: the prompt of a later round ({arguments}: the other judges' last turns) and the
    #: moderator's prompt ({transcript})
    rebuttal: str | None = None
    moderator: str | None = None
    #: the answers are images (image pairs' candidates): the prompt has no answer fields, and the images go to
    #: the judge as content parts after the prompt, in the order shown (A then B); it needs an engine that
    #: reads images
    images: bool = False

    @model_validator(mode="after")
    def _fields_known(self):
        fields = {f for _, f, _, _ in string.Formatter().parse(self.prompt) if f}
        answers = set() if self.images else ANSWERS[self.kind]
        if self.images and self.kind not in ("pointwise", "pairwise"):
            raise ValueError("image templates are pointwise or pairwise")
        unknown = fields - CONTEXT - (ANSWERS[self.kind] if self.images else answers)
        if unknown:
            raise ValueError(f"prompt uses unknown fields {sorted(unknown)}; allowed: "
                             f"{', '.join(sorted(CONTEXT | answers))}")
        if not answers <= fields:
            raise ValueError(f"a {self.kind} prompt must contain {' and '.join('{' + a + '}' for a in sorted(answers))}")
        if self.parser == "aspect_lines" and not self.aspects:
            raise ValueError("an aspect_lines template must list its aspects")
        if self.kind == "listwise" and self.parser != "text_ratings":
            raise ValueError("a listwise template needs the text_ratings parser")
        if (self.kind == "feedback") != (self.parser == "signal_brackets"):
            raise ValueError("a feedback template needs the signal_brackets parser, and only it does")
        if self.kind == "debate" and not (self.rebuttal and self.moderator):
            raise ValueError("a debate template needs `rebuttal` and `moderator` prompts")
        if "rubric" in fields and not self.rubric:
            raise ValueError("a prompt with {rubric} needs a default `rubric`")
        return self

    @property
    def pairwise_like(self) -> bool:
        return self.kind in ("pairwise", "debate")

    def fill(self, question: str, reference: str | None = None, rubric: str | None = None,
             context: str | None = None, documents: list[str] | None = None, **answers: str) -> list[dict[str, str]]:
        from curate.schemas.records import numbered_documents

        return self._chat(self.prompt.format(question=question, reference=reference or "",
                                             rubric=rubric or self.rubric or "", context=context or "",
                                             documents=numbered_documents(documents), **answers))

    def render(self, question: str, answer: str, **extra) -> list[dict[str, str]]:
        if self.images:  # the answer is the image's data URL
            return with_images(self.fill(question, **extra), [answer])
        return self.fill(question, answer=answer, **extra)

    def render_pair(self, question: str, answer_a: str, answer_b: str, **extra):
        if self.images:
            return with_images(self.fill(question, **extra), [answer_a, answer_b])
        return self.fill(question, answer_a=answer_a, answer_b=answer_b, **extra)

    def render_list(self, question: str, answers: list[str], **extra):
        texts = "\n".join(f"<text {i}> {a}" for i, a in enumerate(answers, 1))
        return self.fill(question, texts=texts, **extra)

    def grammar_for(self, n: int | None = None) -> str | None:
        if self.grammar is None or n is None:
            return self.grammar
        return self.grammar.replace("{n}", "{%d}" % n)  # GBNF repetition: exactly n blocks

    def parse(self, text: str | None, n: int | None = None, quoted: tuple[str, ...] = ()):
        """`quoted`: the responses the judge was shown (judges.parse: a copied line is not the judge's verdict)."""
        from curate.judges.parse import PARSERS

        extra: dict = {"aspects": self.aspects} if self.parser == "aspect_lines" else {}
        if self.parser == "text_ratings":
            extra = {"n": n or 1}
        if self.parser == "rating_brackets":
            extra = {"quoted": tuple(quoted)}
        return PARSERS[self.parser](text, *self.scale, **extra)

    def with_reminder(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        last = messages[-1]
        note = self.reminder or DEFAULT_REMINDERS[self.parser]
        if isinstance(last["content"], list):  # content parts (an image template): the note joins the text part
            parts = [dict(p) for p in last["content"]]
            parts[0]["text"] = f"{parts[0]['text']}\n\n{note}"
            return messages[:-1] + [{**last, "content": parts}]
        return messages[:-1] + [{**last, "content": f"{last['content']}\n\n{note}"}]

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
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as err:
        raise ValueError(f"template {path} is not valid YAML: {err}") from None
    return Template.model_validate(data)


#: template kinds with a stage of their own; every other kind is the judge stage's
OWN_STAGE = {"debate": "debate", "feedback": "feedback_mine"}


def template_ref(value: str, base_dir: str | None, stage: str) -> str:
    """A stage config's `template` value, checked when the YAML loads: the template must exist and parse, and
    be of a kind that stage runs (debate templates in `debate`, feedback templates in `feedback_mine`, the
    rest in `judge`). Built-ins keep their name; a user's file becomes an absolute path (the run's config then
    works from any folder)."""
    path = template_path(value, Path(base_dir) if base_dir else None)
    kind = load_template(path).kind
    wanted = {k for k, s in OWN_STAGE.items() if s == stage}
    if wanted and kind not in wanted:
        raise ValueError(f"{value!r} is a {kind} template; the {stage} stage takes kind: {' or '.join(sorted(wanted))}")
    if not wanted and kind in OWN_STAGE:
        raise ValueError(f"{value!r} is a {kind} template: use it in a `{OWN_STAGE[kind]}` stage")
    return value if path.parent == TEMPLATE_DIR.resolve() else str(path)
