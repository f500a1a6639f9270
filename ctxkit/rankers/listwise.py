"""The ranking stage: a small listwise model trained from list-level feedback.

Pistis-RAG's point is that the items the LLM (and the user) find useful are not simply the most
semantically similar ones. :class:`FeedbackRanker` learns a scoring function over per-item
features from the feedback store: every recorded list carries one reward (copy/like,
dislike/regenerate, or a number, possibly an LLM-preference score); the reward, relative to the
other lists shown for the same query, is credited to the list's items, and a listwise loss
(ListNet softmax cross-entropy or Plackett-Luce) fits the scorer to those per-query preferences.

Position bias. Whoever reads the list (a user, or the LLM) does not look at every shown position
equally, and the shown order is not random: the pipeline put its favourite items where it thought
they matter. Crediting every shown item equally, or by an assumed top-heavy discount, then teaches
"whatever was shown at the looked-at positions of liked lists", i.e. the previous ranking. The
default credit (``credit="ips"``) models the reward of a list as
``sum_p theta_p * u(item at shown position p)``: ``theta`` (the examination propensity of each
shown position; the position is the feature of this examination term) is estimated from the
feedback itself (:func:`estimate_position_effects`, shrunk towards where the arranger put its
best items, :func:`position_prior`) or given (``position_weights``, e.g. from a randomised
experiment), and each item's credit is its lists' advantage corrected by inverse propensity,
``sum theta_p * adv / sum theta_p**2`` over its appearances (the variance-optimal weighting of
``adv / theta_p``). The item scorer itself never sees the position, so it ranks new candidates
without one.

Features of an item, all computed within its list so that lists of any length compare:

* every earlier stage's score: z-score, min-max and reciprocal rank within the list, plus a
  "missing" flag;
* passage length (log characters);
* numeric metadata fields you name (``metadata_features``: e.g. source quality, freshness);
* with ``use_embeddings``: cosine of query and passage embeddings, their elementwise product
  projected down to ``emb_proj`` learned dimensions, and the passage embedding itself projected
  to ``passage_proj`` dimensions (what kind of passage it is, whatever the query: the source, the
  style, whether it states facts; things a relevance model does not score).

The scorer's last layer starts at zero, so an untrained (or barely trained) ranker gives all
items the same score and the stable sort keeps the pre-ranking order (cold start).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, PrivateAttr, field_validator

from .._lazy import require
from ..errors import ConfigError, InputError
from ..pipeline import BaseStage
from ..types import ContextState, Passage
from ._common import apply_scores, flatten, passage_text
from .feedback import FeedbackStore, ShownList

__all__ = [
    "FeedbackRanker",
    "estimate_position_effects",
    "listnet_loss",
    "plackett_luce_loss",
    "position_prior",
]

Loss = Literal["listnet", "plackett_luce"]
Credit = Literal["ips", "dcg", "uniform"]
_PER_KEY = 4  # z-score, min-max, reciprocal rank, missing
_ARRANGE_PREFIX = "arrange"  # the Arranger's score: 1 / (1 + the item's rank before arranging)
_MIN_STEPS = 8  # optimiser steps per training epoch, at least (smaller mini-batches of query groups)


def position_prior(items: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Prior weight of each shown position of one recorded list: where its ranking put its best items.

    The :class:`~ctxkit.rankers.Arranger` records each item's rank before arranging (its score
    ``1 / (1 + rank)``), so the prior of the position holding the rank-``r`` item is the DCG weight
    ``1 / log2(r + 2)``: with ``best_last`` the last shown position gets the most weight, with
    ``as_ranked`` the first. A list without arranger scores was shown in ranked order (best first).

    Args:
        items: The list's items in shown order (dicts with ``"scores"``, as the store keeps them).

    Returns:
        One weight per shown position, the largest 1.
    """
    ranks = []
    for pos, it in enumerate(items):
        scores = it.get("scores") or {}
        key = next((k for k in scores if k.startswith(_ARRANGE_PREFIX)), None)
        v = scores.get(key) if key else None
        ranks.append(round(1.0 / float(v) - 1.0) if v else pos)
    if len(set(ranks)) != len(ranks):  # not a permutation (scores from elsewhere): shown order
        ranks = list(range(len(items)))
    return 1.0 / np.log2(np.asarray(ranks, dtype=np.float64) + 2.0)


