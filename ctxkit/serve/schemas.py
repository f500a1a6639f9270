"""Typed request and response bodies of the service (they make its OpenAPI schema).

Strings are checked for what no store can keep: lone UTF-16 surrogates (not encodable as UTF-8)
and NUL characters. Sizes that depend on the service settings (query length, documents per
request) are checked by the service, with the same 422 answer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from ..types import Conflict, Passage, Trace

__all__ = [
    "AnswerRequest",
    "CheckRequest",
    "DocumentIn",
    "ErrorBody",
    "ErrorResponse",
    "FeedbackRequest",
    "FeedbackResponse",
    "HealthResponse",
    "IngestRequest",
    "IngestResponse",
    "PassageIn",
    "QueryRequest",
    "QueryResponse",
    "QueryResult",
    "clean_text",
]


def clean_text(value: str) -> str:
    """Reject strings that cannot be stored: lone surrogates and NUL characters."""
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (lone surrogate code point)") from None
    return value


Text = Annotated[StrictStr, AfterValidator(clean_text)]
QueryText = Annotated[StrictStr, Field(min_length=1), AfterValidator(clean_text)]
Id = Annotated[StrictStr, Field(min_length=1, max_length=512), AfterValidator(clean_text)]
MetaValue = StrictStr | StrictInt | StrictFloat | bool


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QueryRequest(_Body):
    """One query (``query``) or several (``queries``) run through the whole pipeline.

    ``metadata`` becomes each query's ``ContextState.metadata`` (e.g. ``beliefs`` for a conflict
    check, ``where`` for a metadata filter); ``top_k`` cuts the passages returned.
    """

    query: QueryText | None = None
    queries: list[QueryText] | None = Field(None, min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)
    top_k: int | None = Field(None, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_of(self) -> QueryRequest:
        if (self.query is None) == (self.queries is None):
            raise ValueError("send exactly one of 'query' (a string) or 'queries' (a list of strings)")
        return self

    @property
    def all_queries(self) -> list[str]:
        """The queries of this request, in order."""
        return [self.query] if self.query is not None else list(self.queries or [])


class AnswerRequest(_Body):
    """One question answered by the pipeline's generator; ``stream`` sends tokens as SSE."""

    query: QueryText
    metadata: dict[str, Any] = Field(default_factory=dict)
    top_k: int | None = Field(None, ge=1, le=1000)
    stream: bool = False


class PassageIn(_Body):
    """A passage the caller already has (for ``/v1/check``)."""

    id: Id
    text: Text
    metadata: dict[str, MetaValue] = Field(default_factory=dict)


class CheckRequest(_Body):
    """Run the pipeline's checks (ranking, conflicts, steering...) on the caller's passages.

    Matching (retriever stages) and answer generation are skipped.
    """

    query: QueryText
    passages: list[PassageIn] = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)


class FeedbackRequest(_Body):
    """Feedback on a shown list: an event name (``like``, ``copy``...) or a numeric reward."""

    list_id: Id
    event: Annotated[StrictStr, Field(min_length=1, max_length=64)] | StrictFloat | StrictInt


def _doc_id(value: str) -> str:
    if "#" in value and value.rsplit("#", 1)[-1].isdigit():
        raise ValueError("a document id must not end in '#<number>' (that is how chunk ids are made)")
    return value


class DocumentIn(_Body):
    """A document to ingest."""

    id: Annotated[Id, AfterValidator(_doc_id)]
    text: Text
    title: Annotated[StrictStr, Field(max_length=1000), AfterValidator(clean_text)] = ""
    metadata: dict[Annotated[StrictStr, Field(max_length=200)], MetaValue] = Field(default_factory=dict)


class IngestRequest(_Body):
    """Documents sent in the request, or paths (files/folders) under the service's allowed roots."""

    documents: list[DocumentIn] | None = Field(None, min_length=1)
    paths: list[Annotated[StrictStr, Field(min_length=1, max_length=4096), AfterValidator(clean_text)]] | None = Field(
        None, min_length=1, max_length=100
    )

    @model_validator(mode="after")
    def _one_of(self) -> IngestRequest:
        if (self.documents is None) == (self.paths is None):
            raise ValueError("send exactly one of 'documents' or 'paths'")
        return self


class QueryResult(BaseModel):
    """What the pipeline made of one query: passages with every stage's score, and more.

    Attributes:
        query: The query.
        list_id: Id of the list shown (send feedback with it).
        passages: Passages, best first; ``scores`` holds every stage's score.
        conflicts: Conflicts found between passages and beliefs.
        flags: Per-query flags set by stages (e.g. steering's inappropriate passages).
        facts: Statements relevant to the answer.
        prompt: The prompt built for the generator, if any.
        answer: The generated answer, if the pipeline generates one.
        trace: Per-stage timings, candidate counts (``info.batch_size``: queries run together),
            counters and errors.
        error: Why this query failed (the other queries of the batch are unaffected).
    """

    query: str
    list_id: str | None = None
    passages: list[Passage] = Field(default_factory=list)
    conflicts: list[Conflict] = Field(default_factory=list)
    flags: dict[str, Any] = Field(default_factory=dict)
    facts: list[str] = Field(default_factory=list)
    prompt: str | None = None
    answer: str | None = None
    trace: Trace | None = None
    error: str | None = None


class QueryResponse(BaseModel):
    """One result per query, in the order sent."""

    results: list[QueryResult]


class FeedbackResponse(BaseModel):
    """The stored feedback."""

    list_id: str
    reward: float


class IngestResponse(BaseModel):
    """What the ingest did (see :class:`ctxkit.retrievers.IngestReport`)."""

    documents: int
    written: int
    unchanged: int
    chunks_written: int
    chunks_deleted: int
    files: int = 0
    skipped: list[tuple[str, str]] = Field(default_factory=list)
    seconds: float


class HealthResponse(BaseModel):
    """Liveness and what the service is doing."""

    status: Literal["ok", "starting", "stopping"]
    ready: bool
    in_flight: int
    batches: int
    queries: int
    max_batch_seen: int


class ErrorBody(BaseModel):
    """An error: a stable code, a message for humans, optional validation details."""

    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer of the service has this shape (never a traceback)."""

    error: ErrorBody
