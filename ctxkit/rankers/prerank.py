"""Pre-ranking stages: semantic relevance of every candidate by a bi-encoder or a cross-encoder.

Both stages score all (query, passage) pairs of the whole batch in one model pass (no Python
loop over queries or passages around model calls), write their score into each passage's score
map, sort, and keep their own budget ``k``.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Literal

import numpy as np
from pydantic import Field

from .._lazy import require
from ..errors import ConfigError, ModelNotAvailableError
from ..models import cpu_has_native_bf16, get_embedder, resolve_device, resolve_model
from ..pipeline import BaseStage
from ..types import ContextState
from ._common import apply_scores, flatten, passage_text

__all__ = ["BiEncoderPreRanker", "CrossEncoderPreRanker"]

Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]


def _quantize_int8(cross_encoder: Any, torch: Any) -> None:
    """Swap the Linear layers of a CrossEncoder's transformer encoder for dynamic int8 ones.

    Only the encoder blocks are quantised (where the compute is); the pooler and the scoring head
    stay fp32, which keeps close scores in a much more faithful order.
    """
    holder = cross_encoder[0] if hasattr(cross_encoder, "__getitem__") else cross_encoder
    hf = getattr(holder, "model", None) or holder.auto_model
    base = getattr(hf, "base_model", hf)
    aq = torch.ao.quantization
    spec = {torch.nn.Linear: aq.per_channel_dynamic_qconfig}
    with warnings.catch_warnings():  # the eager-mode API is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        if getattr(base, "encoder", None) is not None:
            base.encoder = aq.quantize_dynamic(base.encoder, spec)
        else:
            aq.quantize_dynamic(hf, spec, inplace=True)


def _rocchio(
    q_emb: np.ndarray,
    p_emb: np.ndarray,
    text_idx: np.ndarray,
    owner: np.ndarray,
    offsets: np.ndarray,
    depth: int,
    beta: float,
) -> np.ndarray:
    """Rocchio-expanded query vectors: ``normalise(q + beta * mean(top-depth passage vectors))``.

    Args:
        q_emb: ``(n_queries, dim)`` query embeddings.
        p_emb: ``(n_texts, dim)`` embeddings of the distinct passage texts.
        text_idx: Flat (batch order) index of each passage's text into ``p_emb``.
        owner: Flat state index of each passage.
        offsets: Per-state offsets into the flat passage list.
        depth: Feedback passages per query: the first ``depth`` of its incoming order.
        beta: Weight of the feedback centroid.

    Returns:
        ``(n_queries, dim)`` float32 vectors, L2-normalised (queries without candidates unchanged
        apart from the normalisation).
    """
    pos = np.arange(len(owner), dtype=np.int64) - offsets[owner]
    top = pos < depth
    sums = np.zeros((len(q_emb), p_emb.shape[1]), dtype=np.float64)
    np.add.at(sums, owner[top], p_emb[text_idx[top]])
    counts = np.bincount(owner[top], minlength=len(q_emb)).astype(np.float64)
    centroid = sums / np.maximum(counts, 1.0)[:, None]
    out = q_emb.astype(np.float64) + beta * centroid
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class BiEncoderPreRanker(BaseStage):
    """Re-scores candidates by cosine similarity of query and *full* passage embeddings.

    Useful after lexical or fused matching (whose scores are not comparable semantic scores) and
    as a cheap first cut before a cross-encoder. All queries and all distinct passage texts of the
    batch are embedded in one encoder call; the cosines are one vectorised product.

    Attributes:
        model: Embedding model: ``"default"`` (all-MiniLM-L6-v2, offline), a path or hub id.
        k: Passages kept per query (``None`` keeps all, re-sorted).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        dtype: ``"auto"`` (half precision on CUDA), ``"float32"``, ``"bfloat16"``, ``"float16"``.
        with_title: Prefix the passage's ``metadata["title"]`` to its text, when present.
        keep_previous: Weight of the previous stage's score in this stage's order: the convex
            combination of the per-query min-max normalised scores (0: rank by cosine alone;
            e.g. 0.5 keeps the lexical half of a hybrid matching score, which a cosine re-score
            with the same embedder would otherwise throw away). The raw cosine is kept under
            ``"bi_encoder.raw"``.
        prf_depth: Dense pseudo-relevance feedback (Rocchio on embeddings): the number of top
            passages of each query *in the incoming order* (the previous stage's ranking) whose
            mean embedding is added to the query vector before scoring. ``0`` (default) turns it
            off. Fewer candidates than ``prf_depth`` use all of them.
        prf_weight: Rocchio ``beta``: the query vector becomes
            ``normalise(q + prf_weight * mean(top prf_depth passage embeddings))``, and every
            candidate is scored by its cosine with it (``keep_previous`` then fuses as usual).
    """


    model: str = "default"
    k: int | None = Field(50, gt=0)
    device: str = "auto"
    dtype: str = "auto"
    with_title: bool = True
    keep_previous: float = Field(0.0, ge=0.0, le=1.0)
    prf_depth: int = Field(0, ge=0)
    prf_weight: float = Field(0.5, ge=0.0)

    def warm_up(self) -> None:
        self._embedder = get_embedder(self.model, device=self.device, dtype=self.dtype)
        self._embedder.model  # noqa: B018 - load now, not inside the first timed call

    def run(self, states: list[ContextState]) -> list[ContextState]:
        self._ensure_warm()
        passages, owner, offsets = flatten(states)
        if not passages:
            return states
        texts = [passage_text(p, self.with_title) for p in passages]
        uniq: dict[str, int] = {}
        text_idx = np.array([uniq.setdefault(t, len(uniq)) for t in texts], dtype=np.int64)
        queries = [s.query for s in states]
        emb = self._embedder.encode(queries + list(uniq))
        q_emb, p_emb = emb[: len(queries)], emb[len(queries) :]
        if self.prf_depth > 0 and self.prf_weight > 0:
            q_emb = _rocchio(q_emb, p_emb, text_idx, owner, offsets, self.prf_depth, self.prf_weight)
        scores = np.einsum("nd,nd->n", p_emb[text_idx], q_emb[owner])
        apply_scores(self, states, scores, offsets, self.k, keep_previous=self.keep_previous)
        return states


class CrossEncoderPreRanker(BaseStage):
    """Re-scores candidates with a sentence-transformers ``CrossEncoder`` (any local path or id).

    All (query, passage) pairs of the whole batch go through one ``predict`` call (the library
    sorts them by length and pads per mini-batch).

    Attributes:
        model: Path or hub id of a cross-encoder (e.g. a local ``ms-marco-MiniLM-L-6-v2``).
        k: Passages kept per query (``None`` keeps all, re-sorted).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        precision: ``"auto"`` (default: fp16 on CUDA; bf16 on a CPU that computes bfloat16
            natively, i.e. reports ``avx512_bf16`` or ``amx_bf16``, see
            :func:`ctxkit.models.cpu_has_native_bf16`; fp32 on other CPUs, where bf16 is emulated
            and slower), ``"fp32"``, ``"bf16"`` (bfloat16 autocast; on a CPU without native bf16
            a warning says it is emulated), ``"fp16"`` (CUDA; on CPU it means bf16), or ``"int8"``
            (CPU only: dynamic int8 quantisation of the linear layers, per-channel weights; faster
            than fp32 but it reorders close scores: top-10 overlap with fp32 ~0.75 in our
            benchmark). :attr:`effective_precision` says which one ran.
        batch_size: Pairs per forward pass.
        max_length: Maximum tokens per pair (``None``: the model's own limit).
        with_title: Prefix the passage's ``metadata["title"]`` to its text, when present.
        show_progress: Show a progress bar for long batches.
    """


    model: str
    k: int | None = Field(20, gt=0)
    device: str = "auto"
    precision: Precision = "auto"
    batch_size: int = Field(64, gt=0)
    max_length: int | None = Field(None, gt=0)
    with_title: bool = True
    show_progress: bool = False

    def warm_up(self) -> None:
        st = require("sentence_transformers")
        torch = require("torch")
        device = resolve_device(self.device)
        precision = self.precision
        if precision == "auto":
            if device.startswith("cuda"):
                precision = "fp16"
            else:  # bf16 only where the CPU computes it natively; emulated bf16 is slower than fp32
                precision = "bf16" if device == "cpu" and cpu_has_native_bf16() else "fp32"
        if precision == "fp16" and not device.startswith("cuda"):
            precision = "bf16"  # fp16 matmuls are slow or unsupported on CPU; bf16 is the CPU lever
        if precision == "bf16" and device == "cpu" and not cpu_has_native_bf16():
            warnings.warn(
                "cross_encoder: this CPU has no native bfloat16 (AVX512-BF16/AMX); bf16 is emulated and "
                "much slower than fp32 here. Use precision='fp32'.", stacklevel=2,
            )
        if precision == "int8" and not device == "cpu":
            raise ConfigError("cross_encoder: precision='int8' is for CPU inference; use 'fp16' on "
                              f"{device!r}")
        if self.model.strip().lower() in {"default", "minilm", "smollm2", "all-minilm-l6-v2"}:
            # These aliases name the offline embedder / LLM: loading them as a cross-encoder would
            # silently give an untrained classification head.
            raise ConfigError(
                f"cross_encoder: {self.model!r} is not a cross-encoder; pass the local path or hub id "
                "of a trained cross-encoder (e.g. cross-encoder/ms-marco-MiniLM-L-6-v2)"
            )
        path = resolve_model(self.model).path
        try:
            model = st.CrossEncoder(path, device=device, max_length=self.max_length)
        except OSError as exc:
            raise ModelNotAvailableError(
                f"cross_encoder: cannot load {self.model!r} ({exc}). Pass a local directory holding "
                "a sentence-transformers CrossEncoder (config.json, weights, tokenizer)."
            ) from exc
        if device.startswith("cuda") and precision in ("fp16", "bf16"):
            model.model.to(torch.float16 if precision == "fp16" else torch.bfloat16)
        model.model.eval()
        if precision == "int8":
            _quantize_int8(model, torch)
        self._model = model
        self._device = device
        self._precision = precision

    @property
    def effective_precision(self) -> str:
        """The precision the loaded model runs in (``"auto"`` resolved): ``"fp32"``, ``"bf16"``,
        ``"fp16"`` or ``"int8"``. Loads the model if needed."""
        self._ensure_warm()
        return self._precision

    def _autocast(self) -> Any:
        if self._precision == "bf16" and not self._device.startswith("cuda"):
            torch = require("torch")
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def predict(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """Raw cross-encoder scores of ``(query, passage)`` pairs, in one batched call."""
        self._ensure_warm()
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        torch = require("torch")
        with torch.inference_mode(), self._autocast():
            out = self._model.predict(
                pairs,
                batch_size=self.batch_size,
                show_progress_bar=self.show_progress,
                convert_to_numpy=True,
            )
        out = np.asarray(out, dtype=np.float32)
        return out[:, 0] if out.ndim == 2 else out

    def run(self, states: list[ContextState]) -> list[ContextState]:
        self._ensure_warm()
        passages, owner, offsets = flatten(states)
        if not passages:
            return states
        pairs = [(states[o].query, passage_text(p, self.with_title)) for p, o in zip(passages, owner, strict=True)]
        scores = self.predict(pairs)
        apply_scores(self, states, scores, offsets, self.k)
        return states
