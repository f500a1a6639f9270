"""Prompts of the FaithfulRAG stages (our own wording).

Each builder returns the user message text. Context is wrapped in the generator's context
markers when given, so a generator that truncates long inputs cuts the context, never the
question or the instructions.
"""

from __future__ import annotations

__all__ = [
    "LETTERS",
    "answer_prompt",
    "facts_prompt",
    "format_choices",
    "knowledge_prompt",
    "self_context_prompt",
]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def knowledge_prompt(question: str) -> str:
    """Step 1: the knowledge the model thinks it needs."""
    return (
        "Before answering a question, list the facts you would need to know to answer it.\n"
        f"Question: {question}\n"
        "Write a numbered list (1., 2., ...) of at most 5 short factual statements. "
        "Do not answer the question itself."
    )


def self_context_prompt(question: str, knowledge: list[str]) -> str:
    """Step 2: a short background passage written from the model's own knowledge."""
    known = "\n".join(f"- {k}" for k in knowledge) if knowledge else "- (none listed)"
    return (
        "Write a short background paragraph (about 100 words) from what you know, covering "
        "the points below, that would help answer the question.\n"
        f"Question: {question}\nPoints:\n{known}\nParagraph:"
    )


def facts_prompt(question: str, self_context: str) -> str:
    """Step 3: atomic statements extracted from the self-written context."""
    return (
        "Extract the key facts from the paragraph as short, self-contained statements.\n"
        f"Question: {question}\nParagraph: {self_context}\n"
        "Write a numbered list (1., 2., ...) with one fact per line."
    )


def format_choices(choices: list[str]) -> str:
    """``A. first`` / ``B. second`` lines."""
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def answer_prompt(
    question: str,
    context: str,
    *,
    mode: str = "direct",
    facts: list[str] | None = None,
    choices: list[str] | None = None,
    note: str | None = None,
    markers: tuple[str, str] | None = None,
) -> str:
    """The self-think + answer prompt.

    Args:
        question: The question.
        context: The full retrieved context.
        mode: ``"direct"``, ``"cot"`` (JSON with reason + answer) or ``"scheduled_cot"``
            (fact analysis -> judgement -> context check -> final answer, as JSON).
        facts: Aligned context chunks to pay attention to (where the context may differ from
            what the model believes). Placed before the full context, so that truncation (which
            shortens the last context block first) keeps them.
        choices: Options of a multiple-choice question.
        note: Extra section, e.g. a list of detected conflicts.
        markers: Open/close strings around the context (for truncation-aware generators).
    """
    open_, close = markers or ("", "")
    parts = [
        (
            "Answer the question using the context below. The context is the authority: if it "
            "disagrees with what you believe, follow the context."
        )
    ]
    # The key sentences come BEFORE the full context: a generator that truncates cuts the last
    # context block first (from its end), so the full context shrinks before the key sentences do.
    if facts:
        key = "\n".join(f"- {f}" for f in facts)
        parts.append(f"Key sentences from the context:\n{open_}{key}{close}")
    parts.append(f"Context:\n{open_}{context}{close}")
    if note:
        parts.append(note)
    parts.append(f"Question: {question}")
    if choices:
        parts.append("Options:\n" + format_choices(choices))
        target = "the letter and text of the correct option"
    else:
        target = "a short answer (a few words)"
    if mode == "direct":
        parts.append(f"Reply with {target} only.\nAnswer:")
    elif mode == "cot":
        parts.append(
            f"Think step by step, then reply with JSON only: "
            f'{{"reason": "<your reasoning>", "answer": "<{target}>"}}'
        )
    elif mode == "scheduled_cot":
        parts.append(
            "Work through these steps:\n"
            "1. Fact analysis: what do the key sentences say?\n"
            "2. Initial judgement: which answer"
            + (" option" if choices else "")
            + " do they support?\n"
            "3. Context check: is that answer stated in the context, even if it surprises you?\n"
            "4. Final verification: give the answer the context supports.\n"
            f'Reply with JSON only: {{"reason": "<steps 1-4 briefly>", "answer": "<{target}>"}}'
        )
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return "\n\n".join(parts)
