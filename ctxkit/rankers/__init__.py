"""ctxkit.rankers: the Pistis-RAG cascade after matching.

Pre-ranking (bi-encoder, cross-encoder), the feedback store, LLM-preference labels, the listwise
ranking stage trained from feedback, prompt arrangement, and reasoning & aggregating. Everything
is imported lazily: ``import ctxkit.rankers`` loads neither torch nor sentence-transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__all__ = [
    "DEFAULT_LABELS",
    "Arranger",
    "BiEncoderPreRanker",
    "CrossEncoderPreRanker",
    "FeedbackRanker",
    "FeedbackStore",
    "PreferenceTemplate",
    "ReasonAggregate",
    "RecordFeedback",
    "ShownList",
    "UnknownEventError",
    "UnknownListError",
    "arrange_order",
    "build_cascade",
    "cascade_demo",
    "estimate_position_effects",
    "llm_preference_labels",
    "parse_answer",
    "position_prior",
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
    "estimate_position_effects": "ctxkit.rankers.listwise",
    "position_prior": "ctxkit.rankers.listwise",
    "Arranger": "ctxkit.rankers.arrange",
    "arrange_order": "ctxkit.rankers.arrange",
    "ReasonAggregate": "ctxkit.rankers.aggregate",
    "parse_answer": "ctxkit.rankers.aggregate",
    "PreferenceTemplate": "ctxkit.rankers.preference",
    "llm_preference_labels": "ctxkit.rankers.preference",
    "build_cascade": "ctxkit.rankers.cascade",
    "cascade_demo": "ctxkit.cli.cascade_demo",  # demo code lives in the CLI package
}

if TYPE_CHECKING:
    from ..cli.cascade_demo import cascade_demo
    from .aggregate import ReasonAggregate, parse_answer
    from .arrange import Arranger, arrange_order
    from .cascade import build_cascade
    from .feedback import (
        DEFAULT_LABELS,
        FeedbackStore,
        ShownList,
        UnknownEventError,
        UnknownListError,
    )
    from .listwise import FeedbackRanker, estimate_position_effects, position_prior
    from .preference import PreferenceTemplate, llm_preference_labels
    from .prerank import BiEncoderPreRanker, CrossEncoderPreRanker
    from .record import RecordFeedback


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
