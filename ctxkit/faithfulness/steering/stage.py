"""The ``rw_steering`` stage: find inappropriate passages and remove, demote or annotate them.

Works on any pipeline's passages (retrieved chunks as well as testbed items): every state of the
batch is scored in one detector call, the probability is recorded as this stage's passage score,
and the ids of flagged passages go to ``state.flags["inappropriate"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, PrivateAttr, field_validator

from ...errors import ConfigError
from ...pipeline import BaseStage
from ...types import ContextState, Passage

__all__ = ["SteeringFilter"]

DEFAULT_NOTE = "[Warning: this item may be inappropriate or unreliable] "


class SteeringFilter(BaseStage):
    """Flag inappropriate passages before generation (Rescorla-Wagner steering).

    Attributes:
        detector: ``"default"`` (the :class:`~ctxkit.faithfulness.steering.detectors.SetDetector` head
            shipped with ctxkit), a path to a head JSON saved by ``SetDetector.save``, or
            ``{"type": "llm", "generator": <spec>, "template": ...}`` for an
            :class:`~ctxkit.faithfulness.steering.detectors.LLMDetector` (e.g. a model fine-tuned with
            ``ctxkit steer-train``). A detector object is accepted too (not serialisable).
        action: ``"remove"`` drops flagged passages; ``"demote"`` moves them after the others
            (keeping their relative order); ``"annotate"`` keeps the order and prefixes their
            text with ``note``.
        threshold: Flag at or above this probability (``None``: the detector's own).
        min_keep: Never remove so many that fewer than this many passages remain (the least
            suspicious flagged ones are kept, demoted).
        note: Prefix written by ``action="annotate"``.
        embedder: Embedder for the default / path detectors.
    """


    detector: Any = "default"
    action: Literal["remove", "demote", "annotate"] = "remove"
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    min_keep: int = Field(0, ge=0)
    note: str = DEFAULT_NOTE
    embedder: str = "default"

    _det: Any = PrivateAttr(default=None)

    @field_validator("detector")
    @classmethod
    def _check_detector(cls, v: Any) -> Any:
        if isinstance(v, str | Path):
            v = str(v)
            if v != "default" and not Path(v).is_file():
                raise ValueError(f"detector must be 'default', an existing head JSON path, or an llm spec; {v!r} is not a file")
            return v
        if isinstance(v, Mapping):
            if v.get("type") != "llm" or "generator" not in v:
                raise ValueError("a detector spec must be {'type': 'llm', 'generator': <generator spec>, ...}")
            return dict(v)
        if hasattr(v, "score"):
            return v
        raise ValueError(f"unsupported detector {v!r}")

    def warm_up(self) -> None:
        """Build the detector (loads MiniLM or the generator)."""
        from .detectors import LLMDetector, SetDetector, default_detector

        d = self.detector
        if d == "default":
            self._det = default_detector()
            if self.embedder != "default":
                self._det._embedder_setting, self._det._embedder = self.embedder, None
        elif isinstance(d, str):
            self._det = SetDetector.load(d, embedder=self.embedder)
        elif isinstance(d, dict):
            spec = {k: v for k, v in d.items() if k != "type"}
            try:
                self._det = LLMDetector(**spec)
            except TypeError as exc:
                raise ConfigError(f"rw_steering: bad llm detector spec: {exc}") from None
        else:
            self._det = d

    def to_config(self) -> dict[str, Any]:
        """Config dict; a detector object is written as ``"default"`` only if it was one."""
        cfg = super().to_config()
        if not isinstance(self.detector, str | dict):
            raise ConfigError("rw_steering: a detector object cannot be serialised; pass 'default', a path or a spec")
        return cfg

    def run(self, states: list[ContextState]) -> list[ContextState]:
        """Score every passage of every state in one detector call, then apply ``action``."""
        todo = [s for s in states if s.passages]
        if not todo:
            return states
        det = self._det
        texts = [[self._raw(p) for p in s.passages] for s in todo]
        probs = det.score([s.query for s in todo], texts)
        thr = self.threshold if self.threshold is not None else float(getattr(det, "threshold", 0.5))
        for s, pr in zip(todo, probs, strict=True):
            self._apply(s, np.asarray(pr, dtype=float), thr)
        return states

    @staticmethod
    def _raw(p: Passage) -> str:
        raw = p.metadata.get("raw_text")
        return raw if isinstance(raw, str) and raw else p.text

    def _apply(self, state: ContextState, probs: np.ndarray, thr: float) -> None:
        for p, pr in zip(state.passages, probs, strict=True):
            self.set_score(p, pr)
        flagged = [i for i, pr in enumerate(probs) if pr >= thr]
        state.flags["inappropriate"] = [state.passages[i].id for i in flagged]
        state.trace.count("inappropriate_flagged", len(flagged))
        if not flagged:
            return
        keep = [p for i, p in enumerate(state.passages) if i not in set(flagged)]
        bad = [state.passages[i] for i in flagged]
        if self.action == "annotate":
            for p in bad:
                if not p.text.startswith(self.note):
                    p.text = self.note + p.text
                p.metadata["inappropriate"] = True
            return
        if self.action == "demote":
            state.passages = keep + bad
            return
        short = self.min_keep - len(keep)
        if short > 0:  # keep the least suspicious flagged passages, after the clean ones
            rescued = sorted(bad, key=lambda p: p.scores[self.name])[:short]
            keep = keep + rescued
            state.flags["inappropriate"] = [p.id for p in bad if p not in rescued]
        state.passages = keep
