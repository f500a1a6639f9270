"""Beliefs: the trusted statements a context is checked against."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ...errors import InputError

__all__ = ["Belief"]

_OPPOSITE = {"yes": "No", "no": "Yes"}


def _norm_yes_no(answer: str) -> str:
    return answer.strip().strip(".!").lower()


_WH_WORDS = frozenset(["who", "whom", "whose", "what", "when", "where", "which", "why", "how"])
_AUX_WORDS = frozenset(["is", "are", "was", "were", "do", "does", "did", "can", "could", "will", "would", "should",
                        "has", "have", "had"])


_QUESTION_LABEL = re.compile(r"^\s*(?:question|q)\s*:\s*", re.IGNORECASE)
_ANSWER_LABEL = re.compile(r"\banswer\s*:", re.IGNORECASE)
_SHORT_ANSWER_LABEL = re.compile(r"(?:^|\s)a\s*:", re.IGNORECASE)


def _split_labelled(text: str) -> tuple[str, str] | None:
    """Question and answer of a labelled text: "Question: ... Answer: ...", "... Answer: ..." (the
    claim judge's own input form) or "Q: ... A: ..."."""
    label = _QUESTION_LABEL.match(text)
    body = text[label.end():] if label else text
    found = list(_ANSWER_LABEL.finditer(body)) or (list(_SHORT_ANSWER_LABEL.finditer(body)) if label else [])
    if not found:
        return None
    q, a = body[: found[-1].start()].strip(), body[found[-1].end():].strip(" .")
    if not a or not (q.endswith("?") or len(q.split()) >= 3):  # "The answer: none" is no question
        return None
    return (q if q.endswith("?") else q + "?"), a


def _split_unmarked(text: str) -> tuple[str, str] | None:
    """Question and answer of a "question + answer" text without its question mark, as search
    logs write questions ("who plays general hux in the last jedi Domhnall Gleeson").

    Only where the boundary shows: the text opens with a question word and the question is all
    lower case. A wh-question's answer starts at the first capitalised word, or is a final number
    ("... chicago fire season 4 23"); a yes / no question's answer is a final "yes" / "no".
    Anything else stays a plain statement.
    """
    words = text.split()
    if len(words) < 3 or words[0] not in _WH_WORDS | _AUX_WORDS or text.rstrip().endswith("."):
        return None
    if words[0] in _AUX_WORDS:
        if words[-1].lower() in ("yes", "no") and " ".join(words[:-1]).islower():
            return " ".join(words[:-1]), words[-1]
        return None
    first_cap = next((i for i, w in enumerate(words) if any(c.isupper() for c in w)), None)
    if first_cap is not None:
        if first_cap < 2 or not words[first_cap][:1].isupper():
            return None
        return " ".join(words[:first_cap]), " ".join(words[first_cap:])
    if re.fullmatch(r"\d[\d,.]*", words[-1]):
        return " ".join(words[:-1]), words[-1]
    return None


class Belief(BaseModel):
    """A trusted statement to check the context against.

    Attributes:
        text: The statement, e.g. ``"The Eiffel Tower was completed in 1889."`` or a question
            followed by its known answer (``"When was the Eiffel Tower completed? 1889"``).
        answer: The value the statement asserts, when known. For ``"question? answer"`` text it
            is taken from after the question mark automatically; for a lower-case question
            without its mark (``"who plays general hux in the last jedi Domhnall Gleeson"``), only
            where the boundary shows: a capitalised answer, a final number, or a final "yes" /
            "no" after a yes / no question. Labelled text ("Question: ... Answer: ...",
            "Q: ... A: ...") is split at the answer label. Pass ``answer=`` (or
            :meth:`from_answer`) otherwise.
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
        """Accept a Belief, a plain string, or a dict with the Belief fields (``"question"`` may
        stand for ``"text"``: ``{"question": "Who wrote Hamlet?", "answer": "Shakespeare"}``)."""
        if isinstance(value, Belief):
            b = value
        elif isinstance(value, str):
            if not value.strip():
                raise InputError("a belief must be a non-empty statement, got an empty string")
            b = cls(text=value)
        elif isinstance(value, dict):
            fields = dict(value)
            if "question" in fields and "text" not in fields:  # {"question": ..., "answer": ...}
                question = str(fields.pop("question"))
                fields["topic"] = fields.get("topic") or question
                fields["text"] = f"{question} {fields['answer']}".strip() if fields.get("answer") else question
            try:
                b = cls(**fields)
            except ValidationError as exc:
                raise InputError(
                    f"a belief dict needs 'text' (or 'question') and may have 'answer', 'topic', 'source'; "
                    f"got keys {sorted(value)}: {exc.errors()[0]['msg']}"
                ) from exc
        else:
            raise InputError(
                f"a belief must be a string, a dict or a Belief, got {type(value).__name__}"
            )
        if b.answer is None and b.topic is None and (split := _split_labelled(b.text)) is not None:
            b = b.model_copy(update={"answer": split[1], "topic": split[0]})
        elif b.answer is None and "?" in b.text:
            q, _, rest = b.text.rpartition("?")
            if rest.strip() and q.strip():
                b = b.model_copy(update={"answer": rest.strip(" .:-"), "topic": _QUESTION_LABEL.sub("", q).strip() + "?"})
        elif b.answer is None and b.topic is None and (split := _split_unmarked(b.text)) is not None:
            b = b.model_copy(update={"answer": split[1], "topic": split[0] + "?"})
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
