"""CAAD: context-aware adaptive decoding (arXiv 2508.02184) as a transformers logits processor.

:class:`CAADLogitsProcessor` adds, at each step, ``alpha`` times the similarity-weighted mean of
the :class:`~ctxkit.faithfulness.decoding.space.GroundingSpace` values whose key is close to the
current window. It decodes the last ``window`` tokens of every row, embeds all rows in one call,
compares them to every key as one matrix product on the model's device, and keeps the values whose
cosine is ``>= tau`` (optionally only the ``top_n`` best). Works with KV-cache ``generate``,
left-padded batches, greedy and sampling. :class:`CAADStats` reports the matches.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..._lazy import require
from ...errors import ConfigError, ModelNotAvailableError
from ._steps import StepTracker
from .space import GroundingSpace, GroundingSpaceMismatchError
from .windows import WindowEncoder, window_texts

__all__ = ["CAAD", "CAADLogitsProcessor", "CAADStats"]


@dataclass
class CAADStats:
    """Per-step match statistics of a :class:`CAADLogitsProcessor` (current generation).

    Attributes:
        steps: Decoding steps seen.
        steps_with_match: Steps where at least one row had a match.
        matches_per_row: ``(steps, B)`` number of matched entries.
        mean_similarity: ``(steps, B)`` mean cosine of the matches (0 where none).
        prefetch_hits: Steps whose window embedding was computed during the forward pass
            (see :meth:`CAADLogitsProcessor.prefetching`).
        prefetch_misses: Steps where a prefetched embedding did not match the real windows and
            was recomputed (results are identical either way).
    """

    steps: int = 0
    steps_with_match: int = 0
    matches_per_row: list[list[int]] = field(default_factory=list)
    mean_similarity: list[list[float]] = field(default_factory=list)
    prefetch_hits: int = 0
    prefetch_misses: int = 0

    @property
    def match_rate(self) -> float:
        """Fraction of (step, row) pairs that were shifted."""
        cells = [m for row in self.matches_per_row for m in row]
        return sum(1 for m in cells if m > 0) / len(cells) if cells else 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary."""
        cells = [m for row in self.matches_per_row for m in row]
        sims = [s for r, row in zip(self.matches_per_row, self.mean_similarity, strict=True)
                for m, s in zip(r, row, strict=True) if m > 0]
        return {
            "steps": self.steps,
            "steps_with_match": self.steps_with_match,
            "match_rate": self.match_rate,
            "mean_matches": sum(cells) / len(cells) if cells else 0.0,
            "mean_similarity": sum(sims) / len(sims) if sims else 0.0,
            "prefetch_hits": self.prefetch_hits,
            "prefetch_misses": self.prefetch_misses,
        }


