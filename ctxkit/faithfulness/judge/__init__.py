"""The claim judge: reads (belief, text) together; probabilities of support / conflict / unrelated.

Shared by conflict detection (:class:`~ctxkit.faithfulness.conflicts.ConflictDetector`) and
steering. Modules:

* ``model``: :class:`ClaimJudge`, the packaged cross-encoder (low-rank updates of
  all-MiniLM-L6-v2 plus a head, merged at load time), :func:`shared_judge` (one instance and
  verdict cache per judge in a process), and the network used to train it.
* ``llm``: :class:`LLMClaimJudge`, the same interface answered by any generator.
* ``data`` / ``perturb``: labelled pairs built offline from text with known answers (value
  swaps, negation and opposite-word flips, contrasts, unrelated sentences).
* ``sources``: readers of the public data the judge is trained and evaluated on, and the frozen
  dev / test splits (:func:`split_of`).
* ``train``: pairs -> fine-tuning -> temperature calibration -> the folder :class:`ClaimJudge`
  loads (``ctxkit judge-train``).

Names load lazily: importing this package loads no model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

__all__ = [
    "LABELS",
    "ClaimJudge",
    "JudgePair",
    "JudgeTrainConfig",
    "LLMClaimJudge",
    "build_pairs",
    "build_pairs_from_data",
    "shared_judge",
    "split_of",
    "train_judge",
]

_LAZY: dict[str, str] = {
    "LABELS": "ctxkit.faithfulness.judge.data",
    "JudgePair": "ctxkit.faithfulness.judge.data",
    "ClaimJudge": "ctxkit.faithfulness.judge.model",
    "shared_judge": "ctxkit.faithfulness.judge.model",
    "LLMClaimJudge": "ctxkit.faithfulness.judge.llm",
    "split_of": "ctxkit.faithfulness.judge.sources",
    "JudgeTrainConfig": "ctxkit.faithfulness.judge.train",
    "build_pairs": "ctxkit.faithfulness.judge.train",
    "build_pairs_from_data": "ctxkit.faithfulness.judge.train",
    "train_judge": "ctxkit.faithfulness.judge.train",
}

if TYPE_CHECKING:
    from .data import LABELS, JudgePair
    from .llm import LLMClaimJudge
    from .model import ClaimJudge, shared_judge
    from .sources import split_of
    from .train import JudgeTrainConfig, build_pairs, build_pairs_from_data, train_judge

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
