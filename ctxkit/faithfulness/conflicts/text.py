"""Words, numbers and sentences of a text: the lexical layer of conflict detection (no models).

Stop words, negation words, opposite relation words (``before`` / ``after``), month and number
words, the date / number / identifier / word regexes, light normalisation and stemming
(:func:`content_words`), and :func:`split_chunks` (sentences packed into chunks).
"""

from __future__ import annotations

import re

__all__ = ["OPPOSITES", "content_words", "split_chunks"]

_STOP = frozenset(
    """a an the and or but if of at by for with about against between into through during before
    after above below to from up down in out on off over under again further then once here there
    when where why how all any both each few more most other some such only own same so than too
    very can will just should now is are was were be been being have has had having do does did
    doing would could might must shall may i me my we our you your he him his she her it its they
    them their what which who whom this that these those am as until while also per via one's
    what's who's which whose yes s t name named called known located""".split()  # noqa: SIM905
)
_NEGATION = frozenset(
    "not no never none nobody nothing neither nor without cannot can't don't doesn't didn't isn't "  # noqa: SIM905
    "wasn't aren't weren't won't wouldn't hasn't haven't hadn't false untrue".split()
)
# Relation words whose swap states the opposite on an otherwise matching sentence (both directions).
_OPPOSITE_PAIRS = (
    "before after", "earlier later", "more less", "more fewer", "most least", "higher lower",
    "highest lowest", "larger smaller", "largest smallest", "bigger smaller", "biggest smallest",
    "longer shorter", "longest shortest", "taller shorter", "tallest shortest", "older younger",
    "oldest youngest", "greater smaller", "greatest smallest", "heavier lighter", "faster slower",
    "fastest slowest", "wider narrower", "warmer colder", "hotter colder", "better worse",
    "best worst", "above below", "north south", "east west", "northern southern",
    "eastern western", "northernmost southernmost", "easternmost westernmost", "maximum minimum",
    "majority minority", "inside outside", "increase decrease", "increased decreased",
    "increases decreases", "increasing decreasing", "rise fall", "rose fell", "rising falling",
    "won lost", "win lose", "wins loses", "gained lost", "first last", "true false",
    "legal illegal", "accepted rejected", "approved rejected", "success failure",
    "successful unsuccessful", "positive negative", "import export", "imported exported",
    "imports exports", "bought sold", "buy sell", "alive dead", "supported opposed",
    "supports opposes", "allowed banned", "allowed forbidden", "include exclude",
    "included excluded", "open closed", "opened closed", "start end", "started ended",
    "beginning end", "upstream downstream", "ancient modern", "private public",
)
OPPOSITES: dict[str, frozenset[str]] = {}
"""Relation word -> the words that state its opposite (both directions of ``_OPPOSITE_PAIRS``)."""
for _pair in _OPPOSITE_PAIRS:
    _a, _b = _pair.split()
    OPPOSITES[_a] = OPPOSITES.get(_a, frozenset()) | {_b}
    OPPOSITES[_b] = OPPOSITES.get(_b, frozenset()) | {_a}

_MONTHS = (  # noqa: SIM905
    "january february march april may june july august september october november december "
    "jan feb mar apr jun jul aug sep sept oct nov dec"
).split()
_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "  # noqa: SIM905
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety "
    "hundred thousand million billion trillion dozen half first second third fourth fifth sixth "
    "seventh eighth ninth tenth".split()
)
_CAP_CONNECT = frozenset("of the de du la le von van der da di del and & for on".split())  # noqa: SIM905
_SENT_START_SKIP = frozenset(
    "the a an in on at it its this that these those there he she they we i his her their after "  # noqa: SIM905
    "before during when while however although though since as by for from with to of".split()
)

_MONTH_RE = r"(?:" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DATE_RE = re.compile(
    rf"\b(?:\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH_RE}(?:,?\s+\d{{3,4}})?"
    rf"|{_MONTH_RE}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{3,4}})?"
    rf"|{_MONTH_RE}\s+\d{{4}}"
    r"|\d{1,2}(?:st|nd|rd|th)\s+century"
    r"|(?:1[0-9]|20)\d{2}s?"
    rf"|{_MONTH_RE}(?=\W|$))",
    re.IGNORECASE,
)
_NUM_RE = re.compile(
    r"(?<![\w.])[$€£]?\d+(?:[.,]\d+)*(?:\s?(?:%|percent|per cent))?(?![\w])"
    r"|\b(?:" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)
_IDENT = re.compile(r"^(?!\d+(?:st|nd|rd|th|s)?$)(?=[\w\-]*[A-Za-z])(?=[\w\-]*(?:\d|[a-z][A-Z]))[\w\-]{3,}$")
_WORD_RE = re.compile(r"[^\W\d_][\w'’\-]*|\d+(?:[.,]\d+)*")  # any script: "γδ T cells"


def _norm(text: str) -> str:
    text = text.lower().replace("’", "'")
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    text = re.sub(r"[^\w\s%]", " ", text)
    return " ".join(text.split())


def _stem(w: str) -> str:
    w = w.lower().replace("’", "'")
    for suf in ("'s", "ies", "es", "s"):
        if len(w) > 4 and w.endswith(suf):
            return w[: -len(suf)] + ("y" if suf == "ies" else "")
    return w


def content_words(text: str) -> set[str]:
    """Lower-cased, lightly stemmed words of ``text`` without stop words."""
    return {_stem(w) for w in _WORD_RE.findall(text) if w.lower() not in _STOP and len(w) > 1}


def _numbers(text: str) -> set[str]:
    out = set()
    for m in _NUM_RE.finditer(text):
        s = m.group(0).lower().replace(",", "").replace("$", "").replace("€", "").replace("£", "")
        s = re.sub(r"\s?(%|percent|per cent)$", "", s).strip()
        out.add(s)
    return out

def _has_negation(text: str) -> bool:
    return any(w.lower() in _NEGATION or w.lower().endswith("n't") for w in re.findall(r"[\w']+", text))


def _opposite(belief: str, chunk: str) -> tuple[str, str] | None:
    """A relation word of ``belief`` whose opposite ``chunk`` uses instead, e.g. ("before", "after")."""
    bw = set(re.findall(r"[a-z]+", belief.lower()))
    cw = set(re.findall(r"[a-z]+", chunk.lower()))
    for w in sorted(bw & OPPOSITES.keys()):
        if w in cw:
            continue
        for o in sorted(OPPOSITES[w]):
            if o in cw and o not in bw:
                return w, o
    return None


def split_chunks(text: str, max_words: int = 20) -> list[str]:
    """Split ``text`` into sentences and pack them greedily into chunks of about ``max_words``.

    Sentences are never split and chunks never overlap; a sentence longer than ``max_words``
    is a chunk of its own. Never returns an empty chunk. ``max_words <= 0`` gives one chunk per
    sentence.
    """
    from ...retrievers.chunking import split_sentences

    chunks: list[str] = []
    cur: list[str] = []
    n = 0
    for sent in split_sentences(text):
        w = len(sent.split())
        if cur and (max_words <= 0 or n + w > max_words):
            chunks.append(" ".join(cur))
            cur, n = [], 0
        cur.append(sent)
        n += w
    if cur:
        chunks.append(" ".join(cur))
    return [c for c in chunks if c.strip()]
