"""Data models that flow between pipeline stages.

Every stage reads a list of :class:`ContextState` (one per query) and returns it. Scores are
*added* to :attr:`Passage.scores` under the stage's name; earlier scores are never overwritten.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Conflict", "ContextState", "Passage", "StageRecord", "Trace"]


class Passage(BaseModel):
    """One retrieved item (a chunk of a document, a demonstration, a context item).

    Attributes:
        id: Unique id of this item (for chunks: ``"<doc_id>#<chunk_index>"``).
        text: The text shown to the model.
        doc_id: Id of the source document; several chunks can share it.
        metadata: Free-form metadata (source path, title, tags...).
        scores: Score given by each stage, keyed by stage name, in the order the stages ran.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    text: str
    doc_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    scores: dict[str, float] = Field(default_factory=dict)

    @property
    def score(self) -> float | None:
        """The most recent stage's score, or ``None`` when no stage scored this passage."""
        if not self.scores:
            return None
        return next(reversed(self.scores.values()))


class StageRecord(BaseModel):
    """What one stage did to one query: time spent and candidate counts in and out."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    seconds: float
    n_in: int
    n_out: int
    info: dict[str, Any] = Field(default_factory=dict)


class Trace(BaseModel):
    """Per-query record of the pipeline run.

    Attributes:
        list_id: Id of the exact ordered list of passages that was shown (feedback attaches here).
        stages: One record per stage that ran, in order.
        counters: Named counts (e.g. ``"parse_failures"``) accumulated by stages.
        errors: Errors recorded on this query without aborting the batch.
    """

    model_config = ConfigDict(extra="forbid")

    list_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    stages: list[StageRecord] = Field(default_factory=list)
    counters: dict[str, int] = Field(default_factory=dict)
    errors: list[str] = Field(default_factory=list)

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name``."""
        self.counters[name] = self.counters.get(name, 0) + n

    @property
    def total_seconds(self) -> float:
        """Wall time summed over the stages."""
        return sum(r.seconds for r in self.stages)


ConflictKind = Literal["entity", "number", "date", "negation", "opposite", "other"]


class Conflict(BaseModel):
    """A place where the context disagrees with a belief (the model's or a trusted source's).

    Attributes:
        belief: The believed statement.
        chunk: The context text that disagrees with it.
        passage_id: Id of the passage holding the chunk, when known.
        similarity: Cosine similarity of belief and chunk (how sure we are they talk about the
            same thing).
        kind: What differs: an entity, a number, a date, a negation, an opposite relation
            (``before`` / ``after``, ``larger`` / ``smaller``...), or something else.
        score: Conflict strength in [0, 1].
        belief_span: The part of the belief that differs (e.g. ``"1889"``), when found.
        chunk_span: The part of the chunk that differs (e.g. ``"1901"``), when found.
    """

    model_config = ConfigDict(extra="forbid")

    belief: str
    chunk: str
    passage_id: str | None = None
    similarity: float
    kind: ConflictKind = "other"
    score: float
    belief_span: str | None = None
    chunk_span: str | None = None


class ContextState(BaseModel):
    """Everything known about one query as it flows through the pipeline.

    Attributes:
        query: The user's question.
        query_id: Optional caller id (e.g. a BEIR query id).
        passages: Current candidates, best first after each ranking stage.
        facts: Statements relevant to the answer (beliefs or aligned context chunks).
        conflicts: Explicit belief/context conflicts found by faithfulness stages.
        flags: Per-passage or per-query flags set by stages (e.g. inappropriate item ids).
        prompt: The prompt built for the generator, once a stage builds it.
        answer: The final answer, once generated.
        metadata: Free-form per-query data (options of a multiple-choice question, gold answer...).
        trace: Timings, counts, parse failures and errors.
    """

    model_config = ConfigDict(extra="forbid")

    query: str
    query_id: str | None = None
    passages: list[Passage] = Field(default_factory=list)
    facts: list[str] = Field(default_factory=list)
    conflicts: list[Conflict] = Field(default_factory=list)
    flags: dict[str, Any] = Field(default_factory=dict)
    prompt: str | None = None
    answer: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    trace: Trace = Field(default_factory=Trace)
