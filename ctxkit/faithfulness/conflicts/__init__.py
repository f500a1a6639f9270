"""Conflict records without an LLM: where does the context disagree with what we believe?

Modules, from text to stage:

* ``text``: stop words, regexes, normalisation, :func:`content_words`, :func:`split_chunks`.
* ``spans``: typed values of a text (:func:`extract_spans`, :func:`span_kind`) and the candidate
  values a chunk offers in place of a believed one.
* ``beliefs``: :class:`Belief`, a trusted statement to check the context against.
* ``detector``: :class:`ConflictDetector`, which scores every (belief, chunk) pair (relevance,
  mismatch, answer-aware features: :data:`DEFAULT_WEIGHTS`) and explains each conflict.
* ``stage``: the :class:`ConflictCheck` pipeline stage and :func:`format_conflicts`.

Names load lazily: importing this package loads no model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

__all__ = [
    "DEFAULT_MISMATCH_WEIGHT",
    "DEFAULT_WEIGHTS",
    "Belief",
    "Candidate",
    "ConflictCheck",
    "ConflictDetector",
    "Span",
    "SpanKind",
    "content_words",
    "extract_spans",
    "format_conflicts",
    "span_kind",
    "split_chunks",
]

_LAZY: dict[str, str] = {
    "content_words": "ctxkit.faithfulness.conflicts.text",
    "split_chunks": "ctxkit.faithfulness.conflicts.text",
    "Span": "ctxkit.faithfulness.conflicts.spans",
    "SpanKind": "ctxkit.faithfulness.conflicts.spans",
    "extract_spans": "ctxkit.faithfulness.conflicts.spans",
    "span_kind": "ctxkit.faithfulness.conflicts.spans",
    "Belief": "ctxkit.faithfulness.conflicts.beliefs",
    "DEFAULT_MISMATCH_WEIGHT": "ctxkit.faithfulness.conflicts.detector",
    "DEFAULT_WEIGHTS": "ctxkit.faithfulness.conflicts.detector",
    "Candidate": "ctxkit.faithfulness.conflicts.detector",
    "ConflictDetector": "ctxkit.faithfulness.conflicts.detector",
    "ConflictCheck": "ctxkit.faithfulness.conflicts.stage",
    "format_conflicts": "ctxkit.faithfulness.conflicts.stage",
}

if TYPE_CHECKING:
    from .beliefs import Belief
    from .detector import DEFAULT_MISMATCH_WEIGHT, DEFAULT_WEIGHTS, Candidate, ConflictDetector
    from .spans import Span, SpanKind, extract_spans, span_kind
    from .stage import ConflictCheck, format_conflicts
    from .text import content_words, split_chunks


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
