"""The ranking stage: a small listwise model trained from list-level feedback.

Pistis-RAG's point is that the items the LLM (and the user) find useful are not simply the most
semantically similar ones. :class:`FeedbackRanker` learns a scoring function over per-item
features from the feedback store: every recorded list carries one reward (copy/like,
dislike/regenerate, or a number, possibly an LLM-preference score); the reward is spread over the
list's items (more credit to items shown higher), compared with the other lists shown for the same
query, and a listwise loss (ListNet softmax cross-entropy or Plackett-Luce) fits the scorer to
those per-query preferences.

Features of an item, all computed within its list so that lists of any length compare:

* every earlier stage's score: z-score, min-max and reciprocal rank within the list, plus a
  "missing" flag;
* passage length (log characters);
* numeric metadata fields you name (``metadata_features``: e.g. source quality, freshness);
* with ``use_embeddings``: cosine of query and passage embeddings and their elementwise product
  projected down to ``emb_proj`` learned dimensions.

The scorer's last layer starts at zero, so an untrained (or barely trained) ranker gives all
items the same score and the stable sort keeps the pre-ranking order (cold start).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, PrivateAttr

from .._lazy import require
from ..errors import ConfigError, InputError
from ..pipeline import BaseStage
from ..types import ContextState, Passage
from ._common import apply_scores, flatten, passage_text
from .feedback import FeedbackStore, ShownList

__all__ = ["FeedbackRanker", "listnet_loss", "plackett_luce_loss"]

Loss = Literal["listnet", "plackett_luce"]
_PER_KEY = 4  # z-score, min-max, reciprocal rank, missing


def listnet_loss(scores: Any, targets: Any, mask: Any, temperature: float = 1.0) -> Any:
    """ListNet: cross-entropy between softmax(targets) and softmax(scores), per padded row."""
    torch = require("torch")
    neg = torch.finfo(scores.dtype).min / 4
    p = torch.softmax(torch.where(mask, targets / temperature, neg), dim=-1)
    logq = torch.log_softmax(torch.where(mask, scores, neg), dim=-1)
    return -(p * logq * mask).sum(-1).mean()


def plackett_luce_loss(scores: Any, targets: Any, mask: Any) -> Any:
    """Plackett-Luce negative log-likelihood of the order given by ``targets`` (best first)."""
    torch = require("torch")
    neg = torch.finfo(scores.dtype).min / 4
    order = torch.argsort(torch.where(mask, targets, neg), dim=-1, descending=True, stable=True)
    s = torch.gather(torch.where(mask, scores, neg), -1, order)
    m = torch.gather(mask, -1, order)
    # log sum_{j>=i} exp(s_j): reverse cumulative logsumexp
    tail = torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)
    return -(((s - tail) * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()


def _build_net(n_base: int, emb_dim: int, emb_proj: int, hidden: int) -> Any:
    torch = require("torch")
    nn = torch.nn

    class _Scorer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(emb_dim, emb_proj) if emb_dim else None
            n_in = n_base + (emb_proj + 1 if emb_dim else 0)
            self.mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

        def forward(self, base: Any, q: Any | None = None, p: Any | None = None) -> Any:
            x = base
            if self.proj is not None:
                cos = (q * p).sum(-1, keepdim=True)
                x = torch.cat([x, cos, self.proj(q * p)], dim=-1)
            return self.mlp(x).squeeze(-1)

    return _Scorer()


class FeedbackRanker(BaseStage):
    """Listwise ranking stage trained from the feedback store (``fit``, ``partial_fit``).

    Attributes:
        k: Passages kept per query after ranking (``None``: all, re-ordered).
        store: The feedback store ``fit()`` reads by default: a SQLite file or a
            ``postgresql://`` URL (shared by several service replicas).
        model_path: Directory of a saved ranker, loaded on first use when it exists.
        loss: ``"listnet"`` (softmax cross-entropy) or ``"plackett_luce"``.
        credit: How a list's reward is spread over its items: ``"dcg"`` (1/log2(pos+2), the
            top items earn more) or ``"uniform"``.
        score_keys: Earlier stages' score names used as features (``None``: every score seen in
            the training lists except this stage's own and the arranger's, fixed at fit time).
        metadata_features: Numeric ``Passage.metadata`` fields used as features.
        use_embeddings: Add query/passage embedding interactions (needs an embedder).
        embedder: Embedding model for those interactions (``"default"``: all-MiniLM-L6-v2).
        hidden: Hidden units of the scorer.
        emb_proj: Learned dimensions of the projected query*passage product.
        epochs: Training epochs for ``fit`` (``partial_fit`` uses ``epochs // 4``).
        lr: Adam learning rate.
        weight_decay: L2 regularisation.
        temperature: Softmax temperature of the ListNet targets.
        validation: Fraction of query groups held out for early stopping (0: train all epochs).
            The best weights on them are kept; with feedback that carries no signal this is the
            untrained start, so the pre-ranking order is kept instead of fitting noise.
        patience: Epochs without validation improvement before stopping.
        min_delta: Validation improvement that counts, relative to the untrained model's
            validation loss (for ListNet the KL divergence to the targets).
        seed: Seed of initialisation and training (same seed, same data: identical weights).
    """


    k: int | None = Field(10, gt=0)
    store: str | None = None
    model_path: str | None = None
    loss: Loss = "listnet"
    credit: Literal["dcg", "uniform"] = "dcg"
    score_keys: list[str] | None = None
    metadata_features: list[str] = Field(default_factory=list)
    use_embeddings: bool = True
    embedder: str = "default"
    hidden: int = Field(32, gt=0)
    emb_proj: int = Field(8, gt=0)
    epochs: int = Field(150, gt=0)
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    temperature: float = Field(1.0, gt=0)
    validation: float = Field(0.2, ge=0, lt=1)
    patience: int = Field(10, gt=0)
    min_delta: float = Field(0.02, ge=0)
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
            vals = []
            for p in items:
                x = p.metadata.get(f, 0.0)
                try:
                    vals.append(float(x))
                except (TypeError, ValueError):
                    raise InputError(
                        f"feedback_ranker: metadata feature {f!r} of passage {p.id!r} is not numeric ({x!r})"
                    ) from None
            cols.append(np.asarray(vals))
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

    # -- training data from feedback -------------------------------------------------------------
    def _training_groups(self, lists: list[ShownList], baseline: float | None = None) -> tuple[list[tuple[str, list[Passage]]], list[np.ndarray]]:
        """Per-query groups of shown items with their credited targets."""
        by_query: dict[str, list[ShownList]] = {}
        for sl in lists:
            if sl.items and sl.rewards:
                by_query.setdefault(sl.query, []).append(sl)
        glob = baseline if baseline is not None else (
            float(np.mean([sl.reward for v in by_query.values() for sl in v])) if by_query else 0.0
        )
        groups, targets = [], []
        for query, sls in by_query.items():
            base = float(np.mean([s.reward for s in sls])) if len(sls) > 1 else glob
            credit: dict[str, list[float]] = {}
            first: dict[str, Passage] = {}
            for sl in sls:
                adv = sl.reward - base
                for pos, p in enumerate(sl.passages()):
                    w = 1.0 / math.log2(pos + 2) if self.credit == "dcg" else 1.0
                    credit.setdefault(p.id, []).append(adv * w)
                    first.setdefault(p.id, p)
            ids = list(first)
            t = np.array([np.mean(credit[i]) for i in ids])
            if len(ids) < 2 or t.std() < 1e-9:
                continue
            groups.append((query, [first[i] for i in ids]))
            targets.append((t - t.mean()) / t.std())
        return groups, targets

    def _train(self, groups: list[tuple[str, list[Passage]]], targets: list[np.ndarray], epochs: int) -> list[float]:
        """Mini-batch training; with ``validation`` > 0, early stopping on held-out query groups
        (the best weights are kept, which can be the untrained start: no signal, no change)."""
        torch = require("torch")
        t = self._padded(groups, self._keys or [])
        tgt = np.zeros(t["mask"].shape, np.float32)
        for g, v in enumerate(targets):
            tgt[g, : len(v)] = v
        tgt_t = torch.from_numpy(tgt)
        gen = torch.Generator().manual_seed(self.seed + self._n_lists)
        n = len(groups)
        order = torch.randperm(n, generator=gen)
        n_val = round(self.validation * n) if n >= 5 else 0
        val_idx, train_idx = order[:n_val], order[n_val:]

        def loss_of(idx: Any) -> Any:
            batch = {k: v[idx] for k, v in t.items()}
            s = self._forward(batch)
            if self.loss == "listnet":
                return listnet_loss(s, tgt_t[idx], batch["mask"], self.temperature)
            return plackett_luce_loss(s, tgt_t[idx], batch["mask"])

        entropy = 0.0
        if n_val and self.loss == "listnet":  # report ListNet as KL(targets || model): 0 is perfect
            m = t["mask"][val_idx]
            p = torch.softmax(torch.where(m, tgt_t[val_idx] / self.temperature, -1e30), dim=-1)
            entropy = float(-(p * torch.log(p.clamp_min(1e-30)) * m).sum(-1).mean())

        def val_loss() -> float:
            self._net.eval()
            with torch.no_grad():
                v = float(loss_of(val_idx)) - entropy
            self._net.train()
            return v

        best = val_loss() if n_val else float("inf")
        self._val_history = [best] if n_val else []
        best_state = {k: v.clone() for k, v in self._net.state_dict().items()}
        bad = 0
        bs = max(1, min(len(train_idx), 256))
        history = []
        self._net.train()
        from tqdm.auto import trange

        for _ in trange(epochs, desc="feedback_ranker", disable=epochs * n < 20000, leave=False):
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
            if n_val:
                v = val_loss()
                self._val_history.append(v)
                if v < best - self.min_delta * abs(self._val_history[0]):
                    best, bad = v, 0
                    best_state = {k: x.clone() for k, x in self._net.state_dict().items()}
                else:
                    bad += 1
                    if bad >= self.patience:
                        break
        if n_val:
            self._net.load_state_dict(best_state)
        self._net.eval()
        return history

    def _init_model(self, lists: list[ShownList]) -> None:
        torch = require("torch")
        if self.score_keys is not None:
            keys = list(self.score_keys)
        else:
            # scores written at or after this stage (its own, the arranger's) describe the shown
            # order, not the item, and are absent when ranking new candidates: never features
            keys = [k for k in dict.fromkeys(k for sl in lists for it in sl.items for k in (it.get("scores") or {}))
                    if k != self.name and not k.startswith(("feedback_ranker", "arrange"))]
        self._keys = keys
        self._emb_dim = self._embedder().dim if self.use_embeddings else 0
        torch.manual_seed(self.seed)
        self._net = _build_net(self._n_base(keys), self._emb_dim, self.emb_proj, self.hidden)
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
        groups, targets = self._training_groups(lists)
        self._n_lists = 0
        if not groups:
            return {"lists": len(lists), "groups": 0, "loss": []}
        self._init_model(lists)
        self._baseline = float(np.mean([sl.reward for sl in lists if sl.rewards]))
        self._n_lists = len(lists)
        hist = self._train(groups, targets, epochs or self.epochs)
        self._last_event_id = max([self._last_seen] + [sl.last_event_id for sl in lists])
        return {"lists": len(lists), "groups": len(groups), "loss": hist, "val_loss": list(self._val_history)}

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
               "last_event_id": self._last_event_id, "baseline": self._baseline, "n_lists": self._n_lists}
        (out / "ranker.json").write_text(json.dumps(cfg, indent=2))
        save_file({k: v.contiguous() for k, v in self._net.state_dict().items()}, str(out / "ranker.safetensors"))
        return out

    def _load_into(self, path: Path) -> None:
        torch = require("torch")
        from safetensors.torch import load_file

        cfg = json.loads((path / "ranker.json").read_text())
        self._keys, self._emb_dim = cfg["keys"], int(cfg["emb_dim"])
        self._last_event_id, self._baseline, self._n_lists = cfg["last_event_id"], cfg["baseline"], cfg["n_lists"]
        net = _build_net(self._n_base(self._keys), self._emb_dim, self.emb_proj, self.hidden)
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
