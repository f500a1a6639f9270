"""Ready-made Pistis-RAG cascades: matching -> pre-ranking -> ranking -> arrangement (-> record)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..pipeline import Pipeline
from ..types import ContextState

__all__ = ["build_cascade", "format_trace"]


def build_cascade(
    index: str | Path,
    *,
    match_k: int = 200,
    prerank_k: int = 50,
    rank_k: int = 10,
    cross_encoder: str | None = None,
    cross_encoder_k: int | None = None,
    ranker: str | Path | None = None,
    arrange: str = "as_ranked",
    feedback_db: str | Path | None = None,
    device: str = "auto",
) -> Pipeline:
    """A cascade over an index folder written by ``ctxkit ingest``.

    Stages: ``hybrid`` matching (Chroma + BM25, ``match_k``) -> ``bi_encoder`` pre-ranking
    (``prerank_k``) -> optional ``cross_encoder`` (``cross_encoder_k``, default ``rank_k * 2``) ->
    ``feedback_ranker`` (``rank_k``; cold start keeps the order until trained) -> ``arrange`` ->
    optional ``record_feedback`` (when ``feedback_db`` is given; then ``pipe.feedback(list_id,
    "copy")`` works).

    Args:
        index: Index folder.
        match_k: Candidates from matching.
        prerank_k: Candidates kept by the bi-encoder.
        rank_k: Items kept by the ranking stage.
        cross_encoder: Path of a cross-encoder model to add a cross-encoder pre-ranking stage.
        cross_encoder_k: Budget of that stage.
        ranker: Folder of a saved :class:`FeedbackRanker` (else an untrained one).
        arrange: Arrangement strategy (``"learned"`` needs ``feedback_db``).
        feedback_db: SQLite feedback store recording every shown list.
        device: Device of the models.
    """
    from ..retrievers.bm25 import BM25Retriever
    from ..retrievers.chroma import ChromaRetriever
    from ..retrievers.hybrid import HybridRetriever
    from .arrange import Arranger
    from .listwise import FeedbackRanker
    from .prerank import BiEncoderPreRanker, CrossEncoderPreRanker
    from .record import RecordFeedback

    index = str(index)
    stages: list[Any] = [
        HybridRetriever(
            retrievers=[ChromaRetriever(path=index, k=match_k, device=device), BM25Retriever(path=index, k=match_k)],
            k=match_k, candidates=match_k,
        ),
        BiEncoderPreRanker(k=prerank_k, device=device),
    ]
    if cross_encoder:
        stages.append(CrossEncoderPreRanker(model=cross_encoder, k=cross_encoder_k or min(prerank_k, 2 * rank_k), device=device))
    if ranker is not None:
        stages.append(FeedbackRanker.load(ranker, k=rank_k))
    else:
        stages.append(FeedbackRanker(k=rank_k, store=str(feedback_db) if feedback_db else None))
    stages.append(Arranger(strategy=arrange, store=str(feedback_db) if feedback_db else None))  # type: ignore[arg-type]
    if feedback_db is not None:
        stages.append(RecordFeedback(store=str(feedback_db)))
    return Pipeline(stages)


def format_trace(state: ContextState) -> str:
    """A small table of the stages a query went through: candidates in -> out, milliseconds."""
    lines = [f"{'stage':<18} {'in':>5} {'out':>5} {'ms':>9}"]
    for r in state.trace.stages:
        lines.append(f"{r.stage:<18} {r.n_in:>5} {r.n_out:>5} {r.seconds * 1000:>9.1f}")
    return "\n".join(lines)
