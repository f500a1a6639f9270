"""Typed values of a text: entities, numbers, dates and the candidate values of a chunk.

:func:`extract_spans` finds dates, numbers and capitalised entity spans; :func:`span_kind` types
a short value such as an answer. The private helpers give the candidate values a chunk offers in
place of a believed value: runs of listed entities, content terms and phrases of about the
answer's length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .text import (
    _CAP_CONNECT,
    _DATE_RE,
    _IDENT,
    _MONTHS,
    _NUM_RE,
    _NUMBER_WORDS,
    _SENT_START_SKIP,
    _STOP,
    _WORD_RE,
)

__all__ = ["Span", "SpanKind", "extract_spans", "span_kind"]


SpanKind = Literal["entity", "number", "date", "other"]


@dataclass(frozen=True)
class Span:
    """A typed piece of text (an entity, a number, a date, or a content term)."""

    text: str
    kind: SpanKind
    start: int = 0
    end: int = 0


def span_kind(text: str) -> SpanKind:
    """The type of a short value such as an answer: date, number, entity or other."""
    t = text.strip()
    if not t:
        return "other"
    m = _DATE_RE.search(t)
    if m and len(m.group(0)) >= 0.5 * len(t):
        return "date"
    matches = [m.group(0) for m in _NUM_RE.finditer(t)]
    if any(re.search(r"\d", x) for x in matches) and (
        sum(map(len, matches)) >= 0.4 * len(t.replace(" ", "")) or re.match(r"[$€£~]?\d", t)
    ):
        return "number"
    if all(w.lower() in _NUMBER_WORDS for w in t.split()):
        return "number"
    words = [w for w in _WORD_RE.findall(t) if w.lower() not in _CAP_CONNECT]
    if any(_IDENT.match(w) for w in t.split()):
        return "entity"
    if words and sum(w[0].isupper() for w in words) >= max(1, len(words) // 2 + len(words) % 2):
        return "entity"
    return "other"


def extract_spans(text: str) -> list[Span]:
    """Dates, numbers and capitalised entity spans of ``text``, in order, without overlaps."""
    spans: list[Span] = []
    taken: list[tuple[int, int]] = []

    def free(a: int, b: int) -> bool:
        return all(b <= s or a >= e for s, e in taken)

    for m in _DATE_RE.finditer(text):
        spans.append(Span(m.group(0), "date", m.start(), m.end()))
        taken.append((m.start(), m.end()))
    for m in _NUM_RE.finditer(text):
        word = m.group(0)
        if word[:1].isupper() and re.match(r"\s+[A-Z]", text[m.end():]):
            continue  # a capitalised number word opens a name: "Seven Years' War", "Three Gorges"
        if free(m.start(), m.end()):
            spans.append(Span(m.group(0), "number", m.start(), m.end()))
            taken.append((m.start(), m.end()))
    tokens = list(re.finditer(r"[\w'’\-]+|[^\w\s]", text))
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        w = tok.group(0)
        sentence_start = i == 0 or tokens[i - 1].group(0) in {".", "!", "?", ":", ";", '"', "("}
        if _IDENT.match(w) and free(tok.start(), tok.end()):
            # product / model / code names: "bge-m3", "all-MiniLM-L6-v2", "iPhone"
            spans.append(Span(w, "entity", tok.start(), tok.end()))
            taken.append((tok.start(), tok.end()))
            i += 1
        elif w[:1].isupper() and not (sentence_start and w.lower() in _SENT_START_SKIP) and w.lower() not in _MONTHS:
            j = i + 1
            last = i
            while j < len(tokens):
                wj = tokens[j].group(0)
                if wj[:1].isupper() and wj.lower() not in _MONTHS:
                    last = j
                    j += 1
                elif wj.lower() in _CAP_CONNECT and j + 1 < len(tokens) and tokens[j + 1].group(0)[:1].isupper():
                    j += 1
                else:
                    break
            a, b = tok.start(), tokens[last].end()
            if free(a, b) and not (last == i and w.lower() in _STOP):
                spans.append(Span(text[a:b], "entity", a, b))
                taken.append((a, b))
            i = last + 1
        else:
            i += 1
    spans.sort(key=lambda s: s.start)
    return spans



def _entity_lists(text: str, spans: list[Span]) -> list[str]:
    """Runs of entities joined by commas / "and" / "or", with a trailing head noun when there
    is one: "Ming, Qing, and Yuan dynasties" (a listed value is substituted as a whole)."""
    ents = [s for s in spans if s.kind == "entity"]
    out = []
    i = 0
    while i < len(ents):
        j = i
        while j + 1 < len(ents) and re.fullmatch(r"\s*(?:,|,?\s+(?:and|or|as well as|&))\s*", text[ents[j].end:ents[j + 1].start]):
            j += 1
        if j > i:
            end = ents[j].end
            head = re.match(r"\s+([a-z]{3,}s)\b", text[end:])
            if head and head.group(1) not in _STOP:
                end += head.end()
            out.append(text[ents[i].start:end])
        i = j + 1
    return out


def _phrases(text: str, n_words: int) -> list[str]:
    """Word n-grams of about ``n_words`` words (one fewer to one more, at most 6) that neither
    start nor end with a stop word and do not cross punctuation."""
    out = []
    for part in re.split(r"[.,;:!?()\[\]\"]", text):
        words = part.split()
        for n in range(max(2, n_words - 1), min(6, n_words + 1) + 1):
            for i in range(len(words) - n + 1):
                g = words[i:i + n]
                if g[0].lower() not in _STOP and g[-1].lower() not in _STOP:
                    out.append(" ".join(g))
    return out


def _other_terms(text: str) -> list[str]:
    words = [w for w in _WORD_RE.findall(text) if w.lower() not in _STOP and len(w) > 2 and not w[0].isdigit()]
    return list(dict.fromkeys(words))
