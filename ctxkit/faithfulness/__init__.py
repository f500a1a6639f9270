"""ctxkit.faithfulness: conflicts, poisoned-context steering and faithful decoding.

One subpackage per method; the methods do not depend on each other (FaithfulRAG reuses the
conflict detector):

* :mod:`~ctxkit.faithfulness.faithfulrag`: self-knowledge / self-context / self-facts stages,
  fact-to-chunk alignment, self-think answering (:class:`FaithfulRAG` chains them).
* :mod:`~ctxkit.faithfulness.judge`: the claim judge that reads (belief, text) together
  (:class:`ClaimJudge`, or :class:`LLMClaimJudge` with any generator), shared by conflicts and
  steering.
* :mod:`~ctxkit.faithfulness.conflicts`: values and spans of a text, :class:`ConflictDetector`
  and the :class:`ConflictCheck` stage (no LLM needed).
* :mod:`~ctxkit.faithfulness.steering`: the Rescorla-Wagner testbed, model and fit,
  susceptibility, inappropriate-item detectors, the :class:`SteeringFilter` stage, fine-tuning.
* :mod:`~ctxkit.faithfulness.decoding`: the CAAD grounding space and logits processor,
  CAD / AdaCAD, continuation scoring.

Exports are resolved lazily (nothing heavy is imported with the package). The demo helpers
(``demo_conflicts``, ``demo_poisoned_retrieval``, ``quickstart_space``) live in
:mod:`ctxkit.cli.demos`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__all__ = [
    "CAAD",
    "AdaCADLogitsProcessor",
    "Belief",
    "CAADLogitsProcessor",
    "CADLogitsProcessor",
    "ClaimJudge",
    "ConflictCheck",
    "ConflictDetector",
    "EmbeddingJudge",
    "FactAligner",
    "FactExtraction",
    "FaithfulRAG",
    "GroundingSpace",
    "GroundingSpaceMismatchError",
    "LLMClaimJudge",
    "LLMDetector",
    "LLMJudge",
    "RWParams",
    "SelfContext",
    "SelfFacts",
    "SelfKnowledge",
    "SelfThinkAnswer",
    "SetDetector",
    "SteerTrainConfig",
    "SteeringFilter",
    "TestbedItem",
    "build_testbed",
    "default_detector",
    "demo_conflicts",
    "demo_poisoned_retrieval",
    "fit_rescorla_wagner",
    "format_conflicts",
    "load_pools",
    "measure_susceptibility",
    "parse_json_answer",
    "parse_list",
    "quickstart_space",
    "score_continuations",
    "simulate_rescorla_wagner",
    "split_chunks",
    "train_rw_steering",
]

_LAZY: dict[str, str] = {
    # FaithfulRAG
    "SelfKnowledge": "ctxkit.faithfulness.faithfulrag.stages",
    "SelfContext": "ctxkit.faithfulness.faithfulrag.stages",
    "FactExtraction": "ctxkit.faithfulness.faithfulrag.stages",
    "SelfFacts": "ctxkit.faithfulness.faithfulrag.stages",
    "FactAligner": "ctxkit.faithfulness.faithfulrag.stages",
    "SelfThinkAnswer": "ctxkit.faithfulness.faithfulrag.stages",
    "FaithfulRAG": "ctxkit.faithfulness.faithfulrag.stages",
    "parse_list": "ctxkit.faithfulness.faithfulrag.parsing",
    "parse_json_answer": "ctxkit.faithfulness.faithfulrag.parsing",
    # the claim judge
    "ClaimJudge": "ctxkit.faithfulness.judge.model",
    "LLMClaimJudge": "ctxkit.faithfulness.judge.llm",
    # LLM-free conflict records
    "Belief": "ctxkit.faithfulness.conflicts.beliefs",
    "ConflictDetector": "ctxkit.faithfulness.conflicts.detector",
    "ConflictCheck": "ctxkit.faithfulness.conflicts.stage",
    "format_conflicts": "ctxkit.faithfulness.conflicts.stage",
    "split_chunks": "ctxkit.faithfulness.conflicts.text",
    # Rescorla-Wagner steering
    "build_testbed": "ctxkit.faithfulness.steering.testbed",
    "load_pools": "ctxkit.faithfulness.steering.testbed",
    "TestbedItem": "ctxkit.faithfulness.steering.testbed",
    "RWParams": "ctxkit.faithfulness.steering.rescorla_wagner",
    "fit_rescorla_wagner": "ctxkit.faithfulness.steering.rescorla_wagner:fit",
    "simulate_rescorla_wagner": "ctxkit.faithfulness.steering.rescorla_wagner:simulate",
    "measure_susceptibility": "ctxkit.faithfulness.steering.susceptibility",
    "EmbeddingJudge": "ctxkit.faithfulness.steering.susceptibility",
    "LLMJudge": "ctxkit.faithfulness.steering.susceptibility",
    "SetDetector": "ctxkit.faithfulness.steering.detectors",
    "LLMDetector": "ctxkit.faithfulness.steering.detectors",
    "default_detector": "ctxkit.faithfulness.steering.detectors",
    "SteeringFilter": "ctxkit.faithfulness.steering.stage",
    "SteerTrainConfig": "ctxkit.faithfulness.steering.train",
    "train_rw_steering": "ctxkit.faithfulness.steering.train",
    # CAAD logit shaping, CAD / AdaCAD
    "GroundingSpace": "ctxkit.faithfulness.decoding.space",
    "GroundingSpaceMismatchError": "ctxkit.faithfulness.decoding.space",
    "CAADLogitsProcessor": "ctxkit.faithfulness.decoding.caad",
    "CAAD": "ctxkit.faithfulness.decoding.caad",
    "score_continuations": "ctxkit.faithfulness.decoding.scoring",
    "CADLogitsProcessor": "ctxkit.faithfulness.decoding.cad",
    "AdaCADLogitsProcessor": "ctxkit.faithfulness.decoding.cad",
    # demos (the CLI package holds them; resolved lazily, so no import cycle)
    "demo_conflicts": "ctxkit.cli.demos",
    "demo_poisoned_retrieval": "ctxkit.cli.demos",
    "quickstart_space": "ctxkit.cli.demos",
}

if TYPE_CHECKING:
    from ..cli.demos import demo_conflicts, demo_poisoned_retrieval, quickstart_space
    from .conflicts.beliefs import Belief
    from .conflicts.detector import ConflictDetector
    from .conflicts.stage import ConflictCheck, format_conflicts
    from .conflicts.text import split_chunks
    from .decoding.caad import CAAD, CAADLogitsProcessor
    from .decoding.cad import AdaCADLogitsProcessor, CADLogitsProcessor
    from .decoding.scoring import score_continuations
    from .decoding.space import GroundingSpace, GroundingSpaceMismatchError
    from .faithfulrag.parsing import parse_json_answer, parse_list
    from .faithfulrag.stages import (
        FactAligner,
        FactExtraction,
        FaithfulRAG,
        SelfContext,
        SelfFacts,
        SelfKnowledge,
        SelfThinkAnswer,
    )
    from .judge.llm import LLMClaimJudge
    from .judge.model import ClaimJudge
    from .steering.detectors import LLMDetector, SetDetector, default_detector
    from .steering.rescorla_wagner import RWParams
    from .steering.rescorla_wagner import fit as fit_rescorla_wagner
    from .steering.rescorla_wagner import simulate as simulate_rescorla_wagner
    from .steering.stage import SteeringFilter
    from .steering.susceptibility import EmbeddingJudge, LLMJudge, measure_susceptibility
    from .steering.testbed import TestbedItem, build_testbed, load_pools
    from .steering.train import SteerTrainConfig, train_rw_steering


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
