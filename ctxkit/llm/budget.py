"""Prompt budgets shared by every generator: render a conversation, measure it, and shorten ONLY
its context blocks (the text between the context markers) until it fits.

:class:`~ctxkit.llm.TransformersGenerator` measures with its own tokenizer;
:class:`~ctxkit.llm.OpenAIGenerator` with a tokenizer you name (token-accurate) or, without one,
with a character estimate (:class:`CharCounter`). The question and the instructions are never cut:
text outside the markers stays as it is, and a prompt that does not fit with every context block
emptied raises :class:`PromptTooLong`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence, Sized
from typing import Any, Protocol, TypeVar

from .._lazy import require
from ..errors import InputError
from .base import CONTEXT_CLOSE, CONTEXT_OPEN, Message

__all__ = [
    "CharCounter",
    "PromptTooLong",
    "TokenCounter",
    "TokenizerCounter",
    "context_spans",
    "encode_prompt",
    "fit_context",
    "load_tokenizer",
    "render_chat",
]

Encoded = TypeVar("Encoded", bound=Sized)


class PromptTooLong(Exception):
    """A prompt that does not fit its budget even with all its context removed."""


class TokenCounter(Protocol):
    """Measures text in tokens and cuts tokens off its end."""

    def count(self, text: str) -> int: ...

    def cut_tail(self, text: str, n_tokens: int) -> str: ...


class TokenizerCounter:
    """Exact counts with a Hugging Face tokenizer (cuts at a token boundary of the text)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        """Tokens of ``text`` without special tokens."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def cut_tail(self, text: str, n_tokens: int) -> str:
        """``text`` without its last ``n_tokens`` tokens."""
        if n_tokens <= 0:
            return text
        tok = self.tokenizer
        try:
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
            if len(offsets) <= n_tokens:
                return ""
            return text[: offsets[len(offsets) - n_tokens][0]]
        except (NotImplementedError, TypeError, KeyError):  # slow tokenizer: decode kept tokens
            ids = tok(text, add_special_tokens=False)["input_ids"]
            return tok.decode(ids[: max(len(ids) - n_tokens, 0)])


class CharCounter:
    """Token estimates from characters, for servers whose tokenizer is not available here.

    Args:
        chars_per_token: Characters per token assumed (3.0 errs on the short side for English,
            which is about 4; code and non-Latin scripts need fewer).
    """

    def __init__(self, chars_per_token: float = 3.0) -> None:
        if not chars_per_token > 0:
            raise ValueError(f"chars_per_token must be > 0, got {chars_per_token!r}")
        self.chars_per_token = float(chars_per_token)

    def count(self, text: str) -> int:
        """Estimated tokens of ``text``."""
        return math.ceil(len(text) / self.chars_per_token) if text else 0

    def cut_tail(self, text: str, n_tokens: int) -> str:
        """``text`` without about ``n_tokens`` tokens' worth of characters, cut between words."""
        if n_tokens <= 0:
            return text
        keep = len(text) - math.ceil(n_tokens * self.chars_per_token)
        if keep <= 0:
            return ""
        space = text.rfind(" ", max(keep - 30, 0), keep + 1)
        return text[: space if space > 0 else keep]


def context_spans(content: str, markers: tuple[str, str] = (CONTEXT_OPEN, CONTEXT_CLOSE)) -> list[tuple[int, int]]:
    """(start, end) of the text inside each context block of ``content``.

    Raises:
        InputError: a block is opened and never closed.
    """
    o, c = markers
    spans, pos = [], 0
    while True:
        i = content.find(o, pos)
        if i < 0:
            return spans
        j = content.find(c, i + len(o))
        if j < 0:
            raise InputError(f"a message opens a context block with {o!r} but never closes it with {c!r}")
        spans.append((i + len(o), j))
        pos = j + len(c)


