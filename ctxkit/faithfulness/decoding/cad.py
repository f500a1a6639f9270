"""Context-aware decoding (CAD, Shi et al. 2023) and AdaCAD as transformers logits processors.

CAD contrasts the model's next-token logits *with* the retrieved context against the logits
*without* it: ``z' = (1 + a) * z_ctx - a * z_noctx``, amplifying what the context adds. AdaCAD
sets the weight per row and step to the Jensen-Shannon divergence (in bits, so in ``[0, 1]``) of
the two next-token distributions: when the context changes nothing, decoding is left alone.

The context-free sequence of every row runs in the processor with its own KV cache: one batched
forward of the context-free prompts at the first step, then one batched single-token forward per
step (the token just generated). The context-free prompts are derived from the real prompts by
removing the ``<context>...</context>`` blocks (the markers
:class:`~ctxkit.llm.TransformersGenerator` truncates by), or given explicitly with
:meth:`CADLogitsProcessor.set_unconditional`. Explicit context-free prompts are matched to the rows
of each ``generate`` call by their conditional prompt, so they stay aligned when a generator sorts
a batch by length and splits it into several calls.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Sequence
from typing import Any

from ..._lazy import require
from ...errors import ConfigError, InputError
from ...llm.base import CONTEXT_CLOSE, CONTEXT_OPEN
from ._steps import StepTracker

__all__ = ["AdaCADLogitsProcessor", "CADLogitsProcessor", "cad_combine", "js_divergence"]

log = logging.getLogger(__name__)


def js_divergence(z_a: Any, z_b: Any) -> Any:
    """Row-wise Jensen-Shannon divergence (bits, in ``[0, 1]``) of ``softmax(z_a)`` and ``softmax(z_b)``."""
    torch = require("torch")
    p = torch.softmax(z_a.float(), dim=-1)
    q = torch.softmax(z_b.float(), dim=-1)
    m = 0.5 * (p + q)
    kl_p = torch.special.xlogy(p, p).sum(-1) - torch.special.xlogy(p, m).sum(-1)
    kl_q = torch.special.xlogy(q, q).sum(-1) - torch.special.xlogy(q, m).sum(-1)
    return (0.5 * (kl_p + kl_q) / math.log(2.0)).clamp(0.0, 1.0)


def cad_combine(z_ctx: Any, z_noctx: Any, alpha: float = 0.5, *, adaptive: bool = False) -> tuple[Any, Any]:
    """``z_ctx + w * (z_ctx - z_noctx)`` with ``w = alpha`` (CAD) or ``alpha * JSD`` (AdaCAD).

    Only the first ``min(width)`` columns are contrasted (padded vocabularies keep their scores).

    Returns:
        ``(new_scores, w)``: new scores in ``z_ctx``'s dtype and the ``(B,)`` weights used.
    """
    torch = require("torch")
    width = min(z_ctx.shape[-1], z_noctx.shape[-1])
    a, b = z_ctx[..., :width].float(), z_noctx[..., :width].float()
    if adaptive:
        w = alpha * js_divergence(a, b)
    else:
        w = torch.full(a.shape[:-1], float(alpha), device=a.device)
    out = z_ctx.clone()
    out[..., :width] = (a + w[..., None] * (a - b)).to(z_ctx.dtype)
    return out, w


class CADLogitsProcessor:
    """Context-aware decoding as a transformers logits processor (KV-cached, batched).

    Args:
        model: The generating causal LM (its second, context-free pass runs here).
        tokenizer: Its tokenizer (needed to derive context-free prompts from the markers).
        alpha: Contrast weight ``a`` (0 = plain decoding; Shi et al. use 0.5-1).
        context_markers: The ``(open, close)`` strings around context inside prompts.
        adaptive: AdaCAD: per-row, per-step weight ``alpha * JSD(p_ctx, p_noctx)``.
        record_stats: Keep the per-step weights (see :attr:`weights`; with a generator that splits
            a batch, they cover its last ``generate`` call).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        alpha: float = 0.5,
        context_markers: tuple[str, str] = (CONTEXT_OPEN, CONTEXT_CLOSE),
        adaptive: bool = False,
        record_stats: bool = True,
    ) -> None:
        if not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha < 0:
            raise ConfigError(f"{type(self).__name__}: alpha must be a finite number >= 0, got {alpha!r}")
        if len(context_markers) != 2 or not all(isinstance(m, str) and m for m in context_markers):
            raise ConfigError(f"{type(self).__name__}: context_markers must be two non-empty strings")
        self.model = model
        self.tokenizer = tokenizer
        self.alpha = float(alpha)
        self.adaptive = adaptive
        self.context_markers = (context_markers[0], context_markers[1])
        self._block = re.compile(re.escape(context_markers[0]) + r".*?" + re.escape(context_markers[1]), re.DOTALL)
        self.record_stats = record_stats
        self._tracker = StepTracker(getattr(tokenizer, "pad_token_id", None))
        self._generator: Any = None
        self._pending: list[list[int]] | None = None  # context-free rows in the next call's row order
        self._by_prompt: dict[tuple[int, ...], list[list[int]]] = {}  # conditional prompt -> context-free rows
        self._keep_arg: bool | None = None
        self._cache: Any = None
        self._cache_arg: str | None = None
        self._mask: Any = None
        self._pos: Any = None
        self._last: Any = None
        self._weights: list[Any] = []
        self.rows_without_context = 0

    @classmethod
    def for_generator(cls, generator: Any, **kwargs: Any) -> CADLogitsProcessor:
        """A processor for a :class:`~ctxkit.llm.TransformersGenerator` (prompts need context markers)."""
        kwargs.setdefault("context_markers", generator.context_markers)
        proc = cls(generator.model, generator.tokenizer, **kwargs)
        proc._generator = generator
        return proc

    def set_unconditional(
        self,
        rows: Sequence[Any],
        *,
        prompts: Sequence[Any] | None = None,
        max_new_tokens: int | None = None,
    ) -> CADLogitsProcessor:
        """Give the context-free prompts explicitly instead of deriving them from the markers.

        Args:
            rows: One context-free prompt per row: token ids, or (for a processor made with
                :meth:`for_generator`) conversations, rendered and truncated as the generator does.
            prompts: The conditional prompts of the same rows (token ids or conversations, like
                ``rows``). Each row of the following ``generate`` calls is then matched to its
                context-free prompt by its own prompt, whatever order and chunks the rows run in
                (a :class:`~ctxkit.llm.TransformersGenerator` sorts a batch by length and may split
                it); the pairs are used up as they are matched. Required for a processor made with
                :meth:`for_generator`.
            max_new_tokens: With conversations: the ``max_new_tokens`` of the ``generate`` call
                (it sets the prompt budget, hence the truncation). Default: the generator's.

        Without ``prompts``, ``rows`` are the rows of the next ``model.generate`` call, in its row
        order.

        Raises:
            InputError: empty rows, or ``rows`` and ``prompts`` of different lengths.
            ConfigError: rows without ``prompts`` for a processor made for a generator.
        """
        if not rows:
            raise InputError("set_unconditional needs one context-free prompt per row")
        if prompts is None and self._generator is not None:
            raise ConfigError(
                "set_unconditional: a TransformersGenerator sorts a batch by length and may split it, "
                "so context-free rows cannot be matched by position; pass prompts=<the conversations "
                "given to generate> as well"
            )
        uncond = [self._ids(r, max_new_tokens) for r in rows]
        if prompts is None:
            self._pending, self._by_prompt = uncond, {}
            return self
        if len(prompts) != len(rows):
            raise InputError(f"set_unconditional got {len(rows)} rows but {len(prompts)} prompts")
        self._pending, self._by_prompt = None, {}
        for p, u in zip(prompts, uncond, strict=True):
            self._by_prompt.setdefault(tuple(self._ids(p, max_new_tokens)), []).append(u)
        return self

    def _ids(self, row: Any, max_new_tokens: int | None) -> list[int]:
        """Token ids of a row given as ids, or as a conversation through the generator."""
        is_ids = not isinstance(row, str) and (
            hasattr(row, "tolist") or all(isinstance(t, int) and not isinstance(t, bool) for t in row)
        )
        if not is_ids:
            if self._generator is None:
                raise InputError(
                    "set_unconditional got conversations; give token ids, or make the processor with "
                    f"{type(self).__name__}.for_generator(generator)"
                )
            from ...llm.base import as_messages

            gen = self._generator
            budget = gen._budget(max_new_tokens or gen.default_settings.max_new_tokens)
            try:
                ids, _ = gen._prepare(as_messages(row), budget)
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. a prompt that cannot fit the budget (private error type)
                raise InputError(f"set_unconditional: cannot prepare a prompt: {exc}") from None
        else:
            ids = [int(t) for t in (row.tolist() if hasattr(row, "tolist") else row)]
        if not ids:
            raise InputError("set_unconditional needs non-empty prompts")
        return ids

    @property
    def weights(self) -> list[list[float]]:
        """``(steps, B)`` contrast weight applied at every step of the last generation."""
        return [w.tolist() for w in self._weights]

    def reset(self) -> None:
        """Drop the context-free cache and statistics."""
        self._tracker.reset()
        self._cache = self._mask = self._pos = self._last = None
        self._weights = []

    def _strip_context(self, ids: list[int]) -> list[int]:
        if self.tokenizer is None:
            raise ConfigError(
                f"{type(self).__name__} needs the tokenizer to remove context blocks from prompts, "
                "or explicit context-free prompts via set_unconditional(...)"
            )
        text = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        stripped = self._block.sub("", text)
        if stripped == text:
            self.rows_without_context += 1
            return ids
        return list(self.tokenizer(stripped, add_special_tokens=False)["input_ids"])

    def _forward(self, ids: Any, mask: Any, pos: Any) -> Any:
        torch = require("torch")
        if self._cache_arg is None:  # transformers >= 5.x names it `cache`, older `past_key_values`
            params = inspect.signature(self.model.forward).parameters
            self._cache_arg = "cache" if "cache" in params else "past_key_values"
            self._keep_arg = "logits_to_keep" in params  # only where the forward takes it
        kw: dict[str, Any] = {self._cache_arg: self._cache} if self._cache is not None else {}
        if self._keep_arg:
            kw["logits_to_keep"] = 1
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **kw)
        self._cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return out.logits[:, -1]

    def _start(self, input_ids: Any) -> None:
        torch = require("torch")
        b = int(input_ids.shape[0])
        used: list[tuple[int, ...]] = []
        if self._by_prompt:
            rows, used = self._match_rows(input_ids)
        elif self._pending is not None:
            if len(self._pending) != b:
                raise InputError(f"set_unconditional got {len(self._pending)} rows but generate has {b}")
            rows, self._pending = self._pending, None
        else:
            self.rows_without_context = 0
            full = input_ids.tolist()
            rows = [self._strip_context(r[s:]) for r, s in zip(full, self._tracker.start, strict=True)]
            if self.rows_without_context:
                log.warning("%s: %d of %d prompts have no %s...%s block; those rows decode plainly",
                            type(self).__name__, self.rows_without_context, b, *self.context_markers)
        width = max(len(r) for r in rows)
        pad = getattr(self.tokenizer, "pad_token_id", None) or 0
        ids = torch.full((b, width), pad, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, width - len(r):] = torch.tensor(r)
            mask[k, width - len(r):] = 1
        dev = input_ids.device
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        self._cache, self._weights = None, []
        self._last = self._forward(ids, mask, pos)
        self._use(used)  # a call that failed before this point (a retried chunk) keeps its pairs
        self._mask, self._pos = mask, pos[:, -1:]

    def _match_rows(self, input_ids: Any) -> tuple[list[list[int]], list[tuple[int, ...]]]:
        """The context-free prompt of every row, found by the row's own (unpadded) prompt; also
        the keys to mark as used once the call has started (see :meth:`_use`)."""
        keys = [tuple(r[s:]) for r, s in zip(input_ids.tolist(), self._tracker.start, strict=True)]
        need: dict[tuple[int, ...], int] = {}
        for key in keys:
            need[key] = need.get(key, 0) + 1
        missing = sum(n - len(self._by_prompt.get(key, [])) for key, n in need.items()
                      if n > len(self._by_prompt.get(key, [])))
        if missing:
            raise InputError(
                f"{missing} of {len(keys)} rows of this generate call have a prompt that was not "
                "given to set_unconditional(..., prompts=...) (with conversations, pass the call's "
                "max_new_tokens: it decides the truncation)"
            )
        seen: dict[tuple[int, ...], int] = {}
        rows = []
        for key in keys:
            rows.append(self._by_prompt[key][seen.get(key, 0)])
            seen[key] = seen.get(key, 0) + 1
        return rows, keys

    def _use(self, keys: list[tuple[int, ...]]) -> None:
        """Consume the matched pairs (after the call's first forward pass succeeded)."""
        for key in keys:
            queue = self._by_prompt[key]
            queue.pop(0)
            if not queue:
                del self._by_prompt[key]

    def _advance(self, new_tokens: Any) -> None:
        torch = require("torch")
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        self._pos = self._pos + 1
        self._last = self._forward(new_tokens, self._mask, self._pos)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """One step for the whole batch (transformers ``LogitsProcessor`` protocol)."""
        if self._tracker.pad_token_id is None and self.tokenizer is not None:
            self._tracker.pad_token_id = self.tokenizer.pad_token_id
        if self._tracker.update(input_ids):
            self._start(input_ids)
        else:
            self._advance(input_ids[:, -1:])
        out, w = cad_combine(scores, self._last.to(scores.device), self.alpha, adaptive=self.adaptive)
        if self.record_stats:
            self._weights.append(w)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha}, adaptive={self.adaptive})"


class AdaCADLogitsProcessor(CADLogitsProcessor):
    """AdaCAD: CAD whose weight is ``alpha * JSD(p_ctx, p_noctx)`` per row and step (``alpha=1``
    is the paper's setting)."""

    def __init__(self, model: Any, tokenizer: Any = None, *, alpha: float = 1.0, **kwargs: Any) -> None:
        kwargs["adaptive"] = True
        super().__init__(model, tokenizer, alpha=alpha, **kwargs)
