"""Faithful decoding: logits processors that keep generation close to grounded text.

Modules:

* ``windows``: token windows, their text and embedder (:class:`WindowEncoder`), and the tokenizer
  fingerprint that pins a space to its model.
* ``space``: the CAAD :class:`GroundingSpace` (window embeddings -> next-token logits of truthful
  answers), built once, saved with safetensors.
* ``caad``: :class:`CAADLogitsProcessor` (alias :data:`CAAD`), which adds the matching grounding
  logits at every decoding step, and its :class:`CAADStats`.
* ``cad``: context-aware decoding (:class:`CADLogitsProcessor`) and :class:`AdaCADLogitsProcessor`.
* ``scoring``: :func:`score_continuations`, teacher-forced log-likelihoods with the same shift.
* ``_steps``: the step tracker the processors share (new generation vs next step, left padding).

Names load lazily: importing this package does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

__all__ = [
    "CAAD",
    "AdaCADLogitsProcessor",
    "CAADLogitsProcessor",
    "CAADStats",
    "CADLogitsProcessor",
    "GroundingSpace",
    "GroundingSpaceMismatchError",
    "WindowEncoder",
    "cad_combine",
    "js_divergence",
    "score_continuations",
    "tokenizer_fingerprint",
    "window_texts",
]

_LAZY: dict[str, str] = {
    "WindowEncoder": "ctxkit.faithfulness.decoding.windows",
    "tokenizer_fingerprint": "ctxkit.faithfulness.decoding.windows",
    "window_texts": "ctxkit.faithfulness.decoding.windows",
    "GroundingSpace": "ctxkit.faithfulness.decoding.space",
    "GroundingSpaceMismatchError": "ctxkit.faithfulness.decoding.space",
    "CAAD": "ctxkit.faithfulness.decoding.caad",
    "CAADLogitsProcessor": "ctxkit.faithfulness.decoding.caad",
    "CAADStats": "ctxkit.faithfulness.decoding.caad",
    "AdaCADLogitsProcessor": "ctxkit.faithfulness.decoding.cad",
    "CADLogitsProcessor": "ctxkit.faithfulness.decoding.cad",
    "cad_combine": "ctxkit.faithfulness.decoding.cad",
    "js_divergence": "ctxkit.faithfulness.decoding.cad",
    "score_continuations": "ctxkit.faithfulness.decoding.scoring",
}

if TYPE_CHECKING:
    from .caad import CAAD, CAADLogitsProcessor, CAADStats
    from .cad import AdaCADLogitsProcessor, CADLogitsProcessor, cad_combine, js_divergence
    from .scoring import score_continuations
    from .space import GroundingSpace, GroundingSpaceMismatchError
    from .windows import WindowEncoder, tokenizer_fingerprint, window_texts


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
