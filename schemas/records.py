"""Arrow schemas of the record shapes that travel between stages.

Every shard a stage writes is cast to one of these schemas, so shards of one stage always agree on types
(an all-null column in one shard cannot become `null`-typed and break `datasets.load_dataset` over the folder).
Free-form dictionaries (`meta`, `gen_params`) are JSON strings: Arrow structs need fixed keys, and prompt
sources carry whatever fields they like.
"""

from __future__ import annotations

import pyarrow as pa

from curate.schemas.images import IMAGE

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

MEMBER = pa.struct([("judge", pa.string()), ("score", pa.float64())])

JUDGMENT = pa.struct(
    [
        ("judge", pa.string()),  # "<model>:<template>"
        ("kind", pa.string()),  # pointwise | listwise | pairwise | reward_model | jury | debate
        ("aspect", pa.string()),
        ("score", pa.float64()),  # null when the output did not parse
        ("verdict", pa.string()),
        ("feedback", pa.string()),  # the judge's raw text, kept even when it did not parse
        ("position", pa.int32()),  # pairwise: 0 = shown first (as A), 1 = second
        ("opponent", pa.string()),  # pairwise: the candidate_id it was compared with
        ("parse_ok", pa.bool_()),
        ("error", pa.string()),
        ("strength", pa.float64()),  # pairwise strength judges: preference for this candidate, -3..3
        ("judge_model", pa.string()),  # the judge's model (for self-preference probes)
        ("members", pa.list_(MEMBER)),  # a jury's judgment: the member judges' scores it aggregated
    ]
)

CANDIDATE = pa.struct(
    [
        ("candidate_id", pa.string()),
        ("model", pa.string()),
        ("response", pa.string()),
        ("finish_reason", pa.string()),
        ("n_tokens", pa.int32()),
        ("gen_params", pa.string()),  # JSON
        ("judgments", pa.list_(JUDGMENT)),
        ("image", IMAGE),  # image candidates (load's `images`): the image instead of a response
    ]
)

PROMPT_FIELDS = [
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("prompt", pa.string()),
    pa.field("messages", MESSAGES),
    pa.field("system", pa.string()),
    pa.field("source", pa.string()),
    pa.field("source_id", pa.string()),
    pa.field("meta", pa.string()),  # JSON
    # who is asking: a persona or context the answers and labels are conditioned on (pluralistic preferences)
    pa.field("persona", pa.string()),
    # grounded (RAG) prompts: the retrieved documents the answers must rest on (also rendered into `system`)
    pa.field("documents", pa.list_(pa.string())),
]
PROMPT_ROW = pa.schema(PROMPT_FIELDS)