def estimate_position_effects(
    advantages: Sequence[float],
    features: Sequence[np.ndarray],
    priors: Sequence[np.ndarray],
    *,
    n_positions: int,
    prior_lists: float = 20.0,
    clip: float = 0.05,
    ridge: float = 1.0,
    iterations: int = 15,
) -> np.ndarray:
    """Examination propensity of each shown position, from list rewards alone.

    Fits the bilinear model ``adv_l = sum_p theta_p * (w . x_lp) + noise`` by alternating least
    squares: ``x_lp`` are the features of the item shown at position ``p`` of list ``l``
    (centred per query), ``w . x`` a linear stand-in for the item's usefulness and ``theta`` the
    position effects (clipped below at ``clip``, largest 1). ``theta`` is shrunk towards the mean
    prior per position with the weight of ``prior_lists`` lists, so little feedback gives back the
    prior and a lot of feedback gives what the readers actually did.

    Args:
        advantages: Per list, its reward minus the mean reward of its query's lists.
        features: Per list, ``(n_items, n_features)`` item features in shown order.
        priors: Per list, the prior weight of each shown position (:func:`position_prior`).
        n_positions: Positions estimated; later positions share the last one's effect.
        prior_lists: Strength of the prior, in lists.
        clip: Smallest propensity (relative to the largest): bounds the inverse-propensity credit.
        ridge: L2 penalty of the usefulness weights ``w``.
        iterations: Alternating least-squares rounds.

    Returns:
        ``(n_positions,)`` propensities in ``[clip, 1]``.
    """
    n_lists = len(advantages)
    prior = np.zeros(n_positions)
    count = np.zeros(n_positions)
    for pr in priors:
        idx = np.minimum(np.arange(len(pr)), n_positions - 1)
        np.add.at(prior, idx, pr)
        np.add.at(count, idx, 1.0)
    prior = np.where(count > 0, prior / np.maximum(count, 1.0), prior[count > 0].min() if count.any() else 1.0)
    prior = prior / prior.max() if prior.max() > 0 else np.ones(n_positions)
    if n_lists == 0 or not features or features[0].shape[1] == 0:
        return np.clip(prior, clip, 1.0)
    y = np.asarray(advantages, dtype=np.float64)
    m = features[0].shape[1]
    pos_of = [np.minimum(np.arange(len(f)), n_positions - 1) for f in features]
    theta = prior.copy()
    for _ in range(iterations):
        # usefulness weights given theta: adv_l ~ (sum_p theta_p x_lp) . w
        X = np.stack([(theta[po][:, None] * f).sum(0) for f, po in zip(features, pos_of, strict=True)])
        w = np.linalg.solve(X.T @ X + ridge * np.eye(m), X.T @ y)
        # theta given the usefulness: adv_l ~ sum_p theta_p h_lp, shrunk towards the prior
        H = np.zeros((n_lists, n_positions))
        for i, (f, po) in enumerate(zip(features, pos_of, strict=True)):
            np.add.at(H[i], po, f @ w)
        mu = prior_lists * float(np.mean(H**2)) + 1e-12
        new = np.linalg.solve(H.T @ H + mu * np.eye(n_positions), H.T @ y + mu * prior)
        if new.max() <= 0:  # no position helps explain the rewards: keep the prior
            return np.clip(prior, clip, 1.0)
        theta = np.clip(new / new.max(), clip, 1.0)
    return theta


def listnet_loss(scores: Any, targets: Any, mask: Any, temperature: float = 1.0, reduce: bool = True) -> Any:
    """ListNet: cross-entropy between softmax(targets) and softmax(scores), per padded row
    (their mean, or one per row with ``reduce=False``)."""
    torch = require("torch")
    neg = torch.finfo(scores.dtype).min / 4
    p = torch.softmax(torch.where(mask, targets / temperature, neg), dim=-1)
    logq = torch.log_softmax(torch.where(mask, scores, neg), dim=-1)
    rows = -(p * logq * mask).sum(-1)
    return rows.mean() if reduce else rows


def plackett_luce_loss(scores: Any, targets: Any, mask: Any, reduce: bool = True) -> Any:
    """Plackett-Luce negative log-likelihood of the order given by ``targets`` (best first; the
    mean over rows, or one per row with ``reduce=False``)."""
    torch = require("torch")
    neg = torch.finfo(scores.dtype).min / 4
    order = torch.argsort(torch.where(mask, targets, neg), dim=-1, descending=True, stable=True)
    s = torch.gather(torch.where(mask, scores, neg), -1, order)
    m = torch.gather(mask, -1, order)
    # log sum_{j>=i} exp(s_j): reverse cumulative logsumexp
    tail = torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)
    rows = -((s - tail) * m).sum(-1) / m.sum(-1).clamp(min=1)
    return rows.mean() if reduce else rows


def _as_float(x: Any, feature: str, p: Passage) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        raise InputError(
            f"feedback_ranker: metadata feature {feature!r} of passage {p.id!r} is not numeric ({x!r})"
        ) from None


def _build_net(n_base: int, emb_dim: int, emb_proj: int, hidden: int, passage_proj: int = 0) -> Any:
    torch = require("torch")
    nn = torch.nn

    class _Scorer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(emb_dim, emb_proj) if emb_dim else None
            self.pproj = nn.Linear(emb_dim, passage_proj) if emb_dim and passage_proj else None
            n_in = n_base + (emb_proj + 1 if emb_dim else 0) + (passage_proj if self.pproj is not None else 0)
            self.mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

        def forward(self, base: Any, q: Any | None = None, p: Any | None = None) -> Any:
            x = base
            if self.proj is not None:
                cos = (q * p).sum(-1, keepdim=True)
                x = torch.cat([x, cos, self.proj(q * p)], dim=-1)
            if self.pproj is not None:
                x = torch.cat([x, self.pproj(p)], dim=-1)
            return self.mlp(x).squeeze(-1)

    return _Scorer()


