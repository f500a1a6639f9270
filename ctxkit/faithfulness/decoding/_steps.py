"""Plumbing shared by the decoding-time processors (CAAD, CAD, AdaCAD).

A transformers ``LogitsProcessor`` only sees ``(input_ids, scores)`` at every step. These helpers
tell a new ``generate`` call from the next step of the current one, and find where each left-padded
row really starts, so that a processor keeps per-generation state (KV caches, pad offsets, stats)
without recomputing the sequence.
"""

from __future__ import annotations

from typing import Any

__all__ = ["StepTracker"]


class StepTracker:
    """Tracks the decoding step of a batched, left-padded ``generate`` call.

    Args:
        pad_token_id: The pad id used for left padding (``None``: no padding is stripped).
    """

    def __init__(self, pad_token_id: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.batch: int = -1
        self.length: int = -1
        self.step: int = 0
        self.start: list[int] = []  # index of each row's first real (non-pad) token
        self._prev: Any = None

    def reset(self) -> None:
        """Forget the current generation (the next call starts a new one)."""
        self.batch, self.length, self.step, self.start, self._prev = -1, -1, 0, [], None

    def update(self, input_ids: Any) -> bool:
        """Register a step; returns ``True`` when ``input_ids`` starts a new generation."""
        b, n = int(input_ids.shape[0]), int(input_ids.shape[1])
        # A continuation has exactly one more token and the previous ids as its prefix (generate
        # builds a new tensor every step, so keeping a reference is safe and costs no copy).
        new = (
            b != self.batch
            or n != self.length + 1
            or self._prev is None
            or self._prev.device != input_ids.device
            or not bool((input_ids[:, :-1] == self._prev).all())
        )
        self.batch, self.length, self._prev = b, n, input_ids
        if new:
            self.step = 0
            if self.pad_token_id is None:
                self.start = [0] * b
            else:
                real = input_ids != self.pad_token_id
                first = real.int().argmax(dim=1)
                first[~real.any(dim=1)] = n
                self.start = [int(x) for x in first.tolist()]
        else:
            self.step += 1
        return new

    def windows(self, input_ids: Any, window: int) -> list[list[int]]:
        """The last ``window`` real token ids of every row (left padding excluded)."""
        n = int(input_ids.shape[1])
        lo = max(n - window, 0)
        tail = input_ids[:, lo:].tolist()
        return [row[max(s - lo, 0):] for row, s in zip(tail, self.start, strict=True)]
