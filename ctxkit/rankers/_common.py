"""Helpers shared by the ranking stages: applying a batch of scores and keeping a budget."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..pipeline import BaseStage
from ..types import ContextState, Passage

__all__ = ["apply_scores", "flatten", "passage_text"]


def passage_text(p: Passage, with_title: bool = True) -> str:
    """The text a model should see for ``p``: ``"title: text"`` when a title is in the metadata."""
    title = p.metadata.get("title") if with_title else None
    return f"{title}: {p.text}" if title else p.text


def flatten(states: Sequence[ContextState]) -> tuple[list[Passage], np.ndarray, np.ndarray]:
    """All passages of the batch, the state index of each, and the per-state offsets.

    Returns:
        ``(passages, owner, offsets)`` where ``passages[offsets[i]:offsets[i+1]]`` belong to
        ``states[i]`` and ``owner[j]`` is the state index of ``passages[j]``.
    """
    sizes = np.array([len(s.passages) for s in states], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    owner = np.repeat(np.arange(len(states), dtype=np.int64), sizes)
    passages = [p for s in states for p in s.passages]
    return passages, owner, offsets


def _minmax(x: np.ndarray) -> np.ndarray:
    span = float(x.max() - x.min())
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def apply_scores(
    stage: BaseStage,
    states: Sequence[ContextState],
    scores: np.ndarray,
    offsets: np.ndarray,
    k: int | None,
    *,
    reorder: bool = True,
    keep_previous: float = 0.0,
) -> None:
    """Write ``scores`` (flat, batch order) under ``stage.name``, sort each state, keep top ``k``.

    Sorting is stable, so ties keep the incoming (earlier stage's) order. With ``keep_previous``
    ``w > 0`` the stage's score becomes ``(1 - w) * minmax(own) + w * minmax(previous)`` per query
    (``previous``: each passage's most recent score before this stage; missing counts as the
    minimum) and the raw score is kept under ``"<name>.raw"``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    for i, state in enumerate(states):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        own = scores[lo:hi]
        if keep_previous > 0 and hi > lo:
            prev = np.array([np.nan if p.score is None else p.score for p in state.passages], dtype=np.float64)
            prev = np.where(np.isnan(prev), np.nanmin(prev) if not np.isnan(prev).all() else 0.0, prev)
            for p, v in zip(state.passages, own, strict=True):
                p.scores[f"{stage.name}.raw"] = float(v)
            own = (1.0 - keep_previous) * _minmax(own) + keep_previous * _minmax(prev)
        for p, v in zip(state.passages, own, strict=True):
            stage.set_score(p, float(v))
        if reorder and hi > lo:
            order = np.argsort(-own, kind="stable")
            state.passages = [state.passages[j] for j in order]
        if k is not None:
            state.passages = state.passages[:k]
