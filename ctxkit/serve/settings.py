"""Service settings: batching window, limits, timeouts, token, allowed ingest roots."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ServiceSettings"]


class ServiceSettings(BaseModel):
    """How a :class:`~ctxkit.serve.Service` batches, limits and protects its requests.

    Attributes:
        batch_window_ms: How long the batcher waits, after the first request of a batch
            arrives, for more requests to run through the pipeline together (0: take only what
            is already queued).
        max_batch_size: Most queries run through the pipeline in one batch.
        max_queries_per_request: Most queries one ``/v1/query`` request may carry (else 422).
        max_query_chars: Longest query, in characters (else 422).
        max_body_bytes: Largest request body (else 413).
        max_documents_per_request: Most documents one ingest request may carry (else 422).
        max_document_chars: Longest document text, in characters (else 422).
        max_passages_per_check: Most passages one ``/v1/check`` request may carry (else 422).
        request_timeout_s: A request that has no result after this long gets 504.
        token: When set, every ``/v1`` and ``/mcp`` request must send
            ``Authorization: Bearer <token>`` (else 401, logged). Health checks stay open.
        allowed_roots: Folders whose files ``/v1/ingest`` may read (``paths``); empty: ingesting
            paths is refused (403) and only documents sent in the request are accepted.
        index: Index folder that ingest writes to (default: the one the pipeline's retrievers
            read, when they all read one).
        warm_up: Load every model at start-up (readiness waits for it).
        graceful_timeout_s: On shutdown, how long in-flight requests may take to finish.
    """

    model_config = ConfigDict(extra="forbid")

    batch_window_ms: float = Field(5.0, ge=0, le=10_000)
    max_batch_size: int = Field(32, ge=1, le=4096)
    max_queries_per_request: int = Field(64, ge=1, le=4096)
    max_query_chars: int = Field(4096, ge=1)
    max_body_bytes: int = Field(2_000_000, ge=1024)
    max_documents_per_request: int = Field(256, ge=1)
    max_document_chars: int = Field(500_000, ge=1)
    max_passages_per_check: int = Field(200, ge=1)
    request_timeout_s: float = Field(60.0, gt=0)
    token: str | None = Field(None, repr=False)
    allowed_roots: list[Path] = Field(default_factory=list)
    index: str | None = None
    warm_up: bool = True
    graceful_timeout_s: float = Field(30.0, ge=0)

    @field_validator("token")
    @classmethod
    def _check_token(cls, v: str | None) -> str | None:
        if v is not None and (len(v) < 8 or any(c.isspace() for c in v)):
            raise ValueError("the token needs at least 8 characters and no spaces")
        return v

    @field_validator("allowed_roots")
    @classmethod
    def _resolve_roots(cls, v: list[Path]) -> list[Path]:
        out = []
        for root in v:
            p = Path(root).expanduser().resolve()
            if not p.is_dir():
                raise ValueError(f"allowed root {str(root)!r} is not a folder")
            out.append(p)
        return out

    @classmethod
    def unbatched(cls, **kwargs: object) -> ServiceSettings:
        """One request at a time: no waiting window, batches of one (the comparison baseline)."""
        return cls(**{**kwargs, "batch_window_ms": 0.0, "max_batch_size": 1})
