"""Inappropriate-item detectors: which items of a context list should the model not use?

Two detectors share one interface, ``score(queries, item_lists) -> list[np.ndarray]`` (a
probability of "inappropriate" per item):

* :class:`SetDetector` — a small trained head on MiniLM embeddings that sees the *set*: each
  distinct item is described by its paraphrase structure among the other items of its list
  (inappropriate items paraphrase one claim, so each has one partner far closer than the rest
  and repeats its words; evidence items state different facts) and its length relative to the
  list, all normalised within the list so they transfer across categories (see
  :func:`set_features`). Exact duplicates are merged first, so how often an item is repeated is
  not a signal. The head (a standardiser and a logistic regression or MLP) is trained with
  scikit-learn and saved as a small JSON file; :func:`default_detector` loads the one shipped
  with ctxkit (trained on the public RW-Steering pools by ``benchmarks/steering_set.py
  --export-head``).
* :class:`LLMDetector` — asks a generator to name the inappropriate items
  (``"inappropriate: 2, 5; use: 1, 3, 4"``), one batched generator call for all lists; with a
  model fine-tuned by :mod:`ctxkit.faithfulness.steering.train` this is its stage-1 identification.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..._lazy import require
from ...errors import InputError, ModelNotAvailableError
from .prompts import IDENTIFY_TEMPLATE, format_items, parse_identification

__all__ = [
    "DEFAULT_HEAD",
    "FEATURE_NAMES",
    "ItemDetector",
    "LLMDetector",
    "SetDetector",
    "default_detector",
    "set_features",
]

DEFAULT_HEAD = "steering_head.json"

FEATURE_NAMES: tuple[str, ...] = (
    "nn_gap", "max_sim_others_z", "max_minus_mean", "in_top_pair", "mutual_nn",
    "lex_overlap_nn", "novel_words", "rel_length",
)
"""Set features of an item among the distinct items of its list (see :func:`set_features`)."""

_STOP = frozenset(
    "a an the of to in on for and or is are was were be been by with as at from that this it its his her "  # noqa: SIM905
    "their he she they them which who what when where why how does do did not no can could will would should "
    "may might has have had there than then into about over also such but if so".split()
)
_TOKEN = re.compile(r"[a-z0-9]+")


@runtime_checkable
class ItemDetector(Protocol):
    """Scores context items as inappropriate (probability per item)."""

    def score(self, queries: Sequence[str], item_lists: Sequence[Sequence[str]]) -> list[np.ndarray]: ...


def _content(text: str) -> set[str]:
    return {w for w in _TOKEN.findall(text.lower()) if len(w) > 1 and w not in _STOP}


def set_features(
    query_emb: np.ndarray | None, item_embs: np.ndarray, texts: Sequence[str], query: str = ""
) -> np.ndarray:
    """Set-level features of each distinct item given the other items of its list.

    Inappropriate items of a list are typically paraphrases of one claim while the evidence items
    state different facts, so the features describe each item's *paraphrase structure*, all
    relative to its own list so that they transfer across topics and categories:

    * ``nn_gap``: similarity to the nearest other item minus similarity to the second nearest
      (a paraphrase has one partner far closer than the rest);
    * ``max_sim_others_z``: nearest-neighbour similarity, z-scored within the list;
    * ``max_minus_mean``: nearest-neighbour similarity minus mean similarity to the others;
    * ``in_top_pair``: 1 for the two items of the list's most similar pair;
    * ``mutual_nn``: 1 when the item and its nearest neighbour are each other's nearest;
    * ``lex_overlap_nn``: largest content-word Jaccard overlap with another item;
    * ``novel_words``: share of the item's content words found in no other item (evidence brings
      new facts; a paraphrase repeats words of its partner);
    * ``rel_length``: log word count minus the list's median (claims are short assertions).

    Similarity to the query is deliberately left out: its sign flips between categories (a false
    claim restates the question; a hateful remark is far from a neutral question).

    Args:
        query_emb: ``(d,)`` unit vector of the query (unused by the current features; kept so a
            head may add query features without an API change).
        item_embs: ``(m, d)`` unit vectors of the *distinct* items of one list.
        texts: The ``m`` distinct item texts.
        query: The query text (its words do not count as novel).

    Returns:
        ``(m, len(FEATURE_NAMES))`` float32 array.
    """
    del query_emb
    u = np.asarray(item_embs, dtype=np.float64)
    m = len(u)
    if len(texts) != m:
        raise InputError(f"{len(texts)} texts for {m} item embeddings")
    f = np.zeros((m, len(FEATURE_NAMES)))
    words = [_content(t) for t in texts]
    qwords = _content(query)
    lengths = np.array([max(len(t.split()), 1) for t in texts], dtype=np.float64)
    f[:, 7] = np.log(lengths) - np.log(np.median(lengths))
    if m == 1:
        f[:, 6] = len(words[0] - qwords) / (len(words[0]) or 1)
        return f.astype(np.float32)
    s = u @ u.T - 3.0 * np.eye(m)
    srt = -np.sort(-s, axis=1)
    nn1 = srt[:, 0]
    nn2 = srt[:, 1] if m > 2 else srt[:, 0]
    nn = s.argmax(1)
    f[:, 0] = nn1 - nn2
    f[:, 1] = (nn1 - nn1.mean()) / (nn1.std() + 1e-6)
    f[:, 2] = nn1 - (s.sum(1) + 3.0 - 1.0) / (m - 1)
    i, j = np.unravel_index(int(s.argmax()), s.shape)
    f[[i, j], 3] = 1.0
    f[:, 4] = (nn[nn] == np.arange(m)).astype(float)
    for a in range(m):
        others = [words[b] for b in range(m) if b != a]
        f[a, 5] = max((len(words[a] & w) / (len(words[a] | w) or 1)) for w in others)
        f[a, 6] = len(words[a] - qwords - set().union(*others)) / (len(words[a]) or 1)
    return f.astype(np.float32)


def _unique(items: Sequence[str]) -> tuple[list[str], np.ndarray]:
    order: dict[str, int] = {}
    inv = np.array([order.setdefault(t.strip(), len(order)) for t in items], dtype=int)
    return list(order), inv


class SetDetector:
    """Trainable set-aware detector on sentence embeddings.

    Args:
        embedder: An :class:`~ctxkit.models.Embedder` or a model name for
            :func:`~ctxkit.models.get_embedder` (default MiniLM).
        head: A head dict (from :meth:`head_dict`) or a JSON path; ``None`` until :meth:`fit`.
        item_embedding: Also feed each item's own embedding to the head (learns what bad content
            looks like, but transfers worse to unseen categories).
        threshold: Probability at or above which an item is flagged (overrides the head's).
    """

    def __init__(
        self,
        embedder: Any = "default",
        head: dict[str, Any] | str | Path | None = None,
        *,
        item_embedding: bool = False,
        threshold: float | None = None,
    ) -> None:
        self._embedder_setting = embedder
        self._embedder: Any = None if isinstance(embedder, str) else embedder
        self.item_embedding = item_embedding
        self.head: dict[str, Any] | None = None
        self._threshold = threshold
        if head is not None:
            self.head = _read_head(head) if not isinstance(head, dict) else _check_head(head)
            self.item_embedding = bool(self.head.get("item_embedding", item_embedding))

    # -- embeddings and features -----------------------------------------------------------------
    @property
    def embedder(self) -> Any:
        """The embedder (loaded on first use)."""
        if self._embedder is None:
            from ...models import get_embedder

            self._embedder = get_embedder(str(self._embedder_setting))
        return self._embedder

    @property
    def threshold(self) -> float:
        """Decision threshold on the probability."""
        if self._threshold is not None:
            return self._threshold
        return float((self.head or {}).get("threshold", 0.5))

    def embed(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Embed distinct texts in one batched call; returns ``{text: vector}``."""
        uniq = list(dict.fromkeys(t.strip() for t in texts))
        vecs = self.embedder.encode(uniq) if uniq else np.zeros((0, 1))
        return dict(zip(uniq, vecs, strict=True))

    def features(
        self,
        queries: Sequence[str],
        item_lists: Sequence[Sequence[str]],
        cache: dict[str, np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Feature matrix per list (one row per item, duplicates share their row's values)."""
        if len(queries) != len(item_lists):
            raise InputError(f"{len(queries)} queries for {len(item_lists)} item lists")
        cache = dict(cache or {})
        need = [t for t in list(queries) + [x for lst in item_lists for x in lst] if t.strip() not in cache]
        if need:
            cache.update(self.embed(need))
        out = []
        for q, items in zip(queries, item_lists, strict=True):
            if not items:
                out.append(np.zeros((0, self.n_features), dtype=np.float32))
                continue
            uniq, inv = _unique(items)
            u = np.stack([cache[t] for t in uniq])
            f = set_features(cache[q.strip()], u, uniq, q)
            if self.item_embedding:
                f = np.hstack([f, u.astype(np.float32)])
            out.append(f[inv])
        return out

    @property
    def n_features(self) -> int:
        """Number of features per item."""
        dim = 0
        if self.item_embedding:
            dim = int(self.head["dim"]) if self.head and "dim" in self.head else int(self.embedder.dim)
        return len(FEATURE_NAMES) + dim

    # -- training --------------------------------------------------------------------------------
    def fit(
        self,
        queries: Sequence[str],
        item_lists: Sequence[Sequence[str]],
        labels: Sequence[Sequence[int]],
        *,
        model: str = "logreg",
        seed: int = 0,
        cache: dict[str, np.ndarray] | None = None,
    ) -> SetDetector:
        """Train the head on labelled lists (1 = inappropriate).

        Args:
            queries: One query per list.
            item_lists: The context lists.
            labels: 0/1 per item.
            model: ``"logreg"`` (default) or ``"mlp"`` (one hidden layer of 32).
            seed: Training seed.
            cache: Precomputed ``{text: embedding}`` (speeds up repeated training).
        """
        feats = self.features(queries, item_lists, cache)
        x = np.vstack(feats)
        y = np.concatenate([np.asarray(lab, dtype=int) for lab in labels])
        return self.fit_matrix(x, y, model=model, seed=seed)

    def fit_matrix(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        model: str = "logreg",
        seed: int = 0,
        use: Sequence[str] | None = None,
    ) -> SetDetector:
        """Train the head on a precomputed feature matrix (rows from :meth:`features`).

        Args:
            x: ``(n, n_features)`` features, one row per item.
            y: ``(n,)`` 0/1 labels.
            model: ``"logreg"`` or ``"mlp"``.
            seed: Training seed.
            use: Names of the set features the head reads (default all of
                :data:`FEATURE_NAMES`; for ablations). Item-embedding columns are always used when
                :attr:`item_embedding` is on.
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=int)
        if len(y) != len(x):
            raise InputError("labels must give one 0/1 value per item")
        names = list(FEATURE_NAMES) if use is None else list(use)
        unknown = [n for n in names if n not in FEATURE_NAMES]
        if unknown or not names:
            raise InputError(f"unknown feature names {unknown}; choose from {list(FEATURE_NAMES)}")
        dim = int(x.shape[1] - len(FEATURE_NAMES))
        cols = [FEATURE_NAMES.index(n) for n in names] + list(range(len(FEATURE_NAMES), x.shape[1]))
        x = x[:, cols]
        if len(set(y.tolist())) < 2:
            raise InputError("training needs both appropriate (0) and inappropriate (1) items")
        mean, std = x.mean(0), x.std(0) + 1e-6
        z = (x - mean) / std
        sk = require("sklearn")
        del sk
        if model == "logreg":
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(z, y)
            layers = [{"w": clf.coef_.T.tolist(), "b": clf.intercept_.tolist()}]
        elif model == "mlp":
            from sklearn.neural_network import MLPClassifier

            clf = MLPClassifier(
                hidden_layer_sizes=(32,), alpha=1e-3, max_iter=300, early_stopping=True,
                random_state=seed, n_iter_no_change=15,
            ).fit(z, y)
            layers = [{"w": w.tolist(), "b": b.tolist()} for w, b in zip(clf.coefs_, clf.intercepts_, strict=True)]
        else:
            raise InputError(f"unknown head model {model!r}; use 'mlp' or 'logreg'")
        self.head = {
            "format": "ctxkit.set_detector/1",
            "features": names,
            "item_embedding": self.item_embedding,
            "dim": dim,
            "model": model,
            "mean": mean.tolist(),
            "std": std.tolist(),
            "layers": layers,
            "threshold": 0.5,
        }
        p = self._forward_selected(x)
        best = max(np.arange(0.2, 0.81, 0.05), key=lambda t: _f1(y, p >= t))
        self.head["threshold"] = round(float(best), 2)
        return self

    def _forward(self, x: np.ndarray) -> np.ndarray:
        if self.head is None:
            raise ModelNotAvailableError("this SetDetector has no head: call fit() or load one")
        cols = [FEATURE_NAMES.index(n) for n in self.head["features"]]
        return self._forward_selected(x[:, cols + list(range(len(FEATURE_NAMES), x.shape[1]))])

    def _forward_selected(self, x: np.ndarray) -> np.ndarray:
        assert self.head is not None
        h = (x - np.asarray(self.head["mean"])) / np.asarray(self.head["std"])
        layers = self.head["layers"]
        for i, layer in enumerate(layers):
            h = h @ np.asarray(layer["w"]) + np.asarray(layer["b"])
            if i < len(layers) - 1:
                h = np.maximum(h, 0.0)
        return 1.0 / (1.0 + np.exp(-h[:, 0]))

    # -- inference -------------------------------------------------------------------------------
    def score(
        self,
        queries: Sequence[str],
        item_lists: Sequence[Sequence[str]],
        cache: dict[str, np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Probability that each item is inappropriate, per list (one embedding call for all)."""
        feats = self.features(queries, item_lists, cache)
        return [self._forward(f) if len(f) else np.zeros(0) for f in feats]

    def predict(self, queries: Sequence[str], item_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """0/1 flags per item (probability >= :attr:`threshold`)."""
        return [(p >= self.threshold).astype(int) for p in self.score(queries, item_lists)]

    # -- persistence -----------------------------------------------------------------------------
    def head_dict(self) -> dict[str, Any]:
        """The trained head as a JSON-serialisable dict."""
        if self.head is None:
            raise ModelNotAvailableError("this SetDetector has no head: call fit() first")
        return self.head

    def save(self, path: str | Path) -> Path:
        """Write the head as JSON (the embedder is referenced by name, not saved)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        head = dict(self.head_dict())
        head["embedder"] = str(self._embedder_setting) if isinstance(self._embedder_setting, str) else "default"
        out.write_text(json.dumps(head, separators=(",", ":")), encoding="utf-8")
        return out

    @classmethod
    def load(cls, path: str | Path, embedder: Any = None, threshold: float | None = None) -> SetDetector:
        """Load a head written by :meth:`save`."""
        head = _read_head(path)
        return cls(embedder or head.get("embedder", "default"), head, threshold=threshold)


def _read_head(path: str | Path | dict[str, Any]) -> dict[str, Any]:
    if isinstance(path, dict):
        return path
    p = Path(path)
    try:
        head = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotAvailableError(f"cannot read detector head {str(p)!r}: {exc}") from exc
    if head.get("format") != "ctxkit.set_detector/1":
        raise ModelNotAvailableError(f"{str(p)!r} is not a ctxkit set-detector head")
    return _check_head(head, str(p))


def _check_head(head: dict[str, Any], where: str = "head") -> dict[str, Any]:
    unknown = [n for n in head.get("features", []) if n not in FEATURE_NAMES]
    if unknown or not head.get("features"):
        raise ModelNotAvailableError(
            f"detector {where} was trained on features {unknown or '[]'} that this ctxkit version does not "
            "compute; retrain it with `python benchmarks/steering_set.py --export-head <path>`"
        )
    return head


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = float(np.sum((y == 1) & pred))
    fp = float(np.sum((y == 0) & pred))
    fn = float(np.sum((y == 1) & ~pred))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def default_detector(threshold: float | None = None) -> SetDetector:
    """The :class:`SetDetector` head shipped with ctxkit (MiniLM + set features).

    Raises:
        ModelNotAvailableError: the packaged head file is missing.
    """
    try:
        ref = resources.files("ctxkit.faithfulness.steering") / "data" / DEFAULT_HEAD
        text = ref.read_text(encoding="utf-8")
    except (FileNotFoundError, OSError) as exc:
        raise ModelNotAvailableError(
            "the packaged steering detector head is missing; train one with "
            "`python benchmarks/steering_set.py --export-head ctxkit/faithfulness/steering/data/steering_head.json`"
        ) from exc
    head = json.loads(text)
    return SetDetector(head.get("embedder", "default"), head, threshold=threshold)


# -- LLM identification ----------------------------------------------------------------------------

class LLMDetector:
    """Detector that asks a generator which items are inappropriate (one batched call).

    Args:
        generator: Any :class:`~ctxkit.llm.base.Generator` or a spec for
            :func:`ctxkit.llm.build_generator` (e.g. the directory of a model fine-tuned with
            :func:`ctxkit.faithfulness.steering.train.train_rw_steering`).
        template: Prompt with ``{question}`` and ``{context}``.
        max_new_tokens: Generation budget for the identification.
    """

    def __init__(self, generator: Any, template: str = IDENTIFY_TEMPLATE, max_new_tokens: int = 48) -> None:
        from ...llm.spec import build_generator

        self.generator = build_generator(generator)
        self.template = template
        self.max_new_tokens = max_new_tokens
        self.last_outputs: list[str] = []

    def score(self, queries: Sequence[str], item_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """1.0 for items the model names as inappropriate, else 0.0 (failed calls: all 0)."""
        from ...llm.base import Message

        if len(queries) != len(item_lists):
            raise InputError(f"{len(queries)} queries for {len(item_lists)} item lists")
        convs = [
            [Message(role="user", content=self.template.format(question=q, context=format_items(items)))]
            for q, items in zip(queries, item_lists, strict=True)
        ]
        gens = self.generator.generate(convs, max_new_tokens=self.max_new_tokens, stop=["answer:"])
        self.last_outputs = [g.text for g in gens]
        out = []
        for g, items in zip(gens, item_lists, strict=True):
            p = np.zeros(len(items))
            bad, _, _ = parse_identification(g.text, len(items))
            for i in bad:
                p[i - 1] = 1.0
            out.append(p)
        return out

    @property
    def threshold(self) -> float:
        """Items scored 1.0 are flagged."""
        return 0.5
