"""The ``record_feedback`` stage: stores each shown list so feedback can attach to it later."""

from __future__ import annotations

from pydantic import PrivateAttr

from ..pipeline import BaseStage
from ..types import ContextState
from .feedback import FeedbackStore

__all__ = ["RecordFeedback"]


class RecordFeedback(BaseStage):
    """Records every state's final ordered passages in the feedback store (one transaction).

    Put it after the last stage that changes the passages (usually the arranger) so the recorded
    order is exactly what the LLM saw. Then ``pipeline.feedback(state.trace.list_id, "copy")``.

    Attributes:
        store: The feedback store: a SQLite file, or a ``postgresql://`` URL for a store that
            several service replicas share (``pip install "ctxkit[postgres]"``).
        labels: Event name -> reward mapping (default: copy/like +1, dislike/regenerate -1).
        source: Tag stored with the lists.
    """


    store: str = "ctxkit_feedback.sqlite"
    labels: dict[str, float] | None = None
    source: str = "user"

    _store: FeedbackStore | None = PrivateAttr(default=None)

    @property
    def feedback_store(self) -> FeedbackStore:
        """The open store."""
        if self._store is None:
            self._store = FeedbackStore(self.store, labels=self.labels)
        return self._store

    def warm_up(self) -> None:
        self.feedback_store  # noqa: B018

    def run(self, states: list[ContextState]) -> list[ContextState]:
        self.feedback_store.record_lists(states, source=self.source)
        return states

    def feedback(self, list_id: str, event: str | float) -> float:
        """Attach an event to a recorded list (see :meth:`FeedbackStore.record_event`)."""
        return self.feedback_store.record_event(list_id, event)

