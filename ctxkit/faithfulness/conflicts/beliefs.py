"""Beliefs: the trusted statements a context is checked against."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from ...errors import InputError

__all__ = ["Belief"]

_OPPOSITE = {"yes": "No", "no": "Yes"}


def _norm_yes_no(answer: str) -> str:
    return answer.strip().strip(".!").lower()


class Belief(BaseModel):
    """A trusted statement to check the context against.

    Attributes:
        text: The statement, e.g. ``"The Eiffel Tower was completed in 1889."`` or a question
            followed by its known answer (``"When was the Eiffel Tower completed? 1889"``).
        answer: The value the statement asserts, when known. For ``"question? answer"`` text it
            is taken from after the question mark automatically.
        topic: What the belief is about (the text without its answer); derived when omitted.
        source: Where the belief comes from (``"kb"``, ``"model"``, ``"previous_answer"``...).
    """

    model_config = ConfigDict(extra="forbid")

    text: str
    answer: str | None = None
    topic: str | None = None
    source: str | None = None

    @field_validator("text")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("a belief must be a non-empty statement")
        return v.strip()

    @classmethod
    def coerce(cls, value: Belief | str | dict[str, Any]) -> Belief:
        """Accept a Belief, a plain string, or a dict with the Belief fields."""
        if isinstance(value, Belief):
            b = value
        elif isinstance(value, str):
            b = cls(text=value)
        elif isinstance(value, dict):
            b = cls(**value)
        else:
            raise InputError(
                f"a belief must be a string, a dict or a Belief, got {type(value).__name__}"
            )
        if b.answer is None and "?" in b.text:
            q, _, rest = b.text.rpartition("?")
            if rest.strip() and q.strip():
                b = b.model_copy(update={"answer": rest.strip(" .:-"), "topic": q.strip() + "?"})
        if b.topic is None:
            topic = b.text
            if b.answer and b.answer in topic:
                topic = topic.replace(b.answer, " ").strip()
            b = b.model_copy(update={"topic": " ".join(topic.split()) or b.text})
        return b

    @property
    def is_yes_no(self) -> bool:
        """Whether the belief answers a yes / no question (its answer is "yes" or "no")."""
        return bool(self.answer) and _norm_yes_no(self.answer) in _OPPOSITE

    def opposite(self) -> Belief | None:
        """The same question with the other yes / no answer (``None`` unless :attr:`is_yes_no`)."""
        if not self.is_yes_no:
            return None
        return Belief.from_answer(self.topic or self.text, _OPPOSITE[_norm_yes_no(self.answer or "")], source=self.source)

    @classmethod
    def from_answer(cls, question: str, answer: str, source: str | None = None) -> Belief:
        """A belief from a question and its known answer."""
        return cls(text=f"{question.strip()} {answer.strip()}", answer=answer.strip(),
                   topic=question.strip(), source=source)