def fit_context(
    messages: Sequence[Message],
    budget: int,
    *,
    encode: Callable[[list[Message]], Encoded],
    counter: TokenCounter,
    markers: tuple[str, str] = (CONTEXT_OPEN, CONTEXT_CLOSE),
    budget_hint: str = "raise max_input_tokens",
) -> tuple[Encoded, list[Message], int]:
    """Shorten the context blocks of ``messages`` until ``len(encode(messages)) <= budget``.

    Tokens go from the end of the last non-empty context block backwards (then earlier blocks),
    and the whole prompt is re-measured after each cut; nothing outside the markers changes.

    Args:
        messages: The conversation.
        budget: Most prompt tokens allowed.
        encode: The rendered, measured prompt of a conversation (e.g. its token ids); its
            ``len`` is the prompt length in tokens.
        counter: Measures and cuts the text of one context block.
        markers: The (open, close) strings of a context block.
        budget_hint: What the error message tells the user to raise.

    Returns:
        ``(encoded prompt, messages as sent, context tokens removed)``.

    Raises:
        InputError: an empty conversation or prompt, or an unclosed context block.
        PromptTooLong: the prompt does not fit even with every context block emptied.
    """
    if not messages:
        raise InputError("empty conversation: give at least one message")
    for m in messages:  # malformed markers are an error even when no truncation is needed
        context_spans(m.content, markers)
    msgs = list(messages)
    enc = encode(msgs)
    if not len(enc):
        raise InputError("the prompt is empty after rendering; give a non-empty message")
    removed = 0
    for _ in range(64):
        excess = len(enc) - budget
        if excess <= 0:
            return enc, msgs, removed
        # Drop `excess` tokens from the end of the last non-empty context block backwards.
        progressed = False
        for mi in reversed(range(len(msgs))):
            content = msgs[mi].content
            for start, end in reversed(context_spans(content, markers)):
                inner = content[start:end]
                if not inner.strip():
                    continue
                n_inner = counter.count(inner)
                take = min(excess, n_inner)
                kept = counter.cut_tail(inner, take).rstrip() if take < n_inner else ""
                msgs[mi] = Message(role=msgs[mi].role, content=content[:start] + kept + content[end:])
                removed += take
                progressed = True
                break
            if progressed:
                break
        if not progressed:
            raise PromptTooLong(
                f"the prompt needs {len(enc)} tokens but the budget is {budget} and no context "
                f"is left to truncate; shorten the question/instructions, {budget_hint}, "
                f"or mark truncatable text with {markers[0]}...{markers[1]}"
            )
        enc = encode(msgs)
    raise PromptTooLong(f"could not fit the prompt into {budget} tokens")


def render_chat(messages: Sequence[Message], tokenizer: Any = None, chat_template: bool | str = True) -> str:
    """The prompt text of a conversation: the tokenizer's chat template with the generation
    prompt appended, ``chat_template`` when it is a template string, else the message contents
    joined by blank lines (also without a tokenizer, or when the tokenizer has no template)."""
    if chat_template is False or tokenizer is None:
        return "\n\n".join(m.content for m in messages)
    kw: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
    if isinstance(chat_template, str):
        kw["chat_template"] = chat_template
    elif not getattr(tokenizer, "chat_template", None):
        return "\n\n".join(m.content for m in messages)
    return tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages], **kw)


def encode_prompt(tokenizer: Any, text: str, chat_template: bool | str = True) -> list[int]:
    """Token ids of a rendered prompt: chat templates write BOS themselves; without a template
    the tokenizer adds its special tokens."""
    add = chat_template is False or not getattr(tokenizer, "chat_template", None)
    if isinstance(chat_template, str):
        add = False
    return tokenizer(text, add_special_tokens=add)["input_ids"]


def load_tokenizer(name: str, *, trust_remote_code: bool = False) -> Any:
    """A Hugging Face tokenizer by local path, ``.gguf`` file, hub id or ``"default"`` (the
    packaged SmolLM2), resolved offline-first like the models themselves.

    Raises:
        ModelNotAvailableError: it cannot be found offline (the message says how to get it).
    """
    from pathlib import Path

    from ..models import resolve_model
    from .transformers import _gguf_cache_path

    tf = require("transformers")
    resolved = resolve_model(name, "llm")
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if resolved.gguf_file:
        # TransformersGenerator keeps a converted copy of a GGUF model: its tokenizer loads in
        # well under a second, where parsing the GGUF takes seconds
        cached = _gguf_cache_path(name if name != "default" else "SmolLM2-135M-Instruct",
                                  Path(resolved.path) / resolved.gguf_file)
        if (cached / "tokenizer_config.json").is_file():
            return tf.AutoTokenizer.from_pretrained(str(cached), **kw)
        kw["gguf_file"] = resolved.gguf_file
    return tf.AutoTokenizer.from_pretrained(resolved.path, **kw)
