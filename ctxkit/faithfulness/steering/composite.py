"""The composite steering detector: several named signals, a small calibrated head, policies.

Signals (each can be switched off; each shows up in the passage's score map, see
:class:`~ctxkit.faithfulness.steering.stage.SteeringFilter`):

* ``question_echo`` and ``answer_first`` (:func:`~.signals.echo_features`): MiniLM cosine to the
  query and content-word overlap with it; the first sentence's overlap and brevity.
* ``claim_disagreement`` (:func:`~.signals.disagreement_features`): each passage's claim read
  against the other passages' claims by the claim judge
  (:class:`~ctxkit.faithfulness.judge.ClaimJudge`); near-duplicates count as one source.
* ``belief_conflict``: when beliefs are given (``state.metadata["beliefs"]``, or the state's
  ``facts`` with ``SteeringFilter(use_facts=True)``), each passage's calibrated conflict score against them from
  :class:`~ctxkit.faithfulness.conflicts.ConflictDetector` (the same judge, passage head and
  threshold as ``ConflictCheck``: a passage the conflict check would not flag adds nothing).
* ``offensive`` and ``sensitive``: the content policies of :mod:`.policies` (configuration).
* ``llm``: an optional :class:`~ctxkit.faithfulness.steering.detectors.LLMDetector` (any
  generator, e.g. one fine-tuned with ``ctxkit steer-train``).

The first three feed a logistic head (trained by ``benchmarks/steering.py --export-head`` and
shipped as ``data/composite_head.json``); the others are combined with its probability by a
noisy-OR, ``p = 1 - prod(1 - p_k)``, so a policy never needs training data of its own category
and a switched-off truth signal sits at its training mean (no push either way).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..._lru import LRUCache
from ...errors import ConfigError, InputError, ModelNotAvailableError
from .policies import OffensiveLanguagePolicy, SensitiveInfoPolicy
from .signals import (
    CLAIM_FEATURES,
    ECHO_FEATURES,
    SHAPE_FEATURES,
    claim_pairs,
    claim_sentence,
    disagreement_features,
    echo_features,
    independence_weights,
)

__all__ = [
    "DEFAULT_COMPOSITE_HEAD",
    "HEAD_SIGNALS",
    "SIGNALS",
    "CompositeDetector",
    "fit_head",
    "packaged_judge_available",
]

log = logging.getLogger(__name__)

DEFAULT_COMPOSITE_HEAD = "composite_head.json"
"""The shipped head: question echo and answer-first shape (no judge call per list: cheap)."""

CLAIMS_COMPOSITE_HEAD = "composite_head_claims.json"
"""The shipped head with the claim-disagreement features (``head="claims"``): the claim judge
reads every pair of on-topic passages of a list (about 90 pairs for 10 passages; its cost was not
timed separately); on the dev PoisonedRAG mixtures it moved F1 from 0.9446 to 0.9475."""

HEAD_SIGNALS: dict[str, tuple[str, ...]] = {
    "question_echo": ECHO_FEATURES,
    "answer_first": SHAPE_FEATURES,
    "claim_disagreement": CLAIM_FEATURES,
}
"""Signals read by the trained head -> their feature names."""

SIGNALS: tuple[str, ...] = (*HEAD_SIGNALS, "belief_conflict", "offensive", "sensitive", "llm")
"""Every signal name (``llm`` is on only when an LLM detector is given)."""

FEATURES: tuple[str, ...] = (*ECHO_FEATURES, *SHAPE_FEATURES, *CLAIM_FEATURES)


def packaged_judge_available() -> bool:
    """True when ctxkit ships a claim judge (``ctxkit/faithfulness/judge/weights/judge.json``)."""
    try:
        return (resources.files("ctxkit.faithfulness.judge") / "weights" / "judge.json").is_file()
    except (ModuleNotFoundError, OSError):
        return False


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def fit_head(x: np.ndarray, y: np.ndarray, features: Sequence[str] = FEATURES, *, explained: np.ndarray | None = None,
             sample_weight: np.ndarray | None = None, c: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Fit the logistic head on feature rows (scikit-learn), items a policy explains left out.

    Args:
        x: ``(n, len(FEATURES))`` rows from :meth:`CompositeDetector.features`.
        y: 0/1 labels (1 = should not be used).
        features: The feature names the head reads (others are ignored).
        explained: Boolean mask of items a policy already flags; they are left out of the fit, so
            the head only has to explain what the policies do not (the noisy-OR's job split).
        sample_weight: Weight per row (e.g. to balance data sources of different sizes).
        c: Inverse L2 strength.
        seed: Seed of the solver.

    Returns:
        A head dict for :class:`CompositeDetector` (threshold 0.5 until calibrated).
    """
    from sklearn.linear_model import LogisticRegression

    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise InputError(f"unknown head features {unknown}; choose from {list(FEATURES)}")
    cols = [FEATURES.index(f) for f in features]
    keep = np.ones(len(y), bool) if explained is None else ~np.asarray(explained, bool)
    xs, ys = np.asarray(x, float)[keep][:, cols], np.asarray(y, int)[keep]
    sw = None if sample_weight is None else np.asarray(sample_weight, float)[keep]
    if len(set(ys.tolist())) < 2:
        raise InputError("fit_head needs both labels among the items no policy explains")
    mean, std = xs.mean(0), xs.std(0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit((xs - mean) / std, ys, sample_weight=sw)
    return {"format": "ctxkit.composite_head/1", "features": list(features), "mean": mean.tolist(),
            "std": std.tolist(), "w": clf.coef_[0].tolist(), "b": float(clf.intercept_[0]), "threshold": 0.5}


def _read_head(head: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(head, Mapping):
        out = dict(head)
    else:
        if str(head) in ("default", "claims"):
            name = DEFAULT_COMPOSITE_HEAD if str(head) == "default" else CLAIMS_COMPOSITE_HEAD
            ref = resources.files("ctxkit.faithfulness.steering") / "data" / name
            try:
                out = json.loads(ref.read_text(encoding="utf-8"))
            except (FileNotFoundError, OSError) as exc:
                raise ModelNotAvailableError(
                    f"the packaged composite steering head {name} is missing; rebuild it with `python "
                    f"benchmarks/steering.py --export-head ctxkit/faithfulness/steering/data/{name}` (add --judge "
                    "default for the claims head)") from exc
        else:
            try:
                out = json.loads(Path(head).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise ModelNotAvailableError(f"cannot read composite head {str(head)!r}: {exc}") from exc
    if out.get("format") != "ctxkit.composite_head/1":
        raise ModelNotAvailableError("not a ctxkit composite steering head (format 'ctxkit.composite_head/1')")
    unknown = [f for f in out.get("features", []) if f not in FEATURES]
    if unknown:
        raise ModelNotAvailableError(f"head reads features {unknown} this ctxkit does not compute; retrain it with "
                                     "`python benchmarks/steering.py --export-head PATH`")
    return out


class CompositeDetector:
    """Calibrated probability per passage that the model should not use it, from named signals.

    Args:
        head: ``"default"`` (the packaged head), ``"claims"`` (the packaged head with the
            claim-disagreement features: a judge call per list), a head JSON path or dict (:func:`fit_head`), or
            ``None`` (no trained head: only the noisy-OR signals count).
        signals: Signal names to use (default: all of :data:`SIGNALS` the configuration supports;
            ``llm`` needs ``llm``). Switching a head signal off holds its features at the
            training mean.
        judge: Claim judge for ``claim_disagreement`` / ``belief_conflict``: ``"default"`` (the
            packaged :class:`~ctxkit.faithfulness.judge.ClaimJudge`), a judge folder, or an object
            with ``predict(beliefs, texts) -> (n, 3)`` (e.g. an ``LLMClaimJudge``).
        embedder: Embedder name for :func:`ctxkit.models.get_embedder`, or an embedder object.
        offensive: The offensive-language policy (``None`` switches it off).
        sensitive: The sensitive-information policy (``None`` switches it off).
        llm: An LLM detector (or a generator spec for one) for the ``llm`` signal.
        llm_confidence: Probability given to an item the LLM names.
        belief_threshold: Passage conflict score below which a belief conflict adds nothing
            (``None``: the conflict detector's calibrated threshold).
        dup_threshold: Cosine at which two passages are near-duplicates (one source).
        pair_similarity: Claims less similar than this are not judged (unrelated).
        threshold: Decision threshold (default: the head's calibrated one, else 0.5).
        device: Device of the judge.
        cache_size: Texts whose embeddings, and ``(belief, text)`` pairs whose judge verdicts,
            are kept for reuse across calls (least recently used dropped first; ``None``:
            unbounded, for batch jobs). Bounded by default so that a stage a service keeps alive
            does not grow with every request.
    """

    @property
    def calibrated(self) -> bool:
        """Whether the probabilities come from a head with a fitted threshold (what
        ``SteeringFilter(action="remove")`` needs): not without a head (policies and beliefs alone
        carry set confidences) and not with the ``llm`` signal (a fixed confidence per named item)."""
        return self.head is not None and "threshold" in self.head and "llm" not in self.signals

    def __init__(
        self,
        head: str | Path | Mapping[str, Any] | None = "default",
        *,
        signals: Sequence[str] | None = None,
        judge: Any = "default",
        embedder: Any = "default",
        offensive: OffensiveLanguagePolicy | None = None,
        sensitive: SensitiveInfoPolicy | None = None,
        llm: Any = None,
        llm_confidence: float = 0.8,
        belief_threshold: float | None = None,
        dup_threshold: float = 0.9,
        pair_similarity: float = 0.3,
        threshold: float | None = None,
        device: str = "auto",
        cache_size: int | None = 20_000,
    ) -> None:
        self.head = _read_head(head) if head is not None else None
        wanted = list(SIGNALS if signals is None else signals)
        unknown = [s for s in wanted if s not in SIGNALS]
        if unknown:
            raise ConfigError(f"unknown steering signals {unknown}; choose from {list(SIGNALS)}")
        if signals is None:
            if llm is None:
                wanted.remove("llm")
            if self.head is not None and "signals" in self.head:
                wanted = [s for s in wanted if s not in HEAD_SIGNALS or s in self.head["signals"]]
        elif "llm" in wanted and llm is None:
            raise ConfigError("signal 'llm' needs llm=<LLMDetector or generator spec>")
        if str(judge) == "default" and not packaged_judge_available():
            dropped = [s for s in wanted if s in ("claim_disagreement", "belief_conflict")]
            if dropped and signals is not None:
                raise ModelNotAvailableError(
                    f"signals {dropped} need the claim judge, and this ctxkit ships none yet: pass judge=<folder "
                    "written by `ctxkit judge-train`> or leave those signals out")
            if dropped:
                log.warning("no packaged claim judge: steering runs without %s", dropped)
            wanted = [s for s in wanted if s not in dropped]
        self.signals = wanted
        self._judge_setting = judge
        self._judge: Any = None if isinstance(judge, str | Path) else judge
        self._embedder_setting = embedder
        self._embedder: Any = None if isinstance(embedder, str) else embedder
        self.offensive = (offensive or OffensiveLanguagePolicy()) if "offensive" in wanted else None
        self.sensitive = (sensitive or SensitiveInfoPolicy()) if "sensitive" in wanted else None
        self._llm_setting = llm
        self._llm: Any = None
        self.llm_confidence = llm_confidence
        self.belief_threshold = belief_threshold
        self.dup_threshold = dup_threshold
        self.pair_similarity = pair_similarity
        self._threshold = threshold
        self.device = device
        if cache_size is not None and cache_size < 1:
            raise ConfigError(f"CompositeDetector: cache_size must be >= 1 or None (unbounded), got {cache_size}")
        self.judge_cache = LRUCache(cache_size)
        self._conflicts: Any = None
        self.emb_cache = LRUCache(cache_size)

    # -- components ------------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        """Decision threshold on the probability."""
        if self._threshold is not None:
            return self._threshold
        return float((self.head or {}).get("threshold", 0.5))

    @property
    def embedder(self) -> Any:
        """The sentence embedder (loaded on first use)."""
        if self._embedder is None:
            from ...models import get_embedder

            self._embedder = get_embedder(str(self._embedder_setting), device=self.device)
        return self._embedder

    @property
    def judge(self) -> Any:
        """The claim judge (loaded on first use)."""
        if self._judge is None:
            from ..judge import shared_judge

            self._judge = shared_judge(str(self._judge_setting), device=self.device)
        return self._judge

    @property
    def llm(self) -> Any:
        """The LLM detector of the ``llm`` signal, or ``None``."""
        if self._llm is None and self._llm_setting is not None:
            from .detectors import LLMDetector

            s = self._llm_setting
            self._llm = s if hasattr(s, "score") else LLMDetector(s)
        return self._llm

    def warm_up(self) -> None:
        """Load the embedder and, when a judge signal is on, the judge."""
        self.embedder.encode(["warm up"])
        if {"claim_disagreement", "belief_conflict"} & set(self.signals):
            self.judge.predict(["a"], ["a"])

    # -- building blocks -------------------------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Embeddings of ``texts`` (those not cached are encoded in one call)."""
        found = {t: v for t in dict.fromkeys(texts) if (v := self.emb_cache.get(t)) is not None}
        todo = [t for t in dict.fromkeys(texts) if t not in found]
        if todo:
            fresh = dict(zip(todo, np.asarray(self.embedder.encode(todo)), strict=True))
            self.emb_cache.update(fresh)
            found.update(fresh)
        return found

    def judge_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Judge probabilities for ``(belief, text)`` pairs, cached, in one call."""
        from ..judge.model import cached_verdicts

        return cached_verdicts(self.judge_cache, [b for b, _ in pairs], [t for _, t in pairs],
                               lambda bs, ts: np.asarray(self.judge.predict(bs, ts), dtype=float))

    def features(self, queries: Sequence[str], item_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Head features per list, ``(m, len(FEATURES))`` each (claim features 0 when that signal is off)."""
        if len(queries) != len(item_lists):
            raise InputError(f"{len(queries)} queries for {len(item_lists)} item lists")
        use_claims = "claim_disagreement" in self.signals
        claims = [[claim_sentence(q, t) for t in items] if use_claims else [] for q, items in
                  zip(queries, item_lists, strict=True)]
        emb = self.embed(list(queries) + [t for items in item_lists for t in items] + [c for cs in claims for c in cs])
        pair_lists: list[list[tuple[int, int]]] = []
        wanted: list[tuple[str, str]] = []
        for cs in claims:
            pr = claim_pairs(cs, np.stack([emb[c] for c in cs]), self.pair_similarity) if use_claims and cs else []
            pair_lists.append(pr)
            wanted += [(cs[i], cs[j]) for i, j in pr]
        judged = self.judge_pairs(wanted) if wanted else np.zeros((0, 3))
        out, pos = [], 0
        for q, items, cs, pr in zip(queries, item_lists, claims, pair_lists, strict=True):
            m = len(items)
            if not m:
                out.append(np.zeros((0, len(FEATURES))))
                continue
            embs = np.stack([emb[t] for t in items])
            f = np.zeros((m, len(FEATURES)))
            f[:, : len(ECHO_FEATURES) + len(SHAPE_FEATURES)] = echo_features(q, items, emb[q], embs)
            if pr:
                probs = np.zeros((m, m, 3))
                probs[..., 2] = 1.0
                for k, (i, j) in enumerate(pr):
                    probs[i, j] = judged[pos + k]
                pos += len(pr)
                w, dup = independence_weights(embs, self.dup_threshold)
                f[:, len(ECHO_FEATURES) + len(SHAPE_FEATURES):] = disagreement_features(probs, w, dup)
            out.append(f)
        return out

    def _head_logits(self, f: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        assert self.head is not None
        names = self.head["features"]
        z = (f[:, [FEATURES.index(n) for n in names]] - np.asarray(self.head["mean"])) / np.asarray(self.head["std"])
        contrib = z * np.asarray(self.head["w"])
        per: dict[str, np.ndarray] = {}
        total = np.full(len(f), float(self.head["b"]))
        for sig, feats in HEAD_SIGNALS.items():
            cols = [k for k, n in enumerate(names) if n in feats]
            if not cols:
                continue
            part = contrib[:, cols].sum(1) if sig in self.signals else np.zeros(len(f))
            per[sig] = part
            total += part
        return total, per

    @property
    def conflict_detector(self) -> Any:
        """The :class:`~ctxkit.faithfulness.conflicts.ConflictDetector` of ``belief_conflict``
        (reads pairs through this detector's judge and cache)."""
        if self._conflicts is None:
            from ..conflicts import ConflictDetector

            det = ConflictDetector(
                self._embedder_setting if isinstance(self._embedder_setting, str) else "default",
                judge=_CachedJudge(self), device=self.device)
            if not isinstance(self._embedder_setting, str):
                det.embedder = self._embedder_setting
            self._conflicts = det
        return self._conflicts

    def belief_scores(self, item_lists: Sequence[Sequence[str]], beliefs: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Each passage's calibrated conflict score against the beliefs (the highest over them)."""
        from ...types import Passage

        passages = [[Passage(id=str(i), text=t) for i, t in enumerate(items)] for items in item_lists]
        scores = self.conflict_detector.passage_scores([list(bs) for bs in beliefs], passages)
        return [np.asarray(s, dtype=float) for s in scores]

    # -- scoring ---------------------------------------------------------------------------------
    def signal_scores(
        self,
        queries: Sequence[str],
        item_lists: Sequence[Sequence[str]],
        beliefs: Sequence[Sequence[str]] | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Per list: ``{"probability": ..., <signal>: ...}`` arrays, one value per item.

        Head signals give their contribution to the head's logit (positive pushes towards
        flagging); the noisy-OR signals give their own probability. ``probability`` is the
        combined, calibrated probability.
        """
        if len(queries) != len(item_lists):
            raise InputError(f"{len(queries)} queries for {len(item_lists)} item lists")
        if beliefs is not None and len(beliefs) != len(queries):
            raise InputError(f"{len(beliefs)} belief lists for {len(queries)} queries")
        head_on = self.head is not None and any(s in self.signals for s in HEAD_SIGNALS)
        feats = self.features(queries, item_lists) if head_on else [np.zeros((len(x), 0)) for x in item_lists]
        flat = [t for items in item_lists for t in items]
        off = self.offensive.score(flat) if self.offensive is not None else None
        sens = self.sensitive.score(flat) if self.sensitive is not None else None
        bel = None
        if "belief_conflict" in self.signals and beliefs is not None and any(beliefs):
            bel = self.belief_scores(item_lists, beliefs)
        llm = self.llm.score(queries, item_lists) if "llm" in self.signals and self.llm is not None else None
        out, pos = [], 0
        for n, (items, f) in enumerate(zip(item_lists, feats, strict=True)):
            m = len(items)
            res: dict[str, np.ndarray] = {}
            keep_prob = np.ones(m)
            if head_on and m:
                logit, per = self._head_logits(f)
                res.update(per)
                p_head = _sigmoid(logit)
                res["head"] = p_head
                keep_prob *= 1.0 - p_head
            if off is not None:
                res["offensive"] = off[pos:pos + m]
                keep_prob *= 1.0 - res["offensive"]
            if sens is not None:
                res["sensitive"] = sens[pos:pos + m]
                keep_prob *= 1.0 - res["sensitive"]
            if bel is not None:
                thr = self.belief_threshold if self.belief_threshold is not None else self.conflict_detector.threshold
                b = np.where(bel[n] >= thr, bel[n], 0.0)
                res["belief_conflict"] = b
                keep_prob *= 1.0 - b
            if llm is not None:
                res["llm"] = np.asarray(llm[n], float) * self.llm_confidence
                keep_prob *= 1.0 - res["llm"]
            res["probability"] = 1.0 - keep_prob
            out.append(res)
            pos += m
        return out

    def score(
        self,
        queries: Sequence[str],
        item_lists: Sequence[Sequence[str]],
        beliefs: Sequence[Sequence[str]] | None = None,
    ) -> list[np.ndarray]:
        """Calibrated probability per item that it should not be used."""
        return [r["probability"] for r in self.signal_scores(queries, item_lists, beliefs)]

    def predict(self, queries: Sequence[str], item_lists: Sequence[Sequence[str]],
                beliefs: Sequence[Sequence[str]] | None = None) -> list[np.ndarray]:
        """0/1 flags per item (probability >= :attr:`threshold`)."""
        return [(p >= self.threshold).astype(int) for p in self.score(queries, item_lists, beliefs)]

    def describe(self) -> dict[str, Any]:
        """What this detector runs: signals, threshold, policy backends, head provenance."""
        return {"signals": list(self.signals), "threshold": self.threshold,
                "offensive": self.offensive.backend if self.offensive is not None else None,
                "head": {k: v for k, v in (self.head or {}).items() if k in ("trained_on", "judge", "calibration")}}


class _CachedJudge:
    """The composite detector's judge seen through its pair cache (for the conflict detector)."""

    def __init__(self, owner: CompositeDetector) -> None:
        self._owner = owner

    @property
    def config(self) -> dict[str, Any]:
        return dict(getattr(self._owner.judge, "config", {}))

    def predict(self, beliefs: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        return self._owner.judge_pairs(list(zip(beliefs, texts, strict=True)))
