"""The ``conflict_check`` stage: record where passages contradict trusted beliefs (no LLM)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from ...pipeline import BaseStage
from ...types import Conflict, ContextState
from .beliefs import Belief
from .detector import DEFAULT_MISMATCH_WEIGHT, DEFAULT_WEIGHTS, ConflictDetector

__all__ = ["ConflictCheck", "format_conflicts"]


def format_conflicts(conflicts: list[Conflict], max_items: int = 5) -> str:
    """A short prompt section listing conflicts, e.g. to warn the generator (empty if none)."""
    if not conflicts:
        return ""
    lines = ["Note: the context disagrees with known facts in these places:"]
    for c in conflicts[:max_items]:
        what = f" ({c.belief_span!r} vs {c.chunk_span!r})" if c.belief_span or c.chunk_span else ""
        lines.append(f"- [{c.kind}] context: \"{c.chunk}\" vs known: \"{c.belief}\"{what}")
    return "\n".join(lines)


class ConflictCheck(BaseStage):
    """Record where each query's passages contradict trusted beliefs (no LLM needed).

    Beliefs come from, in order of ``beliefs_from="auto"``: the ``beliefs`` setting, then
    ``state.metadata["beliefs"]`` (strings, dicts or :class:`Belief`), then ``state.facts``
    (e.g. the model's self-facts from :class:`~ctxkit.faithfulness.SelfFacts`).

    Actions on the conflicts found (always written to ``state.conflicts``):
        * ``"annotate"``: also store each passage's strongest conflict score as this stage's score
          and the conflicts in ``passage.metadata["conflicts"]``.
        * ``"filter"``: drop passages with a conflict scoring at least ``filter_threshold``.
        * ``"warn"``: annotate, and put a prompt section listing the conflicts in
          ``state.metadata["conflict_note"]`` (used by :class:`~ctxkit.faithfulness.SelfThinkAnswer`).

    The claim judge (``judge``: ``"default"``, a folder written by ``ctxkit judge-train``, or
    ``None`` for the span heuristics alone) decides; ``threshold`` defaults to the judge's value,
    calibrated on dev data so that at most 10% of supporting (or of off-topic) passages are flagged.

    Example:
        >>> stage = ConflictCheck(beliefs=["The Eiffel Tower was completed in 1889."])
        >>> state = ContextState(query="When was the Eiffel Tower completed?",
        ...     passages=[Passage(id="p1", text="The Eiffel Tower was completed in 1901.")])
        >>> stage([state])[0].conflicts[0].kind
        'date'
    """


    beliefs: list[str | dict[str, Any]] = Field(default_factory=list)
    beliefs_from: Literal["auto", "setting", "metadata", "facts"] = "auto"
    judge: str | None = "default"
    embedder: str = "default"
    device: str = "auto"
    chunk_words: int = Field(0, ge=0)
    top_k: int = Field(5, ge=1)
    alpha: float = Field(0.3, ge=0.0, le=1.0)
    mismatch_weight: float = Field(DEFAULT_MISMATCH_WEIGHT, ge=0.0)
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    min_relevance: float = Field(0.35, ge=0.0, le=1.0)
    weights: dict[str, float] | None = None
    action: Literal["annotate", "filter", "warn"] = "annotate"
    filter_threshold: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("weights")
    @classmethod
    def _known_weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and set(v) - set(DEFAULT_WEIGHTS):
            raise ValueError(
                f"unknown feature weight(s) {sorted(set(v) - set(DEFAULT_WEIGHTS))}; known: {sorted(DEFAULT_WEIGHTS)}"
            )
        return v

    def warm_up(self) -> None:
        self._detector = ConflictDetector(
            self.embedder,
            judge=self.judge,
            device=self.device,
            threshold=self.threshold,
            alpha=self.alpha,
            mismatch_weight=self.mismatch_weight,
            min_relevance=self.min_relevance,
            weights=self.weights,
        )

    def _beliefs(self, state: ContextState) -> list[Any]:
        order = {
            "auto": ("setting", "metadata", "facts"),
            "setting": ("setting",),
            "metadata": ("metadata",),
            "facts": ("facts",),
        }[self.beliefs_from]
        for src in order:
            if src == "setting" and self.beliefs:
                return list(self.beliefs)
            if src == "metadata" and state.metadata.get("beliefs"):
                value = state.metadata["beliefs"]
                return [value] if isinstance(value, str | dict) else list(value)
            if src == "facts" and state.facts:
                return [Belief(text=f, source="facts") for f in state.facts]
        return []

    def run(self, states: list[ContextState]) -> list[ContextState]:
        """Detect conflicts for the whole batch in one encoder call."""
        beliefs = [self._beliefs(s) for s in states]
        results = self._detector.detect_batch(
            beliefs, [s.passages for s in states], top_k=self.top_k, chunk_words=self.chunk_words
        )
        for state, bs, conflicts in zip(states, beliefs, results, strict=True):
            if not bs:
                state.trace.count("conflicts.no_beliefs")
            state.conflicts = conflicts
            state.trace.count("conflicts.found", len(conflicts))
            by_pid: dict[str | None, list[Conflict]] = {}
            for c in conflicts:
                by_pid.setdefault(c.passage_id, []).append(c)
            for p in state.passages:
                mine = by_pid.get(p.id, [])
                self.set_score(p, max((c.score for c in mine), default=0.0))
                if mine:
                    p.metadata["conflicts"] = [c.model_dump() for c in mine]
            if self.action == "filter":
                keep = [
                    p for p in state.passages
                    if max((c.score for c in by_pid.get(p.id, [])), default=0.0) < self.filter_threshold
                ]
                state.trace.count("conflicts.filtered", len(state.passages) - len(keep))
                state.passages = keep
            elif self.action == "warn":
                note = format_conflicts(conflicts)
                if note:
                    state.metadata["conflict_note"] = note
        return states
