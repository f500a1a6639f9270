"""Sentence splitting and sentence-aware chunking (pure Python, no dependencies).

:func:`split_sentences` is a robust regex splitter (abbreviations, initials, decimals, URLs,
blank lines); :func:`chunk_text` packs whole sentences greedily into chunks of at most ``size``
units (words, characters or tokens) with ``overlap`` units of trailing sentences repeated at the
start of the next chunk. Neither ever returns an empty item.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from ..errors import ConfigError

__all__ = ["chunk_text", "length_function", "split_sentences"]

# Words after which a period does not end a sentence (lower-cased, without the period).
_ABBREVIATIONS = frozenset(
    ["mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "etc", "al", "approx", "dept", "est", "fig", "figs", "eq", "eqs", "no", "nos", "vol", "vols", "ch", "chap", "sec", "secs", "pp", "p", "ed", "eds", "rev", "gen", "col", "lt", "sgt", "capt", "cmdr", "adm", "gov", "sen", "rep", "pres", "inc", "ltd", "co", "corp", "bros", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon", "tue", "wed", "thu", "fri", "sat", "sun", "ca", "cf", "ibid", "op", "e.g", "i.e", "e", "g", "i", "u.s", "u.k", "a.m", "p.m", "ph.d", "b.sc", "m.sc", "n.b", "viz", "resp"]
)

# A candidate boundary: end punctuation (plus closing quotes/brackets), then whitespace.
_BOUNDARY = re.compile(r"""([.!?…]+["'”’)\]]*)(\s+)""")
_PARAGRAPH = re.compile(r"\n\s*\n")
_WORD = re.compile(r"\S+")


def _is_abbreviation(before: str) -> bool:
    """True when the text ending at a period looks like an abbreviation or an initial."""
    m = re.search(r"(\S+)$", before)
    if not m:
        return False
    token = m.group(1).lstrip("(\"'“‘[").lower()
    if token in _ABBREVIATIONS:
        return True
    if len(token) == 1 and token.isalpha():  # an initial: "J. R. R. Tolkien"
        return True
    return re.fullmatch(r"(?:[a-z]\.)+[a-z]", token) is not None  # "e.g", "u.s.a"


def _split_paragraph(par: str) -> list[str]:
    out: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(par):
        punct = m.group(1)
        end = m.end(1)
        nxt = par[m.end() : m.end() + 1]
        if punct.startswith(".") and len(punct.rstrip("\"'”’)]")) == 1:
            if _is_abbreviation(par[start : m.start(1)]):
                continue
            # "3. 5" or "v. 2" style continuations: a lowercase or digit start is rarely a sentence
            if nxt and (nxt.islower() or nxt.isdigit()):
                continue
        elif nxt and nxt.islower() and not punct.startswith(("!", "?", "…")):
            continue
        piece = par[start:end].strip()
        if piece:
            out.append(piece)
        start = m.end()
    tail = par[start:].strip()
    if tail:
        out.append(tail)
    return out


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences.

    Handles abbreviations ("Dr.", "e.g.", "U.S."), initials, decimals ("3.14" has no space so is
    never split), ellipses, closing quotes and brackets. Blank lines always end a sentence; a
    single newline ends one only after end punctuation or when the next line starts a list item
    or heading. Whitespace inside a sentence is collapsed.

    Args:
        text: Any text (an empty or blank text gives ``[]``).

    Returns:
        Non-empty, stripped sentences in order.
    """
    if not isinstance(text, str):
        raise TypeError(f"split_sentences expects a string, got {type(text).__name__}")
    sentences: list[str] = []
    for par in _PARAGRAPH.split(text):
        # Lines that look like headings or list items stand on their own.
        lines = par.split("\n")
        block: list[str] = []
        blocks: list[str] = []
        for line in lines:
            if re.match(r"\s*(#{1,6}\s|[-*+•]\s|\d+[.)]\s|>\s)", line) and block:
                blocks.append("\n".join(block))
                block = []
            block.append(line)
            if re.match(r"\s*#{1,6}\s", line):
                blocks.append("\n".join(block))
                block = []
        if block:
            blocks.append("\n".join(block))
        for b in blocks:
            for s in _split_paragraph(b):
                s = re.sub(r"\s+", " ", s).strip()
                if s:
                    sentences.append(s)
    return sentences


Unit = Literal["words", "chars", "tokens"]


def length_function(unit: Unit = "words", tokenizer: Any = None) -> Callable[[str], int]:
    """The function that measures a text in ``unit``.

    Args:
        unit: ``"words"`` (whitespace-separated), ``"chars"`` or ``"tokens"``.
        tokenizer: For ``"tokens"``: a Hugging Face tokenizer (its ``encode`` without special
            tokens is used) or any callable returning a sequence of tokens.
    """
    if unit == "words":
        return lambda s: len(s.split())
    if unit == "chars":
        return len
    if unit == "tokens":
        if tokenizer is None:
            raise ConfigError(
                "chunk_text: unit='tokens' needs a tokenizer (a Hugging Face tokenizer or a "
                "callable text -> tokens); or use unit='words'"
            )
        if hasattr(tokenizer, "encode"):
            return lambda s: len(tokenizer.encode(s, add_special_tokens=False))
        if callable(tokenizer):
            return lambda s: len(tokenizer(s))
        raise ConfigError(f"chunk_text: tokenizer must be callable or have .encode, got {tokenizer!r}")
    raise ConfigError(f"chunk_text: unknown unit {unit!r}; use 'words', 'chars' or 'tokens'")


def _split_long(sentence: str, size: int, length: Callable[[str], int]) -> list[str]:
    """Split one over-long sentence on word boundaries into pieces of at most ``size``.

    A single word longer than ``size`` becomes its own piece (never cut inside a word, except
    for ``chars`` units where such a word is cut hard).
    """
    pieces: list[str] = []
    current: list[str] = []
    for word in _WORD.findall(sentence):
        candidate = " ".join([*current, word])
        if current and length(candidate) > size:
            pieces.append(" ".join(current))
            current = [word]
        else:
            current.append(word)
        if len(current) == 1 and length(word) > size and length is len:
            for i in range(0, len(word), size):
                pieces.append(word[i : i + size])
            current = []
    if current:
        pieces.append(" ".join(current))
    return [p for p in pieces if p.strip()]


def chunk_text(
    text: str,
    size: int = 160,
    overlap: int = 30,
    unit: Unit = "words",
    *,
    tokenizer: Any = None,
) -> list[str]:
    """Pack whole sentences greedily into chunks of at most ``size`` units.

    Each chunk after the first starts with the trailing sentences of the previous chunk that fit
    in ``overlap`` units (so context is not lost at the boundary). A sentence longer than
    ``size`` is split on word boundaries. Empty or blank text gives ``[]``; no chunk is empty.

    Args:
        text: The document text.
        size: Maximum chunk length in ``unit`` (> 0).
        overlap: Units of trailing sentences repeated in the next chunk (0 <= overlap < size).
        unit: ``"words"``, ``"chars"`` or ``"tokens"`` (the latter needs ``tokenizer``).
        tokenizer: See :func:`length_function`.

    Returns:
        The chunks, in document order.

    Raises:
        ConfigError: ``size``/``overlap`` out of range or an unknown unit.
    """
    if size < 1:
        raise ConfigError(f"chunk_text: size must be >= 1, got {size}")
    if overlap < 0 or overlap >= size:
        raise ConfigError(f"chunk_text: overlap must be in [0, size), got overlap={overlap}, size={size}")
    length = length_function(unit, tokenizer)
    units: list[str] = []
    for sentence in split_sentences(text):
        if length(sentence) > size:
            units.extend(_split_long(sentence, size, length))
        else:
            units.append(sentence)

    chunks: list[str] = []
    current: list[str] = []
    n_new = 0  # sentences in ``current`` that are not overlap from the previous chunk
    for sent in units:
        if current and length(" ".join([*current, sent])) > size:
            if n_new:
                chunks.append(" ".join(current))
            tail: list[str] = []
            if overlap:
                for prev in reversed(current):
                    if length(" ".join([prev, *tail])) > overlap:
                        break
                    tail.insert(0, prev)
            # Drop overlap sentences until the new sentence fits.
            while tail and length(" ".join([*tail, sent])) > size:
                tail.pop(0)
            current = tail
            n_new = 0
        current.append(sent)
        n_new += 1
    if current and n_new:
        chunks.append(" ".join(current))
    return [c for c in chunks if c.strip()]
