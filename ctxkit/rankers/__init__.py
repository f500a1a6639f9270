"""ctxkit.rankers: the Pistis-RAG cascade after matching.

Pre-ranking (bi-encoder, cross-encoder), the feedback store, LLM-preference labels, the listwise
ranking stage trained from feedback, prompt arrangement, and reasoning & aggregating. Everything
is imported lazily: ``import ctxkit.rankers`` loads neither torch nor sentence-transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__all__ = [
    "BiEncoderPreRanker",
    "CrossEncoderPreRanker",
    "FeedbackStore",
    "ShownList",
    "UnknownListError",
    "UnknownEventError",
    "DEFAULT_LABELS",
    "RecordFeedback",
    "FeedbackRanker",
    "Arranger",
    "arrange_order",
    "ReasonAggregate",
    "parse_answer",
    "PreferenceTemplate",
    "llm_preference_labels",
    "build_cascade",
    "cascade_demo",
]

_LAZY = {
    "BiEncoderPreRanker": "ctxkit.rankers.prerank",
    "CrossEncoderPreRanker": "ctxkit.rankers.prerank",
    "FeedbackStore": "ctxkit.rankers.feedback",
    "ShownList": "ctxkit.rankers.feedback",
    "UnknownListError": "ctxkit.rankers.feedback",
    "UnknownEventError": "ctxkit.rankers.feedback",
    "DEFAULT_LABELS": "ctxkit.rankers.feedback",
    "RecordFeedback": "ctxkit.rankers.record",
    "FeedbackRanker": "ctxkit.rankers.listwise",
    "Arranger": "ctxkit.rankers.arrange",
    "arrange_order": "ctxkit.rankers.arrange",
    "ReasonAggregate": "ctxkit.rankers.aggregate",
    "parse_answer": "ctxkit.rankers.aggregate",
    "PreferenceTemplate": "ctxkit.rankers.preference",
    "llm_preference_labels": "ctxkit.rankers.preference",
    "build_cascade": "ctxkit.rankers.cascade",
    "cascade_demo": "ctxkit.rankers.cascade",
}

if TYPE_CHECKING:
    from .aggregate import ReasonAggregate, parse_answer
    from .arrange import Arranger, arrange_order
    from .cascade import build_cascade, cascade_demo
    from .feedback import (
        DEFAULT_LABELS,
        FeedbackStore,
        ShownList,
        UnknownEventError,
        UnknownListError,
    )
    from .listwise import FeedbackRanker
    from .preference import PreferenceTemplate, llm_preference_labels
    from .prerank import BiEncoderPreRanker, CrossEncoderPreRanker
    from .record import RecordFeedback


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