def prompt_id(messages: list[dict[str, str]], system: str | None, persona: str | None = None) -> str:
    """A prompt's id: a hash of what the answering model is shown, so the same prompt has the same id in every
    file and run (and one with a persona is a different prompt)."""
    import hashlib
    import json

    key = {"system": system, "messages": messages} | ({"persona": persona} if persona is not None else {})
    canon = json.dumps(key, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def numbered_documents(texts: list[str] | None) -> str:
    """How a prompt's documents are shown, to the answering model (load's system prompt) and to judges alike."""
    return "\n\n".join(f"[Document {i}]\n{t}" for i, t in enumerate(texts or [], 1))
PROMPT_ROW_WITH_CANDIDATES = pa.schema(
    PROMPT_FIELDS
    + [
        pa.field("candidates", pa.list_(CANDIDATE)),
        # written by a jury stage: how much its judges agree on this prompt's candidates, and the flag
        pa.field("jury_agreement", pa.float64()),
        pa.field("disagreement", pa.bool_()),
    ]
)

PAIR_ROW = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string()),
        pa.field("messages", MESSAGES),
        pa.field("system", pa.string()),
        pa.field("chosen", pa.string()),
        pa.field("rejected", pa.string()),
        pa.field("chosen_score", pa.float64()),
        pa.field("rejected_score", pa.float64()),
        pa.field("margin", pa.float64()),
        pa.field("strength", pa.float64()),
        pa.field("agreement", pa.float64()),
        pa.field("disagreement", pa.bool_()),  # the jury disagreed on this prompt (see the jury stage)
        pa.field("difficulty", pa.string()),  # easy | hard by margin (MPO), when a threshold is set
        pa.field("rationale", pa.string()),  # why chosen is better (rationale stage)
        pa.field("rejected_rationale", pa.string()),  # what is wrong with rejected
        pa.field("persona", pa.string()),
        pa.field("goal_score", pa.float64()),  # reward_augment: the score the system prompt asks for
        pa.field("augmented", pa.string()),  # reward_augment: "goal=chosen" (order kept) | "goal=rejected" (swapped)
        pa.field("chosen_harmless", pa.float64()),  # safety dual labels: the harmlessness scores
        pa.field("rejected_harmless", pa.float64()),
        pa.field("safer", pa.string()),  # chosen | rejected | tie | null (no harmlessness scores)
        pa.field("retrieved_prompt", pa.string()),  # retrieval_pairs: the prompt the rejected answer answers
        pa.field("prompt_similarity", pa.float64()),
        pa.field("response_similarity", pa.float64()),
        # reference_margin: the reference model's log-probabilities (summed over tokens) and the margins
        pa.field("ref_logp_chosen", pa.float64()),
        pa.field("ref_logp_rejected", pa.float64()),
        pa.field("ref_margin", pa.float64()),  # logp(chosen) - logp(rejected)
        pa.field("ref_margin_norm", pa.float64()),  # the same, per token (length-normalized)
        pa.field("critique", pa.string()),  # refine: the critique the revision (chosen) answers
        pa.field("edit_distance", pa.float64()),  # refine: 0 = identical .. 1 = nothing in common (characters)
        pa.field("documents", pa.list_(pa.string())),  # grounded prompts: the documents, kept with the pair
        pa.field("chosen_grounded", pa.float64()),  # grounded prompts: each response's faithfulness score
        pa.field("rejected_grounded", pa.float64()),
        # feedback_mine: the user's reaction to the assistant turn, where it is, and the words that show it
        pa.field("feedback_signal", pa.string()),  # dissatisfied | satisfied
        pa.field("feedback_evidence", pa.string()),
        pa.field("feedback_turn", pa.int32()),  # index of the judged assistant turn in the conversation
        pa.field("feedback_source", pa.string()),  # pattern | llm | pattern+llm
        # pairs with allow_truncated: the answer hit the token limit (finish_reason "length")
        pa.field("chosen_truncated", pa.bool_()),
        pa.field("rejected_truncated", pa.bool_()),
        # image pairs (load's `images`): the two images, and the caption stage's caption for each (DCPO)
        pa.field("chosen_image", IMAGE),
        pa.field("rejected_image", IMAGE),
        pa.field("chosen_caption", pa.string()),
        pa.field("rejected_caption", pa.string()),
        pa.field("chosen_model", pa.string()),
        pa.field("rejected_model", pa.string()),
        pa.field("chosen_id", pa.string()),
        pa.field("rejected_id", pa.string()),
        pa.field("judge", pa.string()),
        pa.field("source", pa.string()),
    ]
)

RANKED_ROW = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string()),
        pa.field("messages", MESSAGES),
        pa.field("system", pa.string()),
        pa.field("responses", pa.list_(pa.string())),
        pa.field("models", pa.list_(pa.string())),
        pa.field("candidate_ids", pa.list_(pa.string())),
        pa.field("judges", pa.list_(pa.string())),
        pa.field("scores", pa.list_(pa.list_(pa.float64()))),  # per response, one score per judge (null: none)
        pa.field("rank", pa.list_(pa.int32())),  # 1 = best
        pa.field("ranking_score", pa.list_(pa.float64())),
        pa.field("source", pa.string()),
    ]
)

# Rows a stage could not process, and rows it filtered, keep their payload as JSON so any shape fits.
QUARANTINE_ROW = pa.schema(
    [
        pa.field("stage", pa.string()),
        pa.field("source", pa.string()),
        pa.field("line", pa.int64()),
        pa.field("prompt_id", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("record", pa.string()),  # the offending row (or raw source line) as text
    ]
)


def columns_of(schema: pa.Schema, prefix: str = "") -> set[str]:
    """Dotted column names of a schema, nested lists of structs included (`candidates.judgments.score`)."""
    names: set[str] = set()
    for field in schema:
        _walk(field, prefix, names)
    return names


def _walk(field: pa.Field, prefix: str, names: set[str]) -> None:
    name = f"{prefix}{field.name}"
    names.add(name)
    typ = field.type
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        typ = typ.value_type
    if pa.types.is_struct(typ):
        for i in range(typ.num_fields):
            _walk(typ.field(i), name + ".", names)
