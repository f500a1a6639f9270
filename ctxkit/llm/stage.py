"""The ``generate`` pipeline stage: prompt from query + passages, one generator call per batch."""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from pydantic import Field, PrivateAttr, field_validator

from ..errors import ConfigError
from ..pipeline import BaseStage
from ..types import ContextState, Passage
from .base import CONTEXT_CLOSE, CONTEXT_SLOT, Generation, Message, SamplingSettings

__all__ = ["DEFAULT_PASSAGE_FORMAT", "DEFAULT_TEMPLATE", "GenerateAnswer", "conflict_section"]

DEFAULT_TEMPLATE = (
    "Answer the question using only the numbered context passages. If they do not contain the "
    "answer, say that you don't know. Answer briefly.\n\n"
    + CONTEXT_SLOT
    + "\n\n"
    "{conflicts}Question: {question}\nAnswer:"
)
DEFAULT_PASSAGE_FORMAT = "[{i}] {text}"
CONFLICTS_HEADING = "Conflicts with known facts"


def conflict_section(state: ContextState, max_items: int = 3, passage_numbers: dict[str, int] | None = None) -> str:
    """A short prompt section listing where the passages disagree with known facts.

    Built from ``state.conflicts`` (strongest first); without records, from
    ``state.metadata["conflict_note"]`` (e.g. written by ``ConflictCheck(action="warn")``).

    Args:
        state: The state whose conflicts are listed.
        max_items: List at most this many conflicts.
        passage_numbers: Passage id -> the number it has in the prompt (``[i]``), to cite it;
            conflicts in passages not in this map are left out (``None``: keep all).

    Returns:
        The section text, or ``""`` when the state has no conflicts.
    """
    lines: list[str] = []
    shown = [
        c for c in state.conflicts
        if passage_numbers is None or c.passage_id is None or c.passage_id in passage_numbers
    ]  # a conflict in a passage left out of the prompt is not mentioned
    for c in sorted(shown, key=lambda c: -c.score)[:max_items]:
        num = (passage_numbers or {}).get(c.passage_id or "")
        where = f"passage [{num}]" if num else "a passage"
        diff = f" ({c.chunk_span} vs {c.belief_span})" if c.chunk_span and c.belief_span else ""
        lines.append(f'- {where} says "{c.chunk.strip()}", but a known fact says "{c.belief.strip()}"{diff}')
    if not lines:
        note = state.metadata.get("conflict_note")
        if not isinstance(note, str) or not note.strip():
            return ""
        lines = [ln for ln in note.strip().splitlines() if ln.strip()]
        if lines and not lines[0].lstrip().startswith("-"):
            lines = lines[1:]  # the note's own heading
        lines = lines[:max_items] or [note.strip()]
    return (
        f"{CONFLICTS_HEADING} (these passages disagree with what was known before; weigh them "
        "with care and say so if it matters for the answer):\n" + "\n".join(lines)
    )


def _fields(template: str) -> set[str]:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"malformed template ({exc}); write literal braces as {{{{ and }}}}") from None


class GeneratorStage(BaseStage):
    """Base of stages that call a generator: a ``generator`` setting (a spec dict such as
    ``{"backend": "transformers", "model": "default"}``, a model name, or a generator object),
    built on first use, and optional ``sampling`` overrides; both round-trip through configs."""

    generator: Any = Field(default_factory=lambda: {"backend": "transformers", "model": "default"})
    sampling: SamplingSettings | None = None

    _gen: Any = PrivateAttr(default=None)

    @field_validator("generator")
    @classmethod
    def _check_generator(cls, v: Any) -> Any:
        if isinstance(v, Mapping):
            backend = v.get("backend", "transformers")
            from .spec import BACKENDS

            if backend not in BACKENDS:
                raise ValueError(f"unknown generator backend {backend!r}; use one of {', '.join(BACKENDS)}")
            return dict(v)
        if isinstance(v, str):
            return {"backend": "transformers", "model": v}
        if not callable(getattr(v, "generate", None)):
            # a pydantic validator: a ValueError becomes the stage's ConfigError, a TypeError would escape
            raise ValueError("generator must be a spec dict or an object with a generate(batch) method")  # noqa: TRY004
        return v

    @property
    def generator_obj(self) -> Any:
        """The generator this stage calls (built from the spec on first use)."""
        if self._gen is None:
            from .spec import build_generator

            self._gen = build_generator(self.generator)
        return self._gen

    def warm_up(self) -> None:
        gen = self.generator_obj
        if callable(getattr(gen, "warm_up", None)):
            gen.warm_up()

    def to_config(self) -> dict[str, Any]:
        cfg = super().to_config()
        if not isinstance(self.generator, dict):
            spec = getattr(self.generator, "to_spec", None)
            if not callable(spec):
                raise ConfigError(
                    f"{type(self).__name__}: the generator {type(self.generator).__name__} cannot be written "
                    "to a config; pass a spec dict such as {'backend': 'transformers', 'model': ...}"
                )
            cfg["generator"] = spec()
        if self.sampling is None:
            cfg.pop("sampling", None)
        else:
            cfg["sampling"] = self.sampling.model_dump(exclude_unset=True)
        return cfg


