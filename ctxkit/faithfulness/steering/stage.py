"""The ``rw_steering`` stage: find passages the model should not use; annotate, demote or remove them.

Works on any pipeline's passages (retrieved chunks as well as testbed items): every state of the
batch is scored in one detector call. The combined probability is this stage's passage score
(``passage.scores["rw_steering"]``); with the composite detector each signal's value is recorded
too (``passage.scores["rw_steering.question_echo"]``...), and the ids of flagged passages go to
``state.flags["inappropriate"]``.

Do no harm by default: the default action is ``"annotate"`` (every passage kept, in order, flagged
ones prefixed with a warning), and the default threshold keeps false flags on clean retrieved
lists at or below 5% (calibrated on TREC-DL, HotpotQA and testbed clean lists; see
``docs/steering.md``). Removal is opt-in and needs a detector with calibrated probabilities.
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
    """Flag passages the model should not use before generation (Rescorla-Wagner steering).

    Attributes:
        detector: ``"default"`` (the :class:`~ctxkit.faithfulness.steering.composite.CompositeDetector`
            with the head shipped with ctxkit), ``"claims"`` (the shipped head that also reads the
            passages' claims with the claim judge: slower), ``"set"`` (the older set-structure
            :class:`~ctxkit.faithfulness.steering.detectors.SetDetector`), a path to a head JSON
            (composite or set head), or ``{"type": "llm", "generator": <spec>, ...}`` for an
            :class:`~ctxkit.faithfulness.steering.detectors.LLMDetector`. A detector object is
            accepted too (not serialisable).
        action: ``"annotate"`` (default) keeps every passage in order and prefixes flagged ones
            with ``note``; ``"demote"`` moves flagged passages after the others; ``"remove"``
            drops them (opt-in: needs a detector with calibrated probabilities, and only
            passages at or above ``remove_threshold`` go).
        threshold: Flag at or above this probability (``None``: the detector's calibrated one).
        remove_threshold: Probability at or above which ``action="remove"`` drops a flagged
            passage (``None``: ``threshold``); flagged passages below it are demoted.
        min_keep: ``remove`` never leaves fewer passages than this (the least suspicious flagged
            ones are kept, demoted).
        signals: Composite detector signals to use (``None``: all the detector supports), e.g.
            ``["question_echo", "answer_first", "offensive"]`` to run without the claim judge.
        use_beliefs: Compare passages with the trusted ``state.metadata["beliefs"]`` through the
            claim judge.
        use_facts: Also compare them with the state's ``facts`` when it has no beliefs (e.g.
            FaithfulRAG self-facts: the model's own memory, which can be wrong, so a correct
            passage that contradicts it would be flagged; opt-in).
        note: Prefix written by ``action="annotate"``.
        embedder: Embedder for the default / path detectors.
        device: Device of the detector's models.
    """

    detector: Any = "default"
    action: Literal["annotate", "demote", "remove"] = "annotate"
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    remove_threshold: float | None = Field(None, ge=0.0, le=1.0)
    min_keep: int = Field(1, ge=0)
    signals: list[str] | None = None
    use_beliefs: bool = True
    use_facts: bool = False
    note: str = DEFAULT_NOTE
    embedder: str = "default"
    device: str = "auto"

    _det: Any = PrivateAttr(default=None)

    @field_validator("detector")
    @classmethod
    def _check_detector(cls, v: Any) -> Any:
        if isinstance(v, str | Path):
            v = str(v)
            if v not in ("default", "claims", "set") and not Path(v).is_file():
                raise ValueError(f"detector must be 'default', 'claims', 'set', an existing head JSON path, or an llm spec; "
                                 f"{v!r} is not a file")
            return v
        if isinstance(v, Mapping):
            if v.get("type") != "llm" or "generator" not in v:
                raise ValueError("a detector spec must be {'type': 'llm', 'generator': <generator spec>, ...}")
            return dict(v)
        if hasattr(v, "score"):
            return v
        raise ValueError(f"unsupported detector {v!r}")

    @field_validator("signals")
    @classmethod
    def _check_signals(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        from .composite import SIGNALS

        unknown = [s for s in v if s not in SIGNALS]
        if unknown:
            raise ValueError(f"unknown steering signals {unknown}; choose from {list(SIGNALS)}")
        return list(v)

    def warm_up(self) -> None:
        """Build the detector (loads MiniLM, the claim judge or the generator on first use)."""
        import json

        from .composite import CompositeDetector
        from .detectors import LLMDetector, SetDetector, default_detector

        d = self.detector
        if d in ("default", "claims"):
            self._det = CompositeDetector(d, signals=self.signals, embedder=self.embedder, device=self.device)
        elif d == "set":
            self._det = default_detector()
        elif isinstance(d, str):
            try:
                fmt = json.loads(Path(d).read_text(encoding="utf-8")).get("format")
            except (OSError, ValueError) as exc:
                raise ConfigError(f"rw_steering: cannot read detector head {d!r}: {exc}") from None
            if fmt == "ctxkit.composite_head/1":
                self._det = CompositeDetector(d, signals=self.signals, embedder=self.embedder, device=self.device)
            else:
                self._det = SetDetector.load(d, embedder=self.embedder)
        elif isinstance(d, dict):
            spec = {k: v for k, v in d.items() if k != "type"}
            try:
                self._det = LLMDetector(**spec)
            except TypeError as exc:
                raise ConfigError(f"rw_steering: bad llm detector spec: {exc}") from None
        else:
            self._det = d
        if self.action == "remove" and not getattr(self._det, "calibrated", False):
            raise ConfigError(
                f"rw_steering: action='remove' needs a detector with calibrated probabilities; "
                f"{type(self._det).__name__} has none. Use action='demote' or 'annotate', or the default detector"
            )

    def to_config(self) -> dict[str, Any]:
        """Config dict; a detector object cannot be written (pass 'default', a path or a spec)."""
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
        queries = [s.query for s in todo]
        if hasattr(det, "signal_scores"):
            beliefs = [self._beliefs(s) for s in todo] if self.use_beliefs else None
            results = det.signal_scores(queries, texts, beliefs if beliefs and any(beliefs) else None)
        else:
            results = [{"probability": np.asarray(p, dtype=float)} for p in det.score(queries, texts)]
        thr = self.threshold if self.threshold is not None else float(getattr(det, "threshold", 0.5))
        for s, res in zip(todo, results, strict=True):
            self._apply(s, res, thr)
        return states

    def _beliefs(self, state: ContextState) -> list[str]:
        raw = state.metadata.get("beliefs") or (state.facts if self.use_facts else None) or []
        if isinstance(raw, str):
            raw = [raw]
        out = []
        for b in raw:
            text = b if isinstance(b, str) else (b.get("text") if isinstance(b, Mapping) else getattr(b, "text", None))
            if isinstance(text, str) and text.strip():
                out.append(text.strip())
        return out

    @staticmethod
    def _raw(p: Passage) -> str:
        raw = p.metadata.get("raw_text")
        return raw if isinstance(raw, str) and raw else p.text

    def _apply(self, state: ContextState, res: dict[str, np.ndarray], thr: float) -> None:
        probs = np.asarray(res["probability"], dtype=float)
        for i, p in enumerate(state.passages):
            self.set_score(p, probs[i])
            for sig, vals in res.items():
                if sig != "probability":
                    p.scores[f"{self.name}.{sig}"] = float(vals[i])
        flagged = [i for i, pr in enumerate(probs) if pr >= thr]
        state.flags["inappropriate"] = [state.passages[i].id for i in flagged]
        state.trace.count("inappropriate_flagged", len(flagged))
        if not flagged:
            return
        fset = set(flagged)
        keep = [p for i, p in enumerate(state.passages) if i not in fset]
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
        rthr = self.remove_threshold if self.remove_threshold is not None else thr
        drop = [p for p in bad if p.scores[self.name] >= rthr]
        demoted = [p for p in bad if p.scores[self.name] < rthr]
        short = self.min_keep - len(keep) - len(demoted)
        if short > 0:  # keep the least suspicious removable passages, after the others
            rescued = sorted(drop, key=lambda p: p.scores[self.name])[:short]
            drop = [p for p in drop if p not in rescued]
            demoted = demoted + rescued
        state.flags["removed"] = [p.id for p in drop]
        state.passages = keep + demoted
