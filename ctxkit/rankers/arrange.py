"""Prompt arrangement: the order in which the kept items are written into the prompt.

LLMs are order sensitive (few-shot order effects, "lost in the middle"): the same items in a
different order give different answers. :class:`Arranger` keeps the ranking stage's choice of
items and decides their order in the prompt.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PrivateAttr

from ..errors import ConfigError
from ..pipeline import BaseStage
from ..types import ContextState, Passage
from .feedback import FeedbackStore

__all__ = ["Arranger", "arrange_order"]

Strategy = Literal["as_ranked", "best_last", "best_first_and_last", "learned"]


def arrange_order(n: int, strategy: str, position_weights: list[float] | None = None) -> list[int]:
    """Where each ranked item goes: ``order[j]`` is the rank of the item put at prompt position ``j``.

    Args:
        n: Number of items (ranked best first).
        strategy: ``"as_ranked"`` (best first), ``"best_last"`` (best closest to the question),
            ``"best_first_and_last"`` (best items at both ends, weakest in the middle), or
            ``"learned"`` (best items at the positions with the largest ``position_weights``).
        position_weights: Per-position effects for ``"learned"`` (positions beyond the list get
            the smallest weight).
    """
    if strategy == "as_ranked":
        return list(range(n))
    if strategy == "best_last":
        return list(range(n))[::-1]
    if strategy == "best_first_and_last":
        front, back = [], []
        for r in range(n):
            (front if r % 2 == 0 else back).append(r)
        return front + back[::-1]
    if strategy == "learned":
        w = list(position_weights or [])
        if not w:
            return list(range(n))
        floor = min(w)
        weights = [w[j] if j < len(w) else floor for j in range(n)]
        positions = sorted(range(n), key=lambda j: (-weights[j], j))  # best position first
        order = [0] * n
        for rank, pos in enumerate(positions):
            order[pos] = rank
        return order
    raise ConfigError(f"unknown arrangement strategy {strategy!r}; use as_ranked, best_last, best_first_and_last or learned")


class Arranger(BaseStage):
    """Orders the kept items for the prompt (and keeps at most ``k``).

    Attributes:
        strategy: ``"as_ranked"``, ``"best_last"``, ``"best_first_and_last"`` or ``"learned"``.
        k: Items kept (the best ``k`` of the incoming ranking) before arranging.
        store: Feedback store path for ``"learned"``: the per-position effects are estimated
            from the recorded lists and their rewards (:meth:`FeedbackStore.position_effects`).
        position_weights: Explicit per-position effects for ``"learned"`` (override the store).

    Each passage gets this stage's score ``1 / (1 + rank)`` (its rank in the incoming order), so
    the ranking is still readable after the prompt order changed. The state's metadata records the
    strategy under ``"arrangement"``.
    """


    strategy: Strategy = "as_ranked"
    k: int | None = Field(None, gt=0)
    store: str | None = None
    position_weights: list[float] | None = None

    _weights: list[float] | None = PrivateAttr(default=None)

    def warm_up(self) -> None:
        if self.strategy == "learned" and self.position_weights is None:
            if not self.store:
                raise ConfigError("arrange: strategy 'learned' needs store=<feedback db> or position_weights")
            self._weights = FeedbackStore(self.store).position_effects()
        else:
            self._weights = self.position_weights

    def refresh(self) -> list[float] | None:
        """Re-estimate the position effects from the store (after new feedback)."""
        self._warm = False
        self._ensure_warm()
        return self._weights

    def run(self, states: list[ContextState]) -> list[ContextState]:
        self._ensure_warm()
        for s in states:
            ranked: list[Passage] = s.passages[: self.k] if self.k else list(s.passages)
            for r, p in enumerate(ranked):
                self.set_score(p, 1.0 / (1.0 + r))
            order = arrange_order(len(ranked), self.strategy, self._weights)
            s.passages = [ranked[r] for r in order]
            s.metadata["arrangement"] = self.strategy
        return states
