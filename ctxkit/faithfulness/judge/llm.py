"""An LLM as the claim judge, for users who have a capable model.

:class:`LLMClaimJudge` has the interface of :class:`~ctxkit.faithfulness.judge.ClaimJudge`
(``predict(beliefs, texts)`` -> probabilities of support / conflict / unrelated), so
``ConflictDetector(judge=LLMClaimJudge(generator))`` uses it. With a generator that scores
continuations (``TransformersGenerator``, or an OpenAI-compatible server with prompt
log-probabilities) the probabilities are the normalised likelihoods of the three answer words;
otherwise the model's one-word reply is parsed (an unparsable reply counts as ``unrelated``, the
answer that flags nothing, and is counted in :attr:`LLMClaimJudge.parse_failures`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import InputError

__all__ = ["JUDGE_PROMPT", "LLMClaimJudge", "parse_verdict"]

JUDGE_PROMPT = (
    "Statement: {belief}\n"
    "Text: {text}\n\n"
    "Does the text support the statement, contradict it, or neither (it says nothing about it)? "
    "Reply with one word: support, contradict or neither."
)
_WORDS = ("support", "contradict", "neither")
_VERDICT = re.compile(
    r"\b(support(?:s|ed|ing)?|entail(?:s|ed)?|agree(?:s|d)?|contradict(?:s|ed|ion)?|conflict(?:s|ing)?|"
    r"refute(?:s|d)?|neither|unrelated|irrelevant|neutral)\b",
    re.IGNORECASE,
)


def parse_verdict(reply: str) -> int | None:
    """The label index (0 support, 1 conflict, 2 unrelated) of the first verdict word in
    ``reply``, or ``None`` when it holds none."""
    m = _VERDICT.search(reply or "")
    if m is None:
        return None
    w = m.group(1).lower()
    if w.startswith(("support", "entail", "agree")):
        return 0
    if w.startswith(("contradict", "conflict", "refute")):
        return 1
    return 2


class LLMClaimJudge:
    """Ask an LLM whether a text supports, contradicts or does not address a belief.

    Args:
        generator: A generator object or spec (``ctxkit.llm.build_generator``), e.g.
            ``{"backend": "openai", "base_url": ..., "model": ...}``.
        prompt: The question, with ``{belief}`` and ``{text}`` slots.
        batch_size: Pairs per generator call.
        use_scores: ``"auto"``: likelihoods of the three answer words when the generator can
            score, else the parsed reply; ``True`` / ``False`` force one way.
        cache_size: ``(belief, text)`` verdicts kept for reuse, as :class:`ClaimJudge` does
            (``ConflictDetector`` reads a pair for scores, flags and ranking; ``0``: none,
            ``None``: unbounded).
    """

    def __init__(self, generator: Any = "default", *, prompt: str = JUDGE_PROMPT, batch_size: int = 16,
                 use_scores: bool | str = "auto", cache_size: int | None = 20_000) -> None:
        from ..._lru import LRUCache

        if "{belief}" not in prompt or "{text}" not in prompt:
            raise InputError("LLMClaimJudge: the prompt needs {belief} and {text} slots")
        if cache_size is not None and cache_size < 0:
            raise InputError(f"LLMClaimJudge: cache_size must be >= 0 or None, got {cache_size}")
        self.cache: LRUCache | None = LRUCache(cache_size) if cache_size != 0 else None
        self._spec = generator
        self._gen: Any = None
        self.prompt = prompt
        self.batch_size = batch_size
        self.use_scores = use_scores
        self.parse_failures = 0
        self.config: dict[str, Any] = {}  # no calibration of its own (ConflictDetector reads "detector")

    @property
    def generator(self) -> Any:
        """The generator (built on first use)."""
        if self._gen is None:
            from ...llm.spec import build_generator

            self._gen = build_generator(self._spec)
        return self._gen

    def _can_score(self) -> bool:
        if self.use_scores is not True and self.use_scores != "auto":
            return False
        gen = self.generator
        check = getattr(gen, "check_scoring", None)
        from ...errors import CapabilityError

        try:
            if check is not None:
                check("the LLM claim judge")
        except (CapabilityError, NotImplementedError):
            if self.use_scores is True:
                raise
            return False
        return callable(getattr(gen, "score", None))

    def predict(self, beliefs: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Probabilities, shape ``(n, 3)``: columns support, conflict, unrelated (pairs still in
        :attr:`cache` are not asked again)."""
        from .model import cached_verdicts

        if len(beliefs) != len(texts):
            raise InputError(f"LLMClaimJudge: {len(beliefs)} beliefs but {len(texts)} texts")
        return cached_verdicts(self.cache, beliefs, texts, self._ask)

    def _ask(self, beliefs: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        from ...llm.base import Message

        convs = [[Message(role="user", content=self.prompt.format(belief=b, text=t))]
                 for b, t in zip(beliefs, texts, strict=True)]
        out = np.zeros((len(convs), 3))
        scoring = bool(convs) and self._can_score()
        for i in range(0, len(convs), self.batch_size):
            part = convs[i: i + self.batch_size]
            if scoring:
                flat = [c for c in part for _ in _WORDS]
                ll = np.asarray(self.generator.score(flat, [w for _ in part for w in _WORDS]), float).reshape(-1, 3)
                ll = np.where(np.isfinite(ll), ll, -1e9)
                p = np.exp(ll - ll.max(axis=1, keepdims=True))
                out[i: i + len(part)] = p / p.sum(axis=1, keepdims=True)
                continue
            for j, g in enumerate(self.generator.generate(part, max_new_tokens=8, temperature=0.0)):
                label = parse_verdict(g.text) if g.ok else None
                if label is None:
                    self.parse_failures += 1
                    label = 2
                out[i + j] = 0.05
                out[i + j, label] = 0.9
        return out
