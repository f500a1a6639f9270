"""FaithfulRAG: the model's own beliefs, aligned with the retrieved context, then a self-think answer.

Modules:

* ``stages``: the pipeline stages. :class:`SelfKnowledge`, :class:`SelfContext` and
  :class:`FactExtraction` (or :class:`SelfFacts`, all three) ask the LLM what it believes;
  :class:`FactAligner` keeps the context chunks closest to those beliefs and records conflicts
  (no LLM); :class:`SelfThinkAnswer` answers from them; :class:`FaithfulRAG` chains the lot.
* ``prompts``: the prompt of each LLM step.
* ``parsing``: tolerant parsing of lists and near-JSON answers from small models.

Conflicts between beliefs and context are found by :mod:`ctxkit.faithfulness.conflicts`.
Names load lazily: importing this package imports neither torch nor the models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

__all__ = [
    "FactAligner",
    "FactExtraction",
    "FaithfulRAG",
    "JsonAnswer",
    "SelfContext",
    "SelfFacts",
    "SelfKnowledge",
    "SelfThinkAnswer",
    "clean_field",
    "context_of",
    "parse_json_answer",
    "parse_list",
]

_LAZY: dict[str, str] = {
    "SelfKnowledge": "ctxkit.faithfulness.faithfulrag.stages",
    "SelfContext": "ctxkit.faithfulness.faithfulrag.stages",
    "FactExtraction": "ctxkit.faithfulness.faithfulrag.stages",
    "SelfFacts": "ctxkit.faithfulness.faithfulrag.stages",
    "FactAligner": "ctxkit.faithfulness.faithfulrag.stages",
    "SelfThinkAnswer": "ctxkit.faithfulness.faithfulrag.stages",
    "FaithfulRAG": "ctxkit.faithfulness.faithfulrag.stages",
    "context_of": "ctxkit.faithfulness.faithfulrag.stages",
    "parse_list": "ctxkit.faithfulness.faithfulrag.parsing",
    "parse_json_answer": "ctxkit.faithfulness.faithfulrag.parsing",
    "JsonAnswer": "ctxkit.faithfulness.faithfulrag.parsing",
    "clean_field": "ctxkit.faithfulness.faithfulrag.parsing",
}

if TYPE_CHECKING:
    from .parsing import JsonAnswer, clean_field, parse_json_answer, parse_list
    from .stages import (
        FactAligner,
        FactExtraction,
        FaithfulRAG,
        SelfContext,
        SelfFacts,
        SelfKnowledge,
        SelfThinkAnswer,
        context_of,
    )


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