class CAADLogitsProcessor:
    """Adds ``alpha`` x the retrieved grounding logits to the model's next-token scores.

    A transformers-compatible logits processor: pass it to
    ``model.generate(..., logits_processor=LogitsProcessorList([proc]))`` or to
    ``TransformersGenerator(..., logits_processors=[proc])``. Nothing is recomputed: each step
    decodes the last ``window`` tokens of every row, embeds the whole batch in one call, and scores
    it against every key in one matrix product on the scores' device.

    Args:
        space: A :class:`GroundingSpace` or the path of a saved one.
        tokenizer: The generating model's tokenizer (checked against the space). Optional: without
            it, the tokenizer recorded in the space is loaded on first use.
        alpha: Weight of the grounding logits (paper: 0.5). 0 leaves every score untouched.
        tau: Cosine threshold (paper: 0.7).
        top_n: Use at most the ``top_n`` most similar entries per step (``None``: all above tau).
        embedder: Window embedder; default: the one the space was built with.
        record_stats: Keep per-step match statistics (see :attr:`stats`).
        prefetch: Inside :meth:`prefetching`, embed each step's windows on a spare CPU core while
            the model runs its forward pass. ``None`` (auto): on when the embedder is on the CPU
            and torch leaves a core free (``torch.get_num_threads() < os.cpu_count()``); off for a
            static window key.
    """

    def __init__(
        self,
        space: GroundingSpace | str | Path,
        tokenizer: Any = None,
        *,
        alpha: float = 0.5,
        tau: float = 0.7,
        top_n: int | None = None,
        embedder: Any = None,
        record_stats: bool = True,
        prefetch: bool | None = None,
    ) -> None:
        if not isinstance(space, GroundingSpace):
            space = GroundingSpace.load(space)
        if not isinstance(alpha, int | float) or not math.isfinite(alpha):
            raise ConfigError(f"CAADLogitsProcessor: alpha must be a finite number, got {alpha!r}")
        if not isinstance(tau, int | float) or not -1.0 <= tau <= 1.0:
            raise ConfigError(f"CAADLogitsProcessor: tau must be a cosine in [-1, 1], got {tau!r}")
        if top_n is not None and (not isinstance(top_n, int) or top_n < 1):
            raise ConfigError(f"CAADLogitsProcessor: top_n must be an int >= 1 or None, got {top_n!r}")
        self.space = space
        self.alpha = float(alpha)
        self.tau = float(tau)
        self.top_n = top_n
        self.window = space.window
        if isinstance(embedder, WindowEncoder):
            self.encoder = embedder
        else:
            self.encoder = WindowEncoder(embedder or _space_key(space))
        space.check_embedder(self.encoder, load=False)  # the name now; the table/dimension on first use
        self._embedder_checked = False
        self.record_stats = record_stats
        self.prefetch = prefetch
        self.tokenizer: Any = None
        self._tracker = StepTracker()
        self._matches: list[Any] = []
        self._sims: list[Any] = []
        self._windows: list[list[int]] | None = None  # windows of the last step
        self._pending: tuple[list[list[int]], Any] | None = None  # (windows, future)
        self._hits = self._misses = 0
        if tokenizer is not None:
            self.bind(tokenizer)

    @classmethod
    def load(cls, path: str | Path, tokenizer: Any = None, **kwargs: Any) -> CAADLogitsProcessor:
        """A processor over the grounding space saved at ``path``."""
        return cls(GroundingSpace.load(path, tokenizer=tokenizer), tokenizer, **kwargs)

    @classmethod
    def for_generator(cls, space: GroundingSpace | str | Path, generator: Any, **kwargs: Any) -> CAADLogitsProcessor:
        """A processor bound to a :class:`~ctxkit.llm.TransformersGenerator`'s tokenizer."""
        return cls(space, generator.tokenizer, **kwargs)

    def bind(self, tokenizer: Any) -> CAADLogitsProcessor:
        """Use ``tokenizer`` to decode windows (it must be the space's tokenizer)."""
        if self.space.manifest.get("tokenizer_fingerprint") != "synthetic":
            self.space.check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self._tracker = StepTracker(tokenizer.pad_token_id)
        return self

    def _ensure_tokenizer(self) -> None:
        if self.tokenizer is not None:
            return
        src = self.space.manifest.get("tokenizer_source") or ""
        if not src or not Path(src).exists():
            raise ConfigError(
                "CAADLogitsProcessor has no tokenizer: pass tokenizer=... (or use "
                "CAADLogitsProcessor.for_generator(space, generator)); the space's recorded "
                f"tokenizer source {src!r} is not available here"
            )
        tf = require("transformers")
        try:
            tok = tf.AutoTokenizer.from_pretrained(src)
        except OSError as exc:
            raise ModelNotAvailableError(f"cannot load the space's tokenizer from {src!r}: {exc}") from exc
        self.bind(tok)

    def reset(self) -> None:
        """Forget the current generation and its statistics."""
        self._tracker.reset()
        self._matches, self._sims = [], []
        self._windows, self._pending = None, None
        self._hits = self._misses = 0

    @property
    def stats(self) -> CAADStats:
        """Match statistics of the last (or current) generation."""
        m = [x.tolist() for x in self._matches]
        s = [x.tolist() for x in self._sims]
        return CAADStats(steps=len(m), steps_with_match=sum(1 for r in m if any(v > 0 for v in r)),
                         matches_per_row=m, mean_similarity=s,
                         prefetch_hits=self._hits, prefetch_misses=self._misses)

    def _prefetch_enabled(self) -> bool:
        if self.prefetch is not None:
            return bool(self.prefetch)
        if self.encoder.is_static:  # a table lookup: nothing worth overlapping
            return False
        torch = require("torch")
        return self.encoder.device.type == "cpu" and torch.get_num_threads() < (os.cpu_count() or 1)

    @contextlib.contextmanager
    def prefetching(self, model: Any) -> Iterator[CAADLogitsProcessor]:
        """Overlap the window embedding with ``model``'s forward pass during ``generate``.

        The windows of step ``t`` are known before the forward pass of step ``t`` starts (they end
        with the token sampled at step ``t - 1``). Inside this context a forward pre-hook on
        ``model`` starts embedding them in a worker thread, and the processor call of that step
        takes the result. On a CPU this puts the embedder on a core the decoding step leaves idle,
        which hides most of its cost. Each step checks that the prefetched windows are exactly
        the step's real windows and recomputes them otherwise, so outputs are identical with and
        without it. Does nothing when prefetching is off (see ``prefetch``).

        Example:
            ``with proc.prefetching(model): model.generate(..., logits_processor=[proc])``
        """
        if not self._prefetch_enabled():
            yield self
            return
        from concurrent.futures import ThreadPoolExecutor

        self._ensure_tokenizer()
        _ = self.encoder.model  # load it here, not in the worker thread
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="caad-prefetch")

        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            wins = self._next_windows(ids)
            if wins is not None:
                texts = window_texts(self.tokenizer, wins)
                self._pending = (wins, pool.submit(self.encoder.encode, texts))

        handle = model.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()
            self._pending = None
            pool.shutdown(wait=True)

    def _next_windows(self, ids: Any) -> list[list[int]] | None:
        """The windows the next processor call will see, from the forward pass's input ids."""
        if ids is None or getattr(ids, "ndim", 0) != 2:
            return None
        w = self.window
        if ids.shape[1] == 1 and self._windows is not None and len(self._windows) == ids.shape[0]:
            return [(prev + [t])[-w:] for prev, t in zip(self._windows, ids[:, 0].tolist(), strict=True)]
        # A full sequence (prefill, or decoding without a cache): strip the left padding as
        # StepTracker does for a new generation.
        pad = self._tracker.pad_token_id
        tail = ids[:, -w:].tolist()
        if pad is None:
            return tail
        out = []
        for row, full in zip(tail, ids.tolist(), strict=True):
            real = [k for k, t in enumerate(full) if t != pad]
            start = real[0] if real else len(full)
            out.append(row[max(start - (len(full) - len(row)), 0):])
        return out

    def shift_windows(self, windows: Sequence[Sequence[int]], scores: Any) -> Any:
        """``scores + alpha * z_bar`` for rows whose preceding windows are ``windows``.

        The core of :meth:`__call__`, also used to teacher-force with the same shift. Returns a
        new tensor (``scores`` is not modified); rows without a match are returned unchanged.
        """
        self._ensure_tokenizer()
        vs, vk = int(scores.shape[-1]), self.space.vocab_size
        if vs < int(self.space.manifest.get("tokenizer_len", 0)):
            raise GroundingSpaceMismatchError(
                f"the scores have {vs} columns but the space's tokenizer has "
                f"{self.space.manifest.get('tokenizer_len')} tokens: wrong model for this space"
            )
        q = self._embed_windows(windows).to(scores.device)
        z, matched, mean_sim = self.space.shift(q, tau=self.tau, top_n=self.top_n)
        if self.record_stats:
            self._matches.append(matched)
            self._sims.append(mean_sim)
        if self.alpha == 0.0:
            return scores
        rows = (matched > 0).nonzero().squeeze(1)
        if rows.numel() == 0:
            return scores
        out = scores.clone()
        w = min(vs, vk)
        upd = out[rows, :w].float() + self.alpha * z[rows, :w]
        out[rows, :w] = upd.to(out.dtype)
        return out

    def _embed_windows(self, windows: Sequence[Sequence[int]]) -> Any:
        if not self._embedder_checked:
            self.space.check_embedder(self.encoder)
            self._embedder_checked = True
        pending, self._pending = self._pending, None
        if pending is not None:
            if [list(w) for w in windows] == pending[0]:
                self._hits += 1
                return pending[1].result()
            self._misses += 1
            pending[1].cancel()
        return self.encoder.encode(window_texts(self.tokenizer, windows))

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """One decoding step for the whole batch (transformers ``LogitsProcessor`` protocol)."""
        self._ensure_tokenizer()
        if self._tracker.update(input_ids):
            self._matches, self._sims = [], []
            self._hits = self._misses = 0
        self._windows = self._tracker.windows(input_ids, self.window)
        return self.shift_windows(self._windows, scores)

    def __repr__(self) -> str:
        return (f"CAADLogitsProcessor(entries={len(self.space)}, alpha={self.alpha}, tau={self.tau}, "
                f"top_n={self.top_n}, window={self.window})")


def _space_key(space: GroundingSpace) -> Any:
    """The window embedder a space was built with, as a :class:`WindowEncoder` argument."""
    from .static_key import StaticKeyConfig

    name = space.manifest.get("embedder") or "default"
    if name == StaticKeyConfig().name:
        return "static"
    if name.startswith("ctxkit-static:"):
        raise GroundingSpaceMismatchError(
            f"this grounding space was built with the static window key {name!r}; pass that key's folder "
            "as embedder=... (python -m ctxkit.faithfulness.decoding.static_key prints it)"
        )
    return name


CAAD = CAADLogitsProcessor