class FeedbackRanker(BaseStage):
    """Listwise ranking stage trained from the feedback store (``fit``, ``partial_fit``).

    Attributes:
        k: Passages kept per query after ranking (``None``: all, re-ordered).
        store: The feedback store ``fit()`` reads by default: a SQLite file or a
            ``postgresql://`` URL (shared by several service replicas).
        model_path: Directory of a saved ranker, loaded on first use when it exists.
        loss: ``"listnet"`` (softmax cross-entropy) or ``"plackett_luce"``: the listwise loss
            on the items' credit for ``credit="dcg"`` / ``"uniform"``. ``credit="ips"`` fits the
            examination model of the list rewards instead (squared error of each shown list's
            advantage; see :meth:`_train`).
        credit: How a list's advantage (its reward minus its query's mean) is credited to the
            items it showed. ``"ips"`` (default): inverse-propensity credit, position bias
            corrected with the examination propensity of each shown position
            (``position_weights``, or :attr:`position_effects` estimated at ``fit`` time).
            ``"dcg"``: the advantage times ``1/log2(shown position + 2)`` (assumes readers look
            at the top; with ``Arranger("best_last")`` this credits the weakest, first-shown
            item most) and ``"uniform"``: the advantage as it is. Both are kept for comparison.
        position_weights: Known examination propensities of the shown positions (first shown
            first; later positions get the last value), e.g. measured by a randomised-order
            experiment. ``None``: estimated from the feedback (:func:`estimate_position_effects`).
        propensity_clip: Smallest propensity used (relative to the largest): bounds the credit
            of an item seen only at rarely examined positions.
        position_prior_lists: How many lists' worth of evidence the prior (the arranger's
            placement, :func:`position_prior`) counts for when the propensities are estimated.
        score_keys: Earlier stages' score names used as features (``None``: every score seen in
            the training lists except this stage's own and the arranger's, fixed at fit time).
        metadata_features: Numeric ``Passage.metadata`` fields used as features.
        use_embeddings: Add query/passage embedding interactions (needs an embedder).
        embedder: Embedding model for those interactions (``"default"``: all-MiniLM-L6-v2).
        hidden: Hidden units of the scorer.
        emb_proj: Learned dimensions of the projected query*passage product.
        passage_proj: Learned dimensions of the projected passage embedding (0: none).
        epochs: Training epochs for ``fit`` (``partial_fit`` uses ``epochs // 4``).
        lr: Adam learning rate.
        weight_decay: L2 regularisation.
        temperature: Softmax temperature of the ListNet targets.
        validation: Fraction of query groups per validation fold (0.2: 5 folds; 0: no gate,
            train every epoch and keep the last weights). See ``val_z``.
        patience: Epochs without validation improvement before a fold's training stops.
        min_delta: Validation improvement that counts when a fold picks its best epoch,
            relative to the untrained model's validation loss (for ListNet the KL divergence to
            the targets). With list rewards most of that loss is noise no model can explain, so
            the default is 0 and ``val_z`` decides instead.
        val_z: The gate. ``fit`` trains one model per fold on the other folds, stopped early on
            its fold; each fold's groups are then scored at the epoch count the other folds
            chose, and the per-group improvements over the untrained start, over every query
            group, make one paired test. Only when their mean is at least ``val_z`` standard
            errors above 0 does a model trained on every group (for the folds' median epoch
            count) replace the start; otherwise the pre-ranking order stays. Fitting noise (e.g.
            shuffled rewards) rarely passes it; a real signal does, however small its share of
            the loss. ``fit`` reports the test (``"gate"``). Costs ``folds + 1`` trainings.
        seed: Seed of initialisation and training (same seed, same data: identical weights).
    """


    k: int | None = Field(10, gt=0)
    store: str | None = None
    model_path: str | None = None
    loss: Loss = "listnet"
    credit: Credit = "ips"
    position_weights: list[float] | None = None
    propensity_clip: float = Field(0.05, gt=0, le=1)
    position_prior_lists: float = Field(20.0, ge=0)
    score_keys: list[str] | None = None
    metadata_features: list[str] = Field(default_factory=list)
    use_embeddings: bool = True
    embedder: str = "default"
    hidden: int = Field(32, gt=0)
    emb_proj: int = Field(8, gt=0)
    passage_proj: int = Field(8, ge=0)
    epochs: int = Field(150, gt=0)
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    temperature: float = Field(1.0, gt=0)
    validation: float = Field(0.2, ge=0, lt=1)
    patience: int = Field(10, gt=0)
    min_delta: float = Field(0.0, ge=0)
    val_z: float = Field(2.0, ge=0)
    seed: int = 0

    _net: Any = PrivateAttr(default=None)
    _opt: Any = PrivateAttr(default=None)
    _keys: list[str] | None = PrivateAttr(default=None)
    _emb_dim: int = PrivateAttr(default=0)
    _last_event_id: int = PrivateAttr(default=0)
    _baseline: float = PrivateAttr(default=0.0)
    _n_lists: int = PrivateAttr(default=0)
    _emb: Any = PrivateAttr(default=None)
    _last_seen: int = PrivateAttr(default=0)
    _val_history: list[float] = PrivateAttr(default_factory=list)
    _gate: dict[str, Any] | None = PrivateAttr(default=None)
    _theta: list[float] | None = PrivateAttr(default=None)

    @field_validator("position_weights")
    @classmethod
    def _check_position_weights(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(not math.isfinite(x) or x < 0 for x in v) or max(v) <= 0):
            raise ValueError("position_weights must be non-negative numbers with a positive maximum")
        return v

    # -- state -----------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        """True once the ranker has been trained or loaded."""
        return self._net is not None

    def warm_up(self) -> None:
        if self._net is None and self.model_path and (Path(self.model_path) / "ranker.json").exists():
            self._load_into(Path(self.model_path))

    def _embedder(self) -> Any:
        if self._emb is None:
            from ..models import get_embedder

            self._emb = get_embedder(self.embedder)
        return self._emb

    # -- features --------------------------------------------------------------------------------
    def _base_features(self, items: Sequence[Passage], keys: list[str]) -> np.ndarray:
        n = len(items)
        cols = []
        for key in keys:
            raw = np.array([p.scores.get(key, np.nan) for p in items], dtype=np.float64)
            missing = np.isnan(raw)
            v = np.where(missing, np.nanmin(raw) if (~missing).any() else 0.0, raw)
            sd = v.std()
            z = (v - v.mean()) / sd if sd > 1e-12 else np.zeros(n)
            span = v.max() - v.min() if n else 0.0
            mm = (v - v.min()) / span if span > 1e-12 else np.full(n, 0.5)
            rank = np.empty(n)
            rank[np.argsort(-v, kind="stable")] = np.arange(n)
            cols += [z, mm, 1.0 / (1.0 + rank), missing.astype(np.float64)]
        cols.append(np.log1p([len(p.text) for p in items]) / 8.0)
        for f in self.metadata_features:
            cols.append(np.asarray([_as_float(p.metadata.get(f, 0.0), f, p) for p in items]))
        return np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((n, 0), np.float32)

    def _n_base(self, keys: list[str]) -> int:
        return _PER_KEY * len(keys) + 1 + len(self.metadata_features)

    def _embed_rows(self, queries: list[str], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of each row's query and passage text, in one encoder call."""
        uq = list(dict.fromkeys(queries))
        ut = list(dict.fromkeys(texts))
        emb = self._embedder().encode(uq + ut)
        qi = {q: i for i, q in enumerate(uq)}
        ti = {t: i + len(uq) for i, t in enumerate(ut)}
        return emb[[qi[q] for q in queries]], emb[[ti[t] for t in texts]]

    def _padded(self, groups: list[tuple[str, list[Passage]]], keys: list[str]) -> dict[str, Any]:
        """Features of every group (query, items) padded into ``(G, L, ...)`` tensors."""
        torch = require("torch")
        G = len(groups)
        L = max((len(items) for _, items in groups), default=0)
        nb = self._n_base(keys)
        base = np.zeros((G, L, nb), np.float32)
        mask = np.zeros((G, L), bool)
        for g, (_, items) in enumerate(groups):
            if items:
                base[g, : len(items)] = self._base_features(items, keys)
                mask[g, : len(items)] = True
        out = {"base": torch.from_numpy(base), "mask": torch.from_numpy(mask)}
        if self.use_embeddings:
            queries = [q for q, items in groups for _ in items]
            texts = [passage_text(p) for _, items in groups for p in items]
            qe, pe = self._embed_rows(queries, texts) if texts else (np.zeros((0, 1)), np.zeros((0, 1)))
            d = qe.shape[1] if len(texts) else max(self._emb_dim, 1)
            Q = np.zeros((G, L, d), np.float32)
            P = np.zeros((G, L, d), np.float32)
            Q[mask] = qe
            P[mask] = pe
            out["q"], out["p"] = torch.from_numpy(Q), torch.from_numpy(P)
        return out

    def _forward(self, t: dict[str, Any]) -> Any:
        return self._net(t["base"], t.get("q"), t.get("p"))

    # -- position bias ---------------------------------------------------------------------------
    @property
    def position_effects(self) -> list[float] | None:
        """Examination propensity of each shown position used for the credit (largest 1): the
        ``position_weights`` setting, or the estimate of the last ``fit`` (``None`` before, or
        with ``credit`` other than ``"ips"``). Pass them to
        ``Arranger(strategy="learned", position_weights=...)`` to put the best items where
        readers look."""
        if self.credit != "ips":
            return None
        if self.position_weights is not None:
            w = np.asarray(self.position_weights, dtype=np.float64)
            return [float(x) for x in np.clip(w / w.max(), self.propensity_clip, 1.0)]
        return list(self._theta) if self._theta is not None else None

    def _advantages(self, lists: list[ShownList], baseline: float | None) -> dict[str, list[tuple[ShownList, float]]]:
        """Lists with feedback grouped by query, each with its advantage over the query's mean."""
        by_query: dict[str, list[ShownList]] = {}
        for sl in lists:
            if sl.items and sl.rewards:
                by_query.setdefault(sl.query, []).append(sl)
        glob = baseline if baseline is not None else (
            float(np.mean([sl.reward for v in by_query.values() for sl in v])) if by_query else 0.0
        )
        out = {}
        for query, sls in by_query.items():
            base = float(np.mean([s.reward for s in sls])) if len(sls) > 1 else glob
            out[query] = [(sl, sl.reward - base) for sl in sls]
        return out

    def _estimate_theta(self, grouped: dict[str, list[tuple[ShownList, float]]], keys: list[str]) -> list[float]:
        """Position effects from the feedback (see :func:`estimate_position_effects`)."""
        n_pos = max((len(sl.items) for v in grouped.values() for sl, _ in v), default=1)
        advs, feats, priors = [], [], []
        for sls in grouped.values():
            if len(sls) < 2:  # a query's only list has no advantage to explain
                continue
            per_list = [self._proxy_features(sl.passages(), keys) for sl, _ in sls]
            # the advantage is the reward minus the query's mean, so each position's features are
            # centred on the query's mean at that position (the fixed-effects form of the model)
            width = max(len(f) for f in per_list)
            total = np.zeros((width, per_list[0].shape[1]))
            count = np.zeros((width, 1))
            for f in per_list:
                total[: len(f)] += f
                count[: len(f)] += 1.0
            centre = total / np.maximum(count, 1.0)
            for (sl, adv), f in zip(sls, per_list, strict=True):
                advs.append(adv)
                feats.append(f - centre[: len(f)])
                priors.append(position_prior(sl.items))
        theta = estimate_position_effects(advs, feats, priors, n_positions=n_pos, prior_lists=self.position_prior_lists,
                                          clip=self.propensity_clip)
        return [float(x) for x in theta]

    def _proxy_features(self, items: Sequence[Passage], keys: list[str]) -> np.ndarray:
        """Raw item features for the usefulness stand-in of the position model (no list context)."""
        cols = [[float(p.scores.get(k, np.nan)) for p in items] for k in keys]
        cols = [np.nan_to_num(np.asarray(c), nan=float(np.nanmin(c)) if not np.isnan(c).all() else 0.0) for c in cols]
        cols.append(np.log1p([len(p.text) for p in items]) / 8.0)
        for f in self.metadata_features:
            cols.append(np.asarray([_as_float(p.metadata.get(f, 0.0), f, p) for p in items]))
        return np.stack(cols, axis=1)

    def _propensity(self, n: int) -> np.ndarray:
        """Propensities of shown positions ``0..n-1`` (positions past the known ones: the last)."""
        theta = self.position_effects or [1.0]
        return np.asarray([theta[min(j, len(theta) - 1)] for j in range(n)], dtype=np.float64)

    # -- training data from feedback -------------------------------------------------------------
    def _credits(self, grouped: dict[str, list[tuple[ShownList, float]]]) -> dict[str, tuple[list[Passage], np.ndarray]]:
        """Per query: its distinct shown items and their credit (before standardisation)."""
        out = {}
        # ips: each appearance says adv = theta_p * u + (the other shown items and noise), so the
        # item's credit is the posterior mean sum(theta_p * adv) / (sum(theta_p^2) + kappa): the
        # inverse-propensity estimate sum(theta_p * adv) / sum(theta_p^2) (the mean of adv / theta_p
        # weighted by theta_p^2), shrunk towards the query's mean by kappa, the share of a list's
        # advantage that comes from its other positions (sum of theta^2 over a shown list). An item
        # seen only where nobody looks gets little credit either way, instead of noise / theta.
        kappa = 0.0
        if self.credit == "ips":
            sizes = [len(sl.items) for sls in grouped.values() for sl, _ in sls]
            kappa = float(np.mean([np.sum(self._propensity(n) ** 2) for n in sizes])) if sizes else 1.0
        for query, sls in grouped.items():
            num: dict[str, float] = {}
            den: dict[str, float] = {}
            first: dict[str, Passage] = {}
            for sl, adv in sls:
                passages = sl.passages()
                if self.credit == "ips":
                    w = self._propensity(len(passages))
                elif self.credit == "dcg":
                    w = 1.0 / np.log2(np.arange(len(passages)) + 2.0)
                else:
                    w = np.ones(len(passages))
                for pos, p in enumerate(passages):
                    num[p.id] = num.get(p.id, 0.0) + adv * w[pos]
                    # dcg / uniform: the plain mean of the weighted advantages
                    den[p.id] = den.get(p.id, 0.0) + (w[pos] ** 2 if self.credit == "ips" else 1.0)
                    first.setdefault(p.id, p)
            ids = list(first)
            out[query] = ([first[i] for i in ids], np.array([num[i] / (den[i] + kappa) for i in ids]))
        return out

    def item_credit(self, lists: Sequence[ShownList]) -> dict[str, dict[str, float]]:
        """What each shown item is credited with, per query (``{query: {item id: credit}}``).

        ``"dcg"`` / ``"uniform"``: the targets ``fit`` trains on (before standardisation).
        ``"ips"``: each item's own inverse-propensity estimate, ``sum(theta_p * adv) /
        (sum(theta_p^2) + kappa)`` over its appearances, for inspection (``fit`` estimates the
        same thing through the scorer, so that items share evidence through their features).
        With ``credit="ips"`` and no ``position_weights`` the position effects of the last
        ``fit`` are used (estimated from ``lists`` when the ranker was never fitted).
        """
        lists = list(lists)
        grouped = self._advantages(lists, None)
        if self.credit == "ips" and self.position_weights is None and self._theta is None:
            self._theta = self._estimate_theta(grouped, self._keys if self._keys is not None else self._feature_keys(lists))
        return {q: {p.id: float(v) for p, v in zip(items, t, strict=True)} for q, (items, t) in self._credits(grouped).items()}

    def _training_groups(self, lists: list[ShownList], baseline: float | None = None) -> tuple[list[tuple[str, list[Passage]]], list[Any]]:
        """Per-query groups of shown items with their training targets.

        ``credit="ips"``: per group, ``(W, adv)``: ``W[l, i]`` is the propensity of the position
        at which list ``l`` showed item ``i`` (0 where it did not), ``adv`` the lists'
        advantages (divided by their overall standard deviation); only queries with several lists.
        Otherwise: each item's standardised credit.
        """
        grouped = self._advantages(lists, baseline)
        groups: list[tuple[str, list[Passage]]] = []
        targets: list[Any] = []
        if self.credit == "ips":
            multi = {q: sls for q, sls in grouped.items() if len(sls) > 1}
            scale = float(np.std([a for sls in multi.values() for _, a in sls])) if multi else 0.0
            for query, sls in multi.items():
                first: dict[str, int] = {}
                items: list[Passage] = []
                for sl, _ in sls:
                    for p in sl.passages():
                        if p.id not in first:
                            first[p.id] = len(items)
                            items.append(p)
                adv = np.array([a for _, a in sls])
                if len(items) < 2 or scale < 1e-12 or np.abs(adv).max() < 1e-12:
                    continue
                W = np.zeros((len(sls), len(items)))
                for li, (sl, _) in enumerate(sls):
                    theta = self._propensity(len(sl.items))
                    for pos, it in enumerate(sl.items):
                        W[li, first[it["id"]]] += theta[pos]
                groups.append((query, items))
                targets.append((W, adv / scale))
            return groups, targets
        for query, (items, t) in self._credits(grouped).items():
            if len(items) < 2 or t.std() < 1e-9:
                continue
            groups.append((query, items))
            targets.append((t - t.mean()) / t.std())
        return groups, targets

    def _train(self, groups: list[tuple[str, list[Passage]]], targets: list[Any], epochs: int) -> list[float]:
        """Mini-batch training behind the cross-fitted gate (see ``val_z``): the weights trained on
        every group when the gate passes, the start weights (no change) when it does not.

        ``credit="ips"`` fits the examination model of the list rewards: a list's predicted
        advantage is ``sum_p theta_p * score(item at p)`` minus the mean of that over its query's
        lists, and the loss is its squared error. Otherwise the listwise ``loss`` fits the items'
        credit targets."""
        torch = require("torch")
        t = self._padded(groups, self._keys or [])
        by_list = self.credit == "ips"
        if by_list:
            G, n_items = t["mask"].shape
            n_lists = max(len(a) for _, a in targets)
            W = np.zeros((G, n_lists, n_items), np.float32)
            adv = np.zeros((G, n_lists), np.float32)
            lmask = np.zeros((G, n_lists), bool)
            for g, (w, a) in enumerate(targets):
                W[g, : w.shape[0], : w.shape[1]] = w
                adv[g, : len(a)] = a
                lmask[g, : len(a)] = True
            W_t, adv_t, lmask_t = torch.from_numpy(W), torch.from_numpy(adv), torch.from_numpy(lmask)
        else:
            tgt = np.zeros(t["mask"].shape, np.float32)
            for g, v in enumerate(targets):
                tgt[g, : len(v)] = v
            tgt_t = torch.from_numpy(tgt)
        gen = torch.Generator().manual_seed(self.seed + self._n_lists)
        n = len(groups)
        order = torch.randperm(n, generator=gen)

        def loss_of(idx: Any, reduce: bool = True) -> Any:
            """The batch loss, or (``reduce=False``) one loss per query group."""
            batch = {k: v[idx] for k, v in t.items()}
            s = self._forward(batch)
            if by_list:
                m = lmask_t[idx].float()
                pred = torch.einsum("gli,gi->gl", W_t[idx], torch.where(batch["mask"], s, 0.0))
                pred = pred - (pred * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)
                err = ((adv_t[idx] - pred) ** 2) * m
                return err.sum() / m.sum().clamp(min=1) if reduce else err.sum(-1) / m.sum(-1).clamp(min=1)
            if self.loss == "listnet":
                return listnet_loss(s, tgt_t[idx], batch["mask"], self.temperature, reduce=reduce)
            return plackett_luce_loss(s, tgt_t[idx], batch["mask"], reduce=reduce)

        def evaluate(idx: Any) -> tuple[float, np.ndarray]:
            """Mean loss and per-group losses of ``idx`` (eval mode, no gradients); the mean is
            reported for ListNet as KL(targets || model), 0 being perfect."""
            self._net.eval()
            with torch.no_grad():
                per_group = loss_of(idx, reduce=False).numpy().astype(np.float64)
                entropy = 0.0
                if not by_list and self.loss == "listnet":
                    m = t["mask"][idx]
                    q = torch.softmax(torch.where(m, tgt_t[idx] / self.temperature, -1e30), dim=-1)
                    entropy = float(-(q * torch.log(q.clamp_min(1e-30)) * m).sum(-1).mean())
            self._net.train()
            return float(per_group.mean()) - entropy, per_group

        start_state = {k: v.clone() for k, v in self._net.state_dict().items()}

        def run(train_idx: Any, stop_idx: Any | None, n_epochs: int) -> tuple[list[float], list[np.ndarray], int]:
            """Train from the start weights; with ``stop_idx``, stop early on their loss. Returns
            the train losses, the per-group losses of ``stop_idx`` after each epoch (the start
            first) and the best epoch (0: the start)."""
            from tqdm.auto import trange

            self._net.load_state_dict(start_state)
            self._opt = torch.optim.Adam(self._net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            # mini-batches of query groups, at least _MIN_STEPS optimiser steps per epoch (a few
            # hundred groups in one batch would be one step per epoch: early stopping would then
            # judge the model after a handful of steps)
            bs = max(1, min(256, math.ceil(len(train_idx) / _MIN_STEPS)))
            history: list[float] = []
            first = evaluate(stop_idx) if stop_idx is not None else (float("inf"), np.zeros(0))
            per_epoch, means = [first[1]], [first[0]]
            best, best_epoch, bad = first[0], 0, 0
            self._net.train()
            for epoch in trange(n_epochs, desc="feedback_ranker", disable=n_epochs * len(train_idx) < 20000, leave=False):
                perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
                total = 0.0
                for i in range(0, len(perm), bs):
                    idx = perm[i : i + bs]
                    loss = loss_of(idx)
                    self._opt.zero_grad()
                    loss.backward()
                    self._opt.step()
                    total += float(loss.detach()) * len(idx)
                history.append(total / max(len(perm), 1))
                if stop_idx is None:
                    continue
                v, groups_v = evaluate(stop_idx)
                per_epoch.append(groups_v)
                means.append(v)
                if v < best - self.min_delta * abs(means[0]):
                    best, best_epoch, bad = v, epoch + 1, 0
                else:
                    bad += 1
                    if bad >= self.patience:
                        break
            if stop_idx is not None:
                self._val_history = means
            self._net.eval()
            return history, per_epoch, best_epoch

        k = min(max(2, round(1.0 / self.validation)), n // 2) if self.validation > 0 and n >= 5 else 0
        self._gate = None
        if not k:  # no held-out groups: train every epoch, keep the last weights
            self._val_history = []
            return run(order, None, epochs)[0]
        # cross-fitted gate: k models, each trained on all folds but one and stopped early on it;
        # each fold's groups are then scored at the epoch count the OTHER folds chose (so no group
        # scores the epoch picked on it), and the paired per-group improvements over the start of
        # every group make ONE test (testing every epoch's model on the groups it stops on lets
        # noise through). The shipped model trains on every group for the median chosen epochs.
        curves, best_epochs, fold_val = [], [], []
        for f in range(k):
            rest = torch.cat([order[g::k] for g in range(k) if g != f])
            _, per_epoch, best_epoch = run(rest, order[f::k], epochs)
            curves.append(per_epoch)
            best_epochs.append(best_epoch)
            fold_val.append(list(self._val_history))
        improvements = []
        for f in range(k):
            e = round(float(np.median([b for g, b in enumerate(best_epochs) if g != f])))
            improvements.append(curves[f][0] - curves[f][min(e, len(curves[f]) - 1)])
        d = np.concatenate(improvements)
        se = float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else float("inf")
        z = float(d.mean()) / se if se > 0 else (math.inf if d.mean() > 0 else 0.0)
        final_epochs = round(float(np.median(best_epochs)))
        kept = bool(z >= self.val_z and d.mean() > 0 and final_epochs > 0)
        self._val_history = fold_val[0]
        self._gate = {"folds": k, "groups": len(d), "mean_improvement": round(float(d.mean()), 6),
                              "z": round(z, 3) if math.isfinite(z) else z, "best_epochs": best_epochs,
                              "kept": kept, "epochs": final_epochs if kept else 0}
        if not kept:  # not better than the start beyond noise: keep the start (pre-ranking order)
            self._net.load_state_dict(start_state)
            self._net.eval()
            return []
        return run(order, None, final_epochs)[0]

    def _feature_keys(self, lists: Sequence[ShownList]) -> list[str]:
        if self.score_keys is not None:
            return list(self.score_keys)
        # scores written at or after this stage (its own, the arranger's) describe the shown
        # order, not the item, and are absent when ranking new candidates: never features
        return [k for k in dict.fromkeys(k for sl in lists for it in sl.items for k in (it.get("scores") or {}))
                if k != self.name and not k.startswith(("feedback_ranker", _ARRANGE_PREFIX))]

    def _init_model(self, lists: list[ShownList]) -> None:
        torch = require("torch")
        keys = self._feature_keys(lists)
        self._keys = keys
        self._emb_dim = self._embedder().dim if self.use_embeddings else 0
        torch.manual_seed(self.seed)
        self._net = _build_net(self._n_base(keys), self._emb_dim, self.emb_proj, self.hidden, self.passage_proj)
        self._opt = torch.optim.Adam(self._net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def _lists_from(self, source: FeedbackStore | str | Sequence[ShownList] | None, since: int = 0) -> list[ShownList]:
        if source is None:
            if not self.store:
                raise ConfigError("feedback_ranker: pass a FeedbackStore (or set store=<path>) to train")
            source = self.store
        if isinstance(source, str | Path):
            source = FeedbackStore(source)
        if isinstance(source, FeedbackStore):
            self._last_seen = source.last_event_id()
            return source.lists(since_event_id=since)
        return list(source)

    def fit(self, source: FeedbackStore | str | Sequence[ShownList] | None = None, *, epochs: int | None = None) -> dict[str, Any]:
        """Train from scratch on every list with feedback.

        Args:
            source: A :class:`FeedbackStore`, its path, or :class:`ShownList` objects (default:
                the ``store`` setting).
            epochs: Override the ``epochs`` setting.

        Returns:
            ``{"lists": n, "groups": g, "loss": [per-epoch loss]}``. With no usable feedback the
            ranker stays untrained (pre-ranking order kept).
        """
        self._last_seen = 0
        lists = self._lists_from(source)
        self._theta = None
        if self.credit == "ips" and self.position_weights is None:
            self._theta = self._estimate_theta(self._advantages(lists, None), self._feature_keys(lists))
        groups, targets = self._training_groups(lists)
        self._n_lists = 0
        if not groups:
            return {"lists": len(lists), "groups": 0, "loss": []}
        self._init_model(lists)
        self._baseline = float(np.mean([sl.reward for sl in lists if sl.rewards]))
        self._n_lists = len(lists)
        hist = self._train(groups, targets, epochs or self.epochs)
        self._last_event_id = max([self._last_seen] + [sl.last_event_id for sl in lists])
        return {"lists": len(lists), "groups": len(groups), "loss": hist, "val_loss": list(self._val_history),
                "gate": self._gate, "position_effects": self.position_effects}

    def partial_fit(self, source: FeedbackStore | str | Sequence[ShownList] | None = None, *, epochs: int | None = None) -> dict[str, Any]:
        """Online update: train a few epochs on lists that got feedback since the last fit.

        From a store, only lists with events newer than the last one seen are used; the first
        call on an untrained ranker behaves like :meth:`fit`.
        """
        if not self.fitted:
            return self.fit(source, epochs=epochs)
        self._last_seen = 0
        lists = self._lists_from(source, since=self._last_event_id)
        groups, targets = self._training_groups(lists, baseline=self._baseline)
        if not groups:
            return {"lists": len(lists), "groups": 0, "loss": []}
        n_old = self._n_lists
        self._n_lists += len(lists)
        new_mean = float(np.mean([sl.reward for sl in lists if sl.rewards]))
        self._baseline = (self._baseline * n_old + new_mean * len(lists)) / max(self._n_lists, 1)
        hist = self._train(groups, targets, epochs or max(1, self.epochs // 4))
        self._last_event_id = max([self._last_event_id, self._last_seen] + [sl.last_event_id for sl in lists])
        return {"lists": len(lists), "groups": len(groups), "loss": hist}

    # -- scoring ---------------------------------------------------------------------------------
    def score_lists(self, queries: Sequence[str], lists: Sequence[Sequence[Passage]]) -> list[np.ndarray]:
        """Scores of each item of each list (one forward pass for all of them)."""
        if not self.fitted:
            return [1.0 / (1.0 + np.arange(len(items))) for items in lists]
        torch = require("torch")
        groups = [(q, list(items)) for q, items in zip(queries, lists, strict=True)]
        t = self._padded(groups, self._keys or [])
        with torch.inference_mode():
            s = self._forward(t).numpy()
        return [s[g, : len(items)].astype(np.float64) for g, (_, items) in enumerate(groups)]

    def run(self, states: list[ContextState]) -> list[ContextState]:
        self._ensure_warm()
        if not any(s.passages for s in states):
            return states
        _, _, offsets = flatten(states)
        scores = self.score_lists([s.query for s in states], [s.passages for s in states])
        flat = np.concatenate(scores) if scores else np.zeros(0)
        apply_scores(self, states, flat, offsets, self.k, reorder=self.fitted)
        if not self.fitted:
            for s in states:
                s.trace.count("ranker_cold_start")
        return states

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the settings (``ranker.json``) and weights (``ranker.safetensors``) to a folder."""
        if not self.fitted:
            raise InputError("feedback_ranker: nothing to save, the ranker is not trained (call fit first)")
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        cfg = {"settings": self.to_config(), "keys": self._keys, "emb_dim": self._emb_dim,
               "last_event_id": self._last_event_id, "baseline": self._baseline, "n_lists": self._n_lists,
               "position_effects": self._theta}
        (out / "ranker.json").write_text(json.dumps(cfg, indent=2))
        save_file({k: v.contiguous() for k, v in self._net.state_dict().items()}, str(out / "ranker.safetensors"))
        return out

    def _load_into(self, path: Path) -> None:
        torch = require("torch")
        from safetensors.torch import load_file

        cfg = json.loads((path / "ranker.json").read_text())
        self._keys, self._emb_dim = cfg["keys"], int(cfg["emb_dim"])
        self._last_event_id, self._baseline, self._n_lists = cfg["last_event_id"], cfg["baseline"], cfg["n_lists"]
        self._theta = cfg.get("position_effects")  # absent in rankers saved before credit="ips"
        saved = cfg.get("settings", {})
        # the saved architecture wins over this instance's settings, and the instance takes it on, so
        # that a later save() describes the weights it writes (passage_proj absent: saved before the
        # setting existed, no such layer)
        self.emb_proj = int(saved.get("emb_proj", self.emb_proj))
        self.hidden = int(saved.get("hidden", self.hidden))
        self.passage_proj = int(saved.get("passage_proj", 0))
        net = _build_net(self._n_base(self._keys), self._emb_dim, self.emb_proj, self.hidden, self.passage_proj)
        net.load_state_dict(load_file(str(path / "ranker.safetensors")))
        net.eval()
        self._net = net
        self._opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> FeedbackRanker:
        """A ranker saved with :meth:`save` (settings can be overridden, e.g. ``k``)."""
        p = Path(path)
        if not (p / "ranker.json").exists():
            raise InputError(f"no saved ranker in {str(p)!r} (expected ranker.json and ranker.safetensors)")
        settings = json.loads((p / "ranker.json").read_text())["settings"]
        settings.pop("type", None)
        settings.update(overrides)
        settings["model_path"] = str(p)
        r = cls(**settings)
        r._load_into(p)
        r._warm = True
        return r

    def weights(self) -> dict[str, np.ndarray]:
        """The trained weights as numpy arrays (for inspection and tests)."""
        if not self.fitted:
            return {}
        return {k: v.detach().numpy().copy() for k, v in self._net.state_dict().items()}