class GenerateAnswer(GeneratorStage):
    """Build a prompt from ``state.query`` and the passages, then generate the answer.

    All states of the batch go to the generator in ONE call (the generator batches them). The
    passages are placed between ``<context>`` markers, so a :class:`TransformersGenerator` with a
    token budget shortens only the passages (from the last one backwards), never the
    instructions or the question.

    Attributes:
        generator: A generator object (``TransformersGenerator``, ``OpenAIGenerator``,
            ``LangChainGenerator``...) or a spec dict for :func:`ctxkit.llm.build_generator`, e.g.
            ``{"backend": "transformers", "model": "default"}``. Specs round-trip through
            ``to_config``.
        template: User message template with ``{question}`` and ``{context}`` placeholders
            (``{n}`` gives the number of passages; ``{conflicts}`` where the conflict section
            goes, else it is put after the last ``</context>``, or first).
        passage_format: How each passage is written: ``{i}`` (1-based), ``{text}``, ``{id}``,
            ``{title}`` (``metadata["title"]`` or ``""``).
        passage_separator: Text between passages.
        system: Optional system message.
        max_passages: Use at most this many passages (in their current order).
        conflicts: Add a "Conflicts with known facts" section (see :func:`conflict_section`)
            when the state has conflict records (``state.conflicts``, e.g. from
            ``ConflictCheck`` or ``FactAligner``) or a ``metadata["conflict_note"]``. Without
            conflicts the prompt is unchanged.
        max_conflicts: List at most this many conflicts in that section.
        sampling: Sampling settings for this stage; the fields given override the generator's
            defaults, the others keep them (``None``: the generator's defaults).

    On each state: ``prompt`` is the user message, ``answer`` the generated text (``None`` on
    failure, with the error in ``trace.errors`` and the counter ``generation_errors``).
    """


    template: str = DEFAULT_TEMPLATE
    passage_format: str = DEFAULT_PASSAGE_FORMAT
    passage_separator: str = "\n"
    system: str | None = None
    max_passages: int | None = Field(None, ge=0)
    conflicts: bool = True
    max_conflicts: int = Field(3, ge=1)

    @field_validator("template")
    @classmethod
    def _check_template(cls, v: str) -> str:
        names = _fields(v)
        missing = {"question", "context"} - names
        if missing:
            raise ValueError(f"template must contain the placeholders {{question}} and {{context}}; missing {sorted(missing)}")
        unknown = names - {"question", "context", "n", "conflicts"}
        if unknown:
            raise ValueError(
                f"template has unknown placeholders {sorted(unknown)}; allowed: question, context, n, conflicts"
            )
        return v

    @field_validator("passage_format")
    @classmethod
    def _check_passage_format(cls, v: str) -> str:
        unknown = _fields(v) - {"i", "text", "id", "title"}
        if unknown:
            raise ValueError(f"passage_format has unknown placeholders {sorted(unknown)}; allowed: i, text, id, title")
        return v

    # -- lifecycle -------------------------------------------------------------------------------

    # -- prompt ----------------------------------------------------------------------------------
    def format_passage(self, i: int, p: Passage) -> str:
        """One passage as written into the context block."""
        return self.passage_format.format(i=i, text=p.text, id=p.id, title=p.metadata.get("title", ""))

    def build_messages(self, state: ContextState) -> list[Message]:
        """The conversation for one state (also stores ``state.prompt``)."""
        passages = state.passages if self.max_passages is None else state.passages[: self.max_passages]
        context = self.passage_separator.join(self.format_passage(i, p) for i, p in enumerate(passages, 1))
        section = ""
        if self.conflicts:
            numbers = {p.id: i for i, p in enumerate(passages, 1)}
            section = conflict_section(state, self.max_conflicts, numbers)
        slot = "conflicts" in _fields(self.template)
        user = self.template.format(
            question=state.query, context=context, n=len(passages), conflicts=f"{section}\n\n" if section and slot else ""
        )
        if section and not slot:
            close = user.rfind(CONTEXT_CLOSE)
            if close >= 0:
                cut = close + len(CONTEXT_CLOSE)
                user = f"{user[:cut]}\n\n{section}{user[cut:]}"
            else:
                user = f"{section}\n\n{user}"
        state.prompt = user
        msgs = [Message(role="system", content=self.system)] if self.system else []
        msgs.append(Message(role="user", content=user))
        return msgs

    # -- running ---------------------------------------------------------------------------------
    def run(self, states: list[ContextState]) -> list[ContextState]:
        batch = [self.build_messages(s) for s in states]
        gens = self.generator_obj.generate(batch, None, **self._overrides())
        return self._store(states, gens)

    async def arun(self, states: list[ContextState]) -> list[ContextState]:
        import asyncio

        await asyncio.to_thread(self._ensure_warm)
        batch = [self.build_messages(s) for s in states]
        gens = await self.generator_obj.agenerate(batch, None, **self._overrides())
        return self._store(states, gens)

    def _overrides(self) -> dict[str, Any]:
        return self.sampling.model_dump(exclude_unset=True) if self.sampling is not None else {}

    def _store(self, states: list[ContextState], gens: list[Generation]) -> list[ContextState]:
        if len(gens) != len(states):
            raise RuntimeError(f"the generator returned {len(gens)} results for {len(states)} prompts")
        for s, g in zip(states, gens, strict=True):
            if g.error is not None:
                s.answer = None
                s.trace.errors.append(f"{self.name}: {g.error}")
                s.trace.count("generation_errors")
                continue
            s.answer = g.text
            if g.n_tokens is not None:
                s.trace.count("generated_tokens", g.n_tokens)
            if g.info.get("truncated_context_tokens"):
                s.trace.count("truncated_context_tokens", int(g.info["truncated_context_tokens"]))
        return states
