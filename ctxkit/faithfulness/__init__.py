"""ctxkit.faithfulness: conflicts, poisoned-context steering and faithful decoding.

Exports are resolved lazily (nothing heavy is imported with the package).
"""

from __future__ import annotations

from .._lazy import lazy_exports

_LAZY: dict[str, str] = {
    # FaithfulRAG and LLM-free conflict records
    "ConflictDetector": "ctxkit.faithfulness.conflicts",
    "ConflictCheck": "ctxkit.faithfulness.conflicts",
    "Belief": "ctxkit.faithfulness.conflicts",
    "format_conflicts": "ctxkit.faithfulness.conflicts",
    "split_chunks": "ctxkit.faithfulness.conflicts",
    "demo_conflicts": "ctxkit.faithfulness.conflicts",
    "parse_list": "ctxkit.faithfulness.parsing",
    "parse_json_answer": "ctxkit.faithfulness.parsing",
    "SelfKnowledge": "ctxkit.faithfulness.faithfulrag",
    "SelfContext": "ctxkit.faithfulness.faithfulrag",
    "FactExtraction": "ctxkit.faithfulness.faithfulrag",
    "SelfFacts": "ctxkit.faithfulness.faithfulrag",
    "FactAligner": "ctxkit.faithfulness.faithfulrag",
    "SelfThinkAnswer": "ctxkit.faithfulness.faithfulrag",
    "FaithfulRAG": "ctxkit.faithfulness.faithfulrag",
    # Rescorla-Wagner steering
    "build_testbed": "ctxkit.faithfulness.testbed",
    "load_pools": "ctxkit.faithfulness.testbed",
    "TestbedItem": "ctxkit.faithfulness.testbed",
    "RWParams": "ctxkit.faithfulness.rescorla_wagner",
    "fit_rescorla_wagner": "ctxkit.faithfulness.rescorla_wagner:fit",
    "simulate_rescorla_wagner": "ctxkit.faithfulness.rescorla_wagner:simulate",
    "measure_susceptibility": "ctxkit.faithfulness.susceptibility",
    "EmbeddingJudge": "ctxkit.faithfulness.susceptibility",
    "LLMJudge": "ctxkit.faithfulness.susceptibility",
    "SetDetector": "ctxkit.faithfulness.detector",
    "LLMDetector": "ctxkit.faithfulness.detector",
    "default_detector": "ctxkit.faithfulness.detector",
    "SteeringFilter": "ctxkit.faithfulness.steering",
    "demo_poisoned_retrieval": "ctxkit.faithfulness.steering",
    "SteerTrainConfig": "ctxkit.faithfulness.steer_train",
    "train_rw_steering": "ctxkit.faithfulness.steer_train",
    # CAAD logit shaping, CAD / AdaCAD
    "GroundingSpace": "ctxkit.faithfulness.caad",
    "GroundingSpaceMismatchError": "ctxkit.faithfulness.caad",
    "CAADLogitsProcessor": "ctxkit.faithfulness.caad",
    "CAAD": "ctxkit.faithfulness.caad",
    "quickstart_space": "ctxkit.faithfulness.caad",
    "score_continuations": "ctxkit.faithfulness.caad",
    "CADLogitsProcessor": "ctxkit.faithfulness.decoding",
    "AdaCADLogitsProcessor": "ctxkit.faithfulness.decoding",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
