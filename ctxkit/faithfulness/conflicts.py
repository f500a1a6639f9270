"""Conflict records without an LLM: where does the context disagree with what we believe?

A *belief* is a statement from a trusted source (a knowledge base, a previous answer, "question +
known answer", or the model's own self-facts). :class:`ConflictDetector` finds the context
sentences that talk about the same thing as a belief but state a different value, and explains
the disagreement as a :class:`~ctxkit.types.Conflict` (kind ``entity``, ``number``, ``date``,
``negation``, ``opposite`` or ``other``, with the two differing spans).

How a (belief, sentence) pair is scored:

* **relevance**: the sentence is about the belief's subject. A mix of embedding cosine between
  the sentence and the belief's *topic* (the belief without its answer) and the share of the
  topic's content words found in the sentence.
* **mismatch**: the sentence lacks the believed value and holds a different value of the same
  type where it would go: another number, another date, or another entity / term that is
  semantically close to the believed one (a substituted value comes from the same category:
  a country for a country, a state for a state). Candidates are the chunk's entities, runs of
  listed entities ("Ming, Qing, and Yuan dynasties"), its content words and, for a phrase
  answer, its phrases of about the answer's length. A flipped negation on an otherwise matching
  sentence is a ``negation`` conflict, an opposite relation word (``before`` for ``after``,
  ``larger`` for ``smaller``, ``increased`` for ``decreased``) an ``opposite`` conflict; a
  flipped negation *and* an opposite word ("not shorter" / "longer") cancel out.

* **answer-aware ranking features** (``DEFAULT_WEIGHTS``): cosine of the sentence with the
  believed *answer* alone (a sentence holding a substitute of the same category looks like the
  answer, even when it is about a bridge entity the question never names) and the share of the
  answer's own words in a sentence lacking the full answer ("County" of "Hancock County").
  Also computed, off by default: an idf-weighted question-word overlap, the neighbours' overlap
  and "states the believed value".

The ranking score is ``relevance + mismatch_weight * mismatch + sum(weights[f] * f)`` (weights
fitted on the dev split of ``benchmarks/conflicts.py``); a pair is flagged as a conflict
when ``mismatch >= threshold`` and ``relevance >= min_relevance``. All texts of a batch (topics,
sentences, candidate spans) are embedded in one encoder call; similarities are matrix products.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ConfigError, InputError
from ..pipeline import BaseStage
from ..types import Conflict, ContextState, Passage

__all__ = [
    "DEFAULT_WEIGHTS",
    "Belief",
    "Span",
    "Candidate",
    "ConflictDetector",
    "ConflictCheck",
    "extract_spans",
    "span_kind",
    "content_words",
    "split_chunks",
    "format_conflicts",
]

# --------------------------------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------------------------------
_STOP = frozenset(
    """a an the and or but if of at by for with about against between into through during before
    after above below to from up down in out on off over under again further then once here there
    when where why how all any both each few more most other some such only own same so than too
    very can will just should now is are was were be been being have has had having do does did
    doing would could might must shall may i me my we our you your he him his she her it its they
    them their what which who whom this that these those am as until while also per via one's
    what's who's which whose yes s t name named called known located""".split()
)
_NEGATION = frozenset(
    "not no never none nobody nothing neither nor without cannot can't don't doesn't didn't isn't "
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
_OPPOSITE: dict[str, frozenset[str]] = {}
for _pair in _OPPOSITE_PAIRS:
    _a, _b = _pair.split()
    _OPPOSITE[_a] = _OPPOSITE.get(_a, frozenset()) | {_b}
    _OPPOSITE[_b] = _OPPOSITE.get(_b, frozenset()) | {_a}

_MONTHS = (
    "january february march april may june july august september october november december "
    "jan feb mar apr jun jul aug sep sept oct nov dec"
).split()
_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety "
    "hundred thousand million billion trillion dozen half first second third fourth fifth sixth "
    "seventh eighth ninth tenth".split()
)
_CAP_CONNECT = frozenset("of the de du la le von van der da di del and & for on".split())
_SENT_START_SKIP = frozenset(
    "the a an in on at it its this that these those there he she they we i his her their after "
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


def _has_negation(text: str) -> bool:
    return any(w.lower() in _NEGATION or w.lower().endswith("n't") for w in re.findall(r"[\w']+", text))


def _opposite(belief: str, chunk: str) -> tuple[str, str] | None:
    """A relation word of ``belief`` whose opposite ``chunk`` uses instead, e.g. ("before", "after")."""
    bw = set(re.findall(r"[a-z]+", belief.lower()))
    cw = set(re.findall(r"[a-z]+", chunk.lower()))
    for w in sorted(bw & _OPPOSITE.keys()):
        if w in cw:
            continue
        for o in sorted(_OPPOSITE[w]):
            if o in cw and o not in bw:
                return w, o
    return None


def split_chunks(text: str, max_words: int = 20) -> list[str]:
    """Split ``text`` into sentences and pack them greedily into chunks of about ``max_words``.

    Sentences are never split and chunks never overlap; a sentence longer than ``max_words``
    is a chunk of its own. Never returns an empty chunk. ``max_words <= 0`` gives one chunk per
    sentence.
    """
    from ..retrievers.chunking import split_sentences

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


# --------------------------------------------------------------------------------------------------
# Beliefs and the detector
# --------------------------------------------------------------------------------------------------
class Belief(BaseModel):
    """A trusted statement to check the context against.

    Attributes:
        text: The statement, e.g. ``"The Eiffel Tower was completed in 1889."`` or a question
            followed by its known answer (``"When was the Eiffel Tower completed? 1889"``).
        answer: The value the statement asserts, when known. For ``"question? answer"`` text it
            is taken from after the question mark automatically.
        topic: What the belief is about (the text without its answer); derived when omitted.
        source: Where the belief comes from (``"kb"``, ``"model"``, ``"previous_answer"``...).
    """

    model_config = ConfigDict(extra="forbid")

    text: str
    answer: str | None = None
    topic: str | None = None
    source: str | None = None

    @field_validator("text")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("a belief must be a non-empty statement")
        return v.strip()

    @classmethod
    def coerce(cls, value: Belief | str | dict[str, Any]) -> Belief:
        """Accept a Belief, a plain string, or a dict with the Belief fields."""
        if isinstance(value, Belief):
            b = value
        elif isinstance(value, str):
            b = cls(text=value)
        elif isinstance(value, dict):
            b = cls(**value)
        else:
            raise InputError(
                f"a belief must be a string, a dict or a Belief, got {type(value).__name__}"
            )
        if b.answer is None and "?" in b.text:
            q, _, rest = b.text.rpartition("?")
            if rest.strip() and q.strip():
                b = b.model_copy(update={"answer": rest.strip(" .:-"), "topic": q.strip() + "?"})
        if b.topic is None:
            topic = b.text
            if b.answer and b.answer in topic:
                topic = topic.replace(b.answer, " ").strip()
            b = b.model_copy(update={"topic": " ".join(topic.split()) or b.text})
        return b

    @classmethod
    def from_answer(cls, question: str, answer: str, source: str | None = None) -> Belief:
        """A belief from a question and its known answer."""
        return cls(text=f"{question.strip()} {answer.strip()}", answer=answer.strip(),
                   topic=question.strip(), source=source)


# Weights of the extra ranking features: a conditional logit fitted once on the dev split of
# benchmarks/conflicts.py (first 150 ids of SQuAD-KRE and of MuSiQue-KRE, alpha fixed at 0.3).
# lex_idf, context and has_value did not help on dev (see the ablation in benchmarks/README.md)
# and are off by default; they stay computed and can be switched on with ``weights``.
DEFAULT_WEIGHTS: dict[str, float] = {
    "lex_idf": 0.0,
    "context": 0.0,
    "answer_sim": 0.81,
    "partial_answer": 0.23,
    "has_value": 0.0,
}
DEFAULT_MISMATCH_WEIGHT = 0.55


@dataclass
class Candidate:
    """A scored (belief, chunk) pair; :class:`ConflictDetector` ranks these."""

    belief: int
    chunk: int
    similarity: float
    relevance: float
    mismatch: float
    kind: str
    belief_span: str | None
    chunk_span: str | None
    rank_score: float
    flagged: bool
    supports: bool = False
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Chunk:
    text: str
    passage_id: str | None


class ConflictDetector:
    """Find context chunks that disagree with beliefs, with no LLM.

    Args:
        embedder: Sentence-embedding model name/path (``"default"``: all-MiniLM-L6-v2).
        device: Device for the embedder (``"auto"``, ``"cpu"``, ``"cuda"``...).
        alpha: Weight of embedding cosine vs. content-word overlap in the relevance score.
        mismatch_weight: Weight of the mismatch score in the ranking score.
        threshold: Minimum mismatch for a flagged conflict.
        min_relevance: Minimum relevance for a flagged conflict (the chunk must be on topic).
        batch_size: Encoder batch size.
        span_candidates: Per belief, the chunks ranked highest before the mismatch whose
            entity/term spans are embedded to measure a mismatch (the others keep
            number/date/negation checks only).
        phrase_candidates: Compare a multi-word, non-entity answer with the chunk's phrases of
            about its length as well as its single words (better spans; costs encoder time).
        weights: Weights of the extra ranking features (keys of ``DEFAULT_WEIGHTS``); given
            keys override the defaults.

    Example:
        >>> det = ConflictDetector()
        >>> det.detect(["The Eiffel Tower was completed in 1889."],
        ...            ["The Eiffel Tower was completed in 1901 for the fair."])[0].kind
        'date'
    """

    def __init__(
        self,
        embedder: str = "default",
        *,
        device: str = "auto",
        alpha: float = 0.3,
        mismatch_weight: float = DEFAULT_MISMATCH_WEIGHT,
        threshold: float = 0.5,
        min_relevance: float = 0.35,
        batch_size: int = 128,
        span_candidates: int = 8,
        phrase_candidates: bool = True,
        weights: dict[str, float] | None = None,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"ConflictDetector: alpha must be in [0, 1], got {alpha}")
        if mismatch_weight < 0:
            raise ConfigError(f"ConflictDetector: mismatch_weight must be >= 0, got {mismatch_weight}")
        self.embedder_name = embedder
        self.device = device
        self.alpha = alpha
        self.mismatch_weight = mismatch_weight
        self.threshold = threshold
        self.min_relevance = min_relevance
        self.batch_size = batch_size
        self.span_candidates = span_candidates
        self.phrase_candidates = phrase_candidates
        w = {**DEFAULT_WEIGHTS, **(weights or {})}
        unknown = set(w) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ConfigError(
                f"ConflictDetector: unknown feature weight(s) {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}"
            )
        self.weights = w
        self._embedder: Any = None

    @property
    def embedder(self) -> Any:
        """The shared :class:`~ctxkit.models.Embedder` (loaded on first use)."""
        if self._embedder is None:
            from ..models import get_embedder

            self._embedder = get_embedder(self.embedder_name, device=self.device)
        return self._embedder

    # -- public API ------------------------------------------------------------------------------
    def detect(
        self,
        beliefs: list[Belief | str | dict[str, Any]],
        context: list[str | Passage] | str,
        *,
        top_k: int | None = None,
        chunk_words: int = 0,
    ) -> list[Conflict]:
        """Conflicts between ``beliefs`` and ``context`` (one query), strongest first.

        Args:
            beliefs: Trusted statements (strings, dicts or :class:`Belief`).
            context: A text, a list of texts, or passages; split into sentences (or chunks of
                ``chunk_words`` words when > 0).
            top_k: Keep at most this many conflicts per belief.
            chunk_words: Greedy chunk size in words; 0 means one chunk per sentence.
        """
        if isinstance(context, str):
            context = [context]
        passages = [
            c if isinstance(c, Passage) else Passage(id=f"p{i}", text=str(c)) for i, c in enumerate(context)
        ]
        return self.detect_batch([beliefs], [passages], top_k=top_k, chunk_words=chunk_words)[0]

    def detect_batch(
        self,
        beliefs: list[list[Belief | str | dict[str, Any]]],
        passages: list[list[Passage]],
        *,
        top_k: int | None = None,
        chunk_words: int = 0,
    ) -> list[list[Conflict]]:
        """:meth:`detect` for many queries at once (one encoder call for the whole batch)."""
        if len(beliefs) != len(passages):
            raise InputError(
                f"detect_batch: {len(beliefs)} belief lists but {len(passages)} passage lists"
            )
        chunks = [
            [_Chunk(c, p.id) for p in ps for c in (split_chunks(p.text, chunk_words) if p.text.strip() else [])]
            for ps in passages
        ]
        bel = [[Belief.coerce(b) for b in bs] for bs in beliefs]
        groups = [[c.passage_id for c in cs] for cs in chunks]
        scored = self._score(bel, [[c.text for c in cs] for cs in chunks], groups)
        out: list[list[Conflict]] = []
        for bs, cs, cands in zip(bel, chunks, scored, strict=True):
            per_belief: dict[int, int] = {}
            records = []
            for c in sorted(cands, key=lambda c: -c.rank_score):
                if not c.flagged:
                    continue
                if top_k is not None and per_belief.get(c.belief, 0) >= top_k:
                    continue
                per_belief[c.belief] = per_belief.get(c.belief, 0) + 1
                records.append(
                    Conflict(
                        belief=bs[c.belief].text,
                        chunk=cs[c.chunk].text,
                        passage_id=cs[c.chunk].passage_id,
                        similarity=round(c.similarity, 4),
                        kind=c.kind,  # type: ignore[arg-type]
                        score=round(self._conflict_score(c), 4),
                        belief_span=c.belief_span,
                        chunk_span=c.chunk_span,
                    )
                )
            records.sort(key=lambda r: -r.score)
            out.append(records)
        return out

    def rank(
        self, beliefs: list[list[Belief | str | dict[str, Any]]], chunks: list[list[str]]
    ) -> list[list[Candidate]]:
        """Score every (belief, chunk) pair of each query; candidates sorted best first.

        This is the low-level entry used by benchmarks: ``chunks`` are given as already split
        texts.
        """
        bel = [[Belief.coerce(b) for b in bs] for bs in beliefs]
        return [sorted(c, key=lambda c: -c.rank_score) for c in self._score(bel, chunks)]

    # -- scoring ---------------------------------------------------------------------------------
    def _conflict_score(self, c: Candidate) -> float:
        return max(0.0, min(1.0, c.mismatch * min(1.0, c.relevance / max(self.min_relevance, 1e-6) * 0.5 + 0.5)))

    def _score(
        self,
        beliefs: list[list[Belief]],
        chunks: list[list[str]],
        groups: list[list[Any]] | None = None,
    ) -> list[list[Candidate]]:
        """Features and scores of every (belief, chunk) pair; ``groups`` marks which chunks are
        neighbours (same passage); by default all chunks of a query are one text in order."""
        if len(beliefs) != len(chunks):
            raise InputError(f"{len(beliefs)} belief lists but {len(chunks)} chunk lists")
        import numpy as np

        # Phase 1: one encoder call for the topics, believed values and chunks of the whole batch.
        texts: dict[str, int] = {}

        def idx(t: str) -> int:
            if t not in texts:
                texts[t] = len(texts)
            return texts[t]

        key_spans: list[list[list[Span]]] = []
        for bs, cs in zip(beliefs, chunks, strict=True):
            ks_q = []
            for b in bs:
                idx(b.topic or b.text)
                ks = [Span(b.answer, span_kind(b.answer))] if b.answer else extract_spans(b.text)
                for k in ks:
                    if k.kind in ("entity", "other") or b.answer:
                        idx(k.text)
                ks_q.append(ks)
            key_spans.append(ks_q)
            for c in cs:
                idx(c)
        if not texts:
            return [[] for _ in beliefs]
        emb = np.asarray(self.embedder.encode(list(texts), batch_size=self.batch_size), dtype=np.float32)

        pending: list[tuple[int, int, int, Span]] = []  # (query, belief, chunk, key) needing spans
        rows: list[dict[str, Any]] = []
        for qi, (bs, cs, ks_q) in enumerate(zip(beliefs, chunks, key_spans, strict=True)):
            row: dict[str, Any] = {"pairs": {}}
            rows.append(row)
            if not bs or not cs:
                continue
            cvec = emb[[texts[c] for c in cs]]
            sims = emb[[texts[b.topic or b.text] for b in bs]] @ cvec.T
            row["spans"] = [extract_spans(c) for c in cs]
            words = [content_words(c) for c in cs]
            norms = [f" {_norm(c)} " for c in cs]
            nums = [_numbers(c) for c in cs]
            # BM25-style idf from the query's own chunks: a word in every chunk locates nothing
            df: dict[str, int] = {}
            for ws in words:
                for w in ws:
                    df[w] = df.get(w, 0) + 1
            n_c = len(cs)
            grp = groups[qi] if groups is not None else [0] * n_c
            for bi, (b, ks) in enumerate(zip(bs, ks_q, strict=True)):
                topic = b.topic or b.text
                topic_words = content_words(topic)
                if not b.answer:  # a plain statement: its values are not part of its topic
                    topic_words -= {w for k in ks if k.kind in ("number", "date") for w in content_words(k.text)}
                idf = {w: float(np.log1p((n_c - df.get(w, 0) + 0.5) / (df.get(w, 0) + 0.5))) for w in topic_words}
                idf_total = sum(idf.values()) or 1.0
                ans_words = content_words(b.answer) - topic_words if b.answer else set()
                ans_sims = emb[texts[b.answer]] @ cvec.T if b.answer else np.zeros(n_c, np.float32)
                for ci in range(n_c):
                    sim = float(sims[bi, ci])
                    shared = topic_words & words[ci]
                    lex = len(shared) / max(len(topic_words), 1)
                    lex_idf = sum(idf[w] for w in shared) / idf_total
                    absent = [k for k in ks if not self._present(k, norms[ci], nums[ci], words[ci])]
                    partial = len(ans_words & words[ci]) / len(ans_words) if ans_words and absent else 0.0
                    rel = self.alpha * sim + (1 - self.alpha) * lex
                    row["pairs"][bi, ci] = {
                        "sim": sim, "lex": lex, "lex_idf": lex_idf, "rel": rel, "absent": absent,
                        "answer_sim": float(ans_sims[ci]), "partial_answer": partial,
                        "has_value": float(bool(ks) and not absent), "best": (0.0, "other", None, None),
                    }
                # neighbour context: a sentence's subject is often named in the one before it
                lexes = [row["pairs"][bi, ci]["lex_idf"] for ci in range(n_c)]
                for ci in range(n_c):
                    nb = [lexes[j] for j in (ci - 1, ci + 1) if 0 <= j < n_c and grp[j] == grp[ci]]
                    row["pairs"][bi, ci]["context"] = max(nb, default=0.0)
                # Spans are embedded only for the chunks ranked highest before the mismatch
                # (the rest cannot rank high).
                pre = [
                    pr["rel"] + sum(w * pr[f] for f, w in self.weights.items())
                    for pr in (row["pairs"][bi, ci] for ci in range(n_c))
                ]
                for ci in sorted(range(n_c), key=lambda i: -pre[i])[: self.span_candidates]:
                    for k in row["pairs"][bi, ci]["absent"]:
                        if k.kind in ("entity", "other"):
                            pending.append((qi, bi, ci, k))
        # Phase 2: candidate values of the same category as the believed value (one encoder call).
        pools: dict[tuple[int, int, int, str], list[str]] = {}
        for qi, bi, ci, k in pending:
            b = beliefs[qi][bi]
            topic_norm = f" {_norm(b.topic or b.text)} "
            topic_words = content_words(b.topic or b.text)
            phrases: set[str] = set()
            if k.kind == "entity":
                pool = [sp.text for sp in rows[qi]["spans"][ci] if sp.kind == "entity"]
                pool += _entity_lists(chunks[qi][ci], rows[qi]["spans"][ci])
            else:
                pool = _other_terms(chunks[qi][ci])
                if self.phrase_candidates and len(content_words(k.text)) > 1:  # a phrase for a phrase
                    found = _phrases(chunks[qi][ci], len(_norm(k.text).split()))
                    phrases = set(found)
                    pool += found
            # A value named in the belief's topic is its subject, not a substitute for its value;
            # nor is a name or phrase built on the subject's words ("Gustave Eiffel's" for a
            # belief about the Eiffel Tower).
            subject = topic_words - content_words(k.text)
            key_norm = _norm(k.text)
            kept = []
            for t in dict.fromkeys(pool):
                words, norm = content_words(t), _norm(t)
                if f" {norm} " in topic_norm or words <= topic_words or norm == key_norm:
                    continue
                if (k.kind == "entity" or t in phrases) and words & subject:
                    continue
                kept.append(t)
            pool = kept
            pools[qi, bi, ci, k.text] = pool
            for t in pool:
                idx(t)
        if len(texts) > len(emb):
            new = list(texts)[len(emb):]
            emb = np.concatenate(
                [emb, np.asarray(self.embedder.encode(new, batch_size=self.batch_size), dtype=np.float32)]
            )

        out: list[list[Candidate]] = []
        for qi, (bs, cs, row) in enumerate(zip(beliefs, chunks, rows, strict=True)):
            cands: list[Candidate] = []
            for (bi, ci), pr in row["pairs"].items():
                b, ks = bs[bi], key_spans[qi][bi]
                best = pr["best"]
                for k in pr["absent"]:
                    if k.kind in ("number", "date"):
                        m, span = self._typed_mismatch(k, row["spans"][ci], f" {_norm(b.topic or b.text)} ")
                    else:
                        pool = pools.get((qi, bi, ci, k.text), [])
                        m, span = 0.0, None
                        if pool:
                            vs = emb[[texts[t] for t in pool]] @ emb[texts[k.text]]
                            # two values of one category (two countries) have cosine ~0.3-0.7
                            ms = np.clip((vs - 0.15) / 0.4, 0.0, 1.0)
                            if _IDENT.match(k.text):  # a code/model name replaced by another one
                                ms = np.maximum(ms, [0.75 if _IDENT.match(t) else 0.0 for t in pool])
                            j = int(np.lexsort((-vs, -ms))[0])  # ties at the clip: most similar
                            m, span = float(ms[j]), pool[j]
                    if m > best[0]:
                        best = (m, k.kind, k.text, span)
                supports = bool(pr["has_value"])
                if not b.answer and len(ks) > 1 and len(pr["absent"]) == len(ks):
                    # nothing of a multi-part statement is in the chunk: probably another subject
                    best = (best[0] * 0.5, *best[1:])
                if best[0] == 0.0 and pr["lex"] >= 0.5:
                    flipped = _has_negation(cs[ci]) != _has_negation(b.text)
                    opposite = _opposite(b.text, cs[ci])
                    if flipped != bool(opposite):  # both at once ("not shorter" / "longer") agree
                        kind_ = "opposite" if opposite else "negation"
                        best = (0.6 if supports else 0.8, kind_, *(opposite or (None, None)))
                        supports = False
                mismatch, kind, bspan, cspan = best
                feats = {
                    "lex_idf": pr["lex_idf"], "context": pr["context"],
                    "answer_sim": pr["answer_sim"], "partial_answer": pr["partial_answer"],
                    "has_value": float(supports),
                }
                rank = pr["rel"] + self.mismatch_weight * mismatch + sum(
                    w * feats[f] for f, w in self.weights.items()
                )
                cands.append(
                    Candidate(
                        belief=bi,
                        chunk=ci,
                        similarity=pr["sim"],
                        relevance=pr["rel"],
                        mismatch=mismatch,
                        kind=kind,
                        belief_span=bspan,
                        chunk_span=cspan,
                        rank_score=rank,
                        flagged=mismatch >= self.threshold and pr["rel"] >= self.min_relevance,
                        supports=supports,
                        info={"lex": pr["lex"], "lex_idf": pr["lex_idf"], "sim": pr["sim"], "features": feats},
                    )
                )
            # A context that states the believed value where it is most on topic does not
            # contradict it in a less relevant place: only chunks more on topic than the best
            # supporting chunk can be flagged.
            support: dict[int, float] = {}
            for c in cands:
                if c.supports:
                    support[c.belief] = max(support.get(c.belief, -1.0), c.relevance)
            for c in cands:
                if c.flagged and c.relevance <= support.get(c.belief, -1.0):
                    c.flagged = False
                    c.info["outweighed_by_support"] = True
            out.append(cands)
        return out

    @staticmethod
    def _typed_mismatch(k: Span, spans: list[Span], belief_norm: str) -> tuple[float, str | None]:
        novel = [s for s in spans if f" {_norm(s.text)} " not in belief_norm]
        same = [s for s in novel if s.kind == k.kind]
        if same:
            return 1.0, same[0].text
        other = [s for s in novel if s.kind in ("number", "date")]
        return (0.6, other[0].text) if other else (0.0, None)

    @staticmethod
    def _present(k: Span, chunk_norm: str, chunk_nums: set[str], chunk_words: set[str]) -> bool:
        if k.kind == "number":
            nums = _numbers(k.text)
            if nums:
                return nums <= chunk_nums
        tokens = _norm(k.text).split()
        if not tokens:
            return True
        roman = {t for t in tokens[1:] if re.fullmatch(r"[ivxlcdm]+", t)}  # "World War I"
        while len(tokens) > 1 and tokens[0] in _STOP:  # "at the right bank" ~ "on the right bank"
            tokens = tokens[1:]
        while len(tokens) > 1 and tokens[-1] in _STOP and tokens[-1] not in roman:
            tokens = tokens[:-1]
        if f" {' '.join(tokens)} " in chunk_norm:
            return True
        # Paraphrased word order counts, but a short token ("World War I" vs "II", "5" vs "50")
        # must be there as a word.
        short = {t for t in tokens if len(t) <= 2 and t not in _STOP} | roman
        words = content_words(k.text)
        return bool(words) and words <= chunk_words and short <= set(chunk_norm.split())


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


def format_conflicts(conflicts: list[Conflict], max_items: int = 5) -> str:
    """A short prompt section listing conflicts, e.g. to warn the generator (empty if none)."""
    if not conflicts:
        return ""
    lines = ["Note: the context disagrees with known facts in these places:"]
    for c in conflicts[:max_items]:
        what = f" ({c.belief_span!r} vs {c.chunk_span!r})" if c.belief_span or c.chunk_span else ""
        lines.append(f"- [{c.kind}] context: \"{c.chunk}\" vs known: \"{c.belief}\"{what}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------
class ConflictCheck(BaseStage):
    """Record where each query's passages contradict trusted beliefs (no LLM needed).

    Beliefs come from, in order of ``beliefs_from="auto"``: the ``beliefs`` setting, then
    ``state.metadata["beliefs"]`` (strings, dicts or :class:`Belief`), then ``state.facts``
    (e.g. the model's self-facts from :class:`~ctxkit.faithfulness.SelfFacts`).

    Actions on the conflicts found (always written to ``state.conflicts``):
        * ``"annotate"``: also store each passage's strongest conflict score as this stage's score
          and the conflicts in ``passage.metadata["conflicts"]``.
        * ``"filter"``: drop passages with a conflict scoring at least ``filter_threshold``.
        * ``"warn"``: annotate, and put a prompt section listing the conflicts in
          ``state.metadata["conflict_note"]`` (used by :class:`~ctxkit.faithfulness.SelfThinkAnswer`).

    Example:
        >>> stage = ConflictCheck(beliefs=["The Eiffel Tower was completed in 1889."])
        >>> state = ContextState(query="When was the Eiffel Tower completed?",
        ...     passages=[Passage(id="p1", text="The Eiffel Tower was completed in 1901.")])
        >>> stage([state])[0].conflicts[0].kind
        'date'
    """


    beliefs: list[str | dict[str, Any]] = Field(default_factory=list)
    beliefs_from: Literal["auto", "setting", "metadata", "facts"] = "auto"
    embedder: str = "default"
    device: str = "auto"
    chunk_words: int = Field(0, ge=0)
    top_k: int = Field(5, ge=1)
    alpha: float = Field(0.3, ge=0.0, le=1.0)
    mismatch_weight: float = Field(DEFAULT_MISMATCH_WEIGHT, ge=0.0)
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    min_relevance: float = Field(0.35, ge=0.0, le=1.0)
    weights: dict[str, float] | None = None
    action: Literal["annotate", "filter", "warn"] = "annotate"
    filter_threshold: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("weights")
    @classmethod
    def _known_weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and set(v) - set(DEFAULT_WEIGHTS):
            raise ValueError(
                f"unknown feature weight(s) {sorted(set(v) - set(DEFAULT_WEIGHTS))}; known: {sorted(DEFAULT_WEIGHTS)}"
            )
        return v

    def warm_up(self) -> None:
        self._detector = ConflictDetector(
            self.embedder,
            device=self.device,
            alpha=self.alpha,
            mismatch_weight=self.mismatch_weight,
            threshold=self.threshold,
            min_relevance=self.min_relevance,
            weights=self.weights,
        )

    def _beliefs(self, state: ContextState) -> list[Any]:
        order = {
            "auto": ("setting", "metadata", "facts"),
            "setting": ("setting",),
            "metadata": ("metadata",),
            "facts": ("facts",),
        }[self.beliefs_from]
        for src in order:
            if src == "setting" and self.beliefs:
                return list(self.beliefs)
            if src == "metadata" and state.metadata.get("beliefs"):
                value = state.metadata["beliefs"]
                return [value] if isinstance(value, str | dict) else list(value)
            if src == "facts" and state.facts:
                return [Belief(text=f, source="facts") for f in state.facts]
        return []

    def run(self, states: list[ContextState]) -> list[ContextState]:
        """Detect conflicts for the whole batch in one encoder call."""
        beliefs = [self._beliefs(s) for s in states]
        results = self._detector.detect_batch(
            beliefs, [s.passages for s in states], top_k=self.top_k, chunk_words=self.chunk_words
        )
        for state, bs, conflicts in zip(states, beliefs, results, strict=True):
            if not bs:
                state.trace.count("conflicts.no_beliefs")
            state.conflicts = conflicts
            state.trace.count("conflicts.found", len(conflicts))
            by_pid: dict[str | None, list[Conflict]] = {}
            for c in conflicts:
                by_pid.setdefault(c.passage_id, []).append(c)
            for p in state.passages:
                mine = by_pid.get(p.id, [])
                self.set_score(p, max((c.score for c in mine), default=0.0))
                if mine:
                    p.metadata["conflicts"] = [c.model_dump() for c in mine]
            if self.action == "filter":
                keep = [
                    p for p in state.passages
                    if max((c.score for c in by_pid.get(p.id, [])), default=0.0) < self.filter_threshold
                ]
                state.trace.count("conflicts.filtered", len(state.passages) - len(keep))
                state.passages = keep
            elif self.action == "warn":
                note = format_conflicts(conflicts)
                if note:
                    state.metadata["conflict_note"] = note
        return states


def demo_conflicts(verbose: bool = True) -> list[Conflict]:
    """Offline demo: a passage contradicts two trusted beliefs; returns (and prints) the records.

    Uses the packaged MiniLM embedder only (no LLM). Suitable for ``ctxkit quickstart``.
    """
    from ..pipeline import Pipeline

    beliefs = [
        "The Eiffel Tower was completed in 1889.",
        "Who designed the Eiffel Tower? Gustave Eiffel's company",
        "The Eiffel Tower is located in Paris.",
    ]
    state = ContextState(
        query="When was the Eiffel Tower completed?",
        passages=[
            Passage(id="doc1#0", text=(
                "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Lyon. "
                "It was completed in 1901 as the entrance arch of a world's fair. "
                "The tower is 330 metres tall."
            )),
            Passage(id="doc2#0", text="Gustave Eiffel's company designed and built the tower."),
        ],
    )
    out = Pipeline([ConflictCheck(beliefs=beliefs, chunk_words=30, action="warn")]).run(state)
    if verbose:
        print(f"question: {state.query}")
        for c in out.conflicts:
            print(
                f"  conflict [{c.kind}] score={c.score:.2f} sim={c.similarity:.2f} "
                f"{c.belief_span!r} -> {c.chunk_span!r}\n    belief: {c.belief}\n    context ({c.passage_id}): {c.chunk}"
            )
    return out.conflicts
