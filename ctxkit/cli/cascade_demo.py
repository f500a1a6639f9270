"""The cascade demo: one question through a ready-made cascade, its trace and top items printed.

Demo code lives in the CLI package, not in the library; ``ctxkit.rankers.cascade_demo`` still
resolves here (lazily).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ctxkit.rankers.cascade import build_cascade, format_trace
from ctxkit.types import ContextState

__all__ = ["cascade_demo"]


def cascade_demo(
    index: str | Path, question: str, *, print_fn: Callable[[str], Any] = print, **settings: Any
) -> ContextState:
    """Run one question through :func:`~ctxkit.rankers.build_cascade` and print the cascade's trace and top items.

    Args:
        index: Index folder.
        question: The question.
        print_fn: Where lines go (``print`` by default).
        **settings: Passed to :func:`~ctxkit.rankers.build_cascade` (budgets, cross-encoder, ranker...).

    Returns:
        The final state (passages in prompt order, each with every stage's score).
    """
    pipe = build_cascade(index, **settings)
    state = pipe.run(question)
    print_fn(f"cascade for: {question}")
    print_fn(format_trace(state))
    for i, p in enumerate(state.passages[:5], 1):
        scores = ", ".join(f"{k}={v:.3f}" for k, v in p.scores.items())
        print_fn(f"  {i}. [{p.id}] {p.text[:70]!r}  ({scores})")
    return state
