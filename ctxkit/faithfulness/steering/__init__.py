"""Rescorla-Wagner steering: keep inappropriate items of a retrieved context out of the answer.

Modules:

* ``testbed``: mixtures of appropriate and inappropriate items at chosen contamination ratios.
* ``rescorla_wagner``: the RW model of how a model incorporates context; simulate and fit
  (exported here as :func:`fit_rescorla_wagner` and :func:`simulate_rescorla_wagner`).
* ``susceptibility``: answer a testbed with a generator, judge the answers, fit RW.
* ``signals``, ``policies``, ``composite``: the default detector, :class:`CompositeDetector`
  (question echo, answer-first shape, claim disagreement through the claim judge, beliefs, the
  :class:`OffensiveLanguagePolicy` / :class:`SensitiveInfoPolicy` content policies, an LLM option).
* ``detectors``: the older detectors (:class:`SetDetector`, the packaged set head of
  :func:`default_detector`, :class:`LLMDetector`).
* ``stage``: the :class:`SteeringFilter` pipeline stage (``rw_steering``; annotates by default).
* ``isolate``: :class:`IsolateAggregate` (``isolate_aggregate``), isolate-then-aggregate answering.
* ``train``: two-stage RW-Steering fine-tuning (transformers ``Trainer``, optional LoRA).
* ``prompts``: the prompt and reply formats of fine-tuning and identification; light (no torch
  or transformers), so scripts outside ctxkit's stages can reuse them.

Names load lazily: importing this package imports neither torch nor scikit-learn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

__all__ = [
    "CATEGORIES",
    "DEFAULT_RATIOS",
    "FEATURE_NAMES",
    "IDENTIFY_TEMPLATE",
    "STEER_TEMPLATE",
    "CompositeDetector",
    "ContextItem",
    "EmbeddingJudge",
    "IsolateAggregate",
    "LLMDetector",
    "LLMJudge",
    "OffensiveLanguagePolicy",
    "PoolRow",
    "RWFit",
    "RWParams",
    "SensitiveInfoPolicy",
    "SetDetector",
    "SteerExample",
    "SteerTrainConfig",
    "SteeringFilter",
    "SusceptibilityResult",
    "TestbedItem",
    "build_mixture",
    "build_sft_examples",
    "build_testbed",
    "default_detector",
    "fit_rescorla_wagner",
    "format_items",
    "load_jsonl",
    "load_pools",
    "measure_susceptibility",
    "parse_identification",
    "parse_steered",
    "plot_fit",
    "predict_curves",
    "save_jsonl",
    "set_features",
    "simulate_rescorla_wagner",
    "split_stages",
    "steering_detector",
    "steering_target",
    "target_loss",
    "train_rw_steering",
]

_LAZY: dict[str, str] = {
    "CATEGORIES": "ctxkit.faithfulness.steering.testbed",
    "DEFAULT_RATIOS": "ctxkit.faithfulness.steering.testbed",
    "ContextItem": "ctxkit.faithfulness.steering.testbed",
    "PoolRow": "ctxkit.faithfulness.steering.testbed",
    "TestbedItem": "ctxkit.faithfulness.steering.testbed",
    "build_mixture": "ctxkit.faithfulness.steering.testbed",
    "build_testbed": "ctxkit.faithfulness.steering.testbed",
    "load_jsonl": "ctxkit.faithfulness.steering.testbed",
    "load_pools": "ctxkit.faithfulness.steering.testbed",
    "save_jsonl": "ctxkit.faithfulness.steering.testbed",
    "RWFit": "ctxkit.faithfulness.steering.rescorla_wagner",
    "RWParams": "ctxkit.faithfulness.steering.rescorla_wagner",
    "fit_rescorla_wagner": "ctxkit.faithfulness.steering.rescorla_wagner:fit",
    "plot_fit": "ctxkit.faithfulness.steering.rescorla_wagner",
    "predict_curves": "ctxkit.faithfulness.steering.rescorla_wagner",
    "simulate_rescorla_wagner": "ctxkit.faithfulness.steering.rescorla_wagner:simulate",
    "EmbeddingJudge": "ctxkit.faithfulness.steering.susceptibility",
    "LLMJudge": "ctxkit.faithfulness.steering.susceptibility",
    "SusceptibilityResult": "ctxkit.faithfulness.steering.susceptibility",
    "measure_susceptibility": "ctxkit.faithfulness.steering.susceptibility",
    "FEATURE_NAMES": "ctxkit.faithfulness.steering.detectors",
    "LLMDetector": "ctxkit.faithfulness.steering.detectors",
    "SetDetector": "ctxkit.faithfulness.steering.detectors",
    "default_detector": "ctxkit.faithfulness.steering.detectors",
    "set_features": "ctxkit.faithfulness.steering.detectors",
    "SteeringFilter": "ctxkit.faithfulness.steering.stage",
    "CompositeDetector": "ctxkit.faithfulness.steering.composite",
    "IsolateAggregate": "ctxkit.faithfulness.steering.isolate",
    "OffensiveLanguagePolicy": "ctxkit.faithfulness.steering.policies",
    "SensitiveInfoPolicy": "ctxkit.faithfulness.steering.policies",
    "SteerExample": "ctxkit.faithfulness.steering.train",
    "SteerTrainConfig": "ctxkit.faithfulness.steering.train",
    "build_sft_examples": "ctxkit.faithfulness.steering.train",
    "parse_steered": "ctxkit.faithfulness.steering.train",
    "split_stages": "ctxkit.faithfulness.steering.train",
    "steering_detector": "ctxkit.faithfulness.steering.train",
    "target_loss": "ctxkit.faithfulness.steering.train",
    "train_rw_steering": "ctxkit.faithfulness.steering.train",
    "IDENTIFY_TEMPLATE": "ctxkit.faithfulness.steering.prompts",
    "STEER_TEMPLATE": "ctxkit.faithfulness.steering.prompts",
    "format_items": "ctxkit.faithfulness.steering.prompts",
    "parse_identification": "ctxkit.faithfulness.steering.prompts",
    "steering_target": "ctxkit.faithfulness.steering.prompts",
}

if TYPE_CHECKING:
    from .composite import CompositeDetector
    from .detectors import FEATURE_NAMES, LLMDetector, SetDetector, default_detector, set_features
    from .isolate import IsolateAggregate
    from .policies import OffensiveLanguagePolicy, SensitiveInfoPolicy
    from .prompts import (
        IDENTIFY_TEMPLATE,
        STEER_TEMPLATE,
        format_items,
        parse_identification,
        steering_target,
    )
    from .rescorla_wagner import RWFit, RWParams, plot_fit, predict_curves
    from .rescorla_wagner import fit as fit_rescorla_wagner
    from .rescorla_wagner import simulate as simulate_rescorla_wagner
    from .stage import SteeringFilter
    from .susceptibility import (
        EmbeddingJudge,
        LLMJudge,
        SusceptibilityResult,
        measure_susceptibility,
    )
    from .testbed import (
        CATEGORIES,
        DEFAULT_RATIOS,
        ContextItem,
        PoolRow,
        TestbedItem,
        build_mixture,
        build_testbed,
        load_jsonl,
        load_pools,
        save_jsonl,
    )
    from .train import (
        SteerExample,
        SteerTrainConfig,
        build_sft_examples,
        parse_steered,
        split_stages,
        steering_detector,
        target_loss,
        train_rw_steering,
    )


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
