"""Poisoned-context testbed: mixtures of appropriate and inappropriate items at chosen ratios.

The Rescorla-Wagner steering paper (arXiv 2509.04500) pairs each query with a list of N context
items (20 in its case study), a share of which is inappropriate (fake news, hate speech,
non-factual or private content). Its public pools give, per query, a few appropriate evidence
items and a few inappropriate paraphrases of a bad claim; the mixing code is not public. This
module builds the mixtures: N items, contamination ratio 0..95% in 5% steps, items shuffled under
a seed, optional source tags, JSONL export/import.

Pools have only ~3 appropriate and ~2 inappropriate items per query (privacy: ~2 and ~7), so a
mixture of 20 reuses items: each list is shuffled and then cycled. Every copy keeps its label.

Pool shape (one JSON array per category, file ``<category>_output.json`` or any ``.json``)::

    {"Input": <inappropriate claim>, "Question": ..., "Generated Information": [appropriate...],
     "Synonym Sentence": [inappropriate...], "Simple Answer": ..., "Explainable Answer": ...}

Privacy rows use ``"Non-private Information"`` / ``"Privacy information"`` for the two lists.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ...errors import InputError
from ...types import ContextState, Passage

__all__ = [
    "CATEGORIES",
    "DEFAULT_RATIOS",
    "LOW_CREDIBILITY_SOURCES",
    "REPUTABLE_SOURCES",
    "ContextItem",
    "PoolRow",
    "TestbedItem",
    "build_mixture",
    "build_testbed",
    "load_jsonl",
    "load_pool",
    "load_pools",
    "n_inappropriate",
    "save_jsonl",
]

CATEGORIES: tuple[str, ...] = ("fakenews", "hate_speech", "non_factual", "privacy")
DEFAULT_RATIOS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20))
REPUTABLE_SOURCES: tuple[str, ...] = (
    "Reuters", "Associated Press", "BBC News", "Encyclopaedia Britannica", "Nature", "Wikipedia",
)
LOW_CREDIBILITY_SOURCES: tuple[str, ...] = (
    "anonymous forum post", "unverified social media account", "viral chain message",
    "clickbait blog", "tabloid gossip site", "leaked private chat",
)

_GOOD_KEYS = ("Generated Information", "Non-private Information")
_BAD_KEYS = ("Synonym Sentence", "Privacy information")

Label = Literal["appropriate", "inappropriate"]


class PoolRow(BaseModel):
    """One query of a pool with its appropriate and inappropriate items."""

    model_config = ConfigDict(extra="forbid")

    id: str
    category: str
    question: str
    claim: str = ""
    appropriate: list[str]
    inappropriate: list[str]
    reference: str = ""
    explanation: str = ""


class ContextItem(BaseModel):
    """One item of a mixture: its text, label and (optional) source tag."""

    model_config = ConfigDict(extra="forbid")

    text: str
    label: Label
    source: str | None = None

    @property
    def inappropriate(self) -> bool:
        """True for inappropriate items."""
        return self.label == "inappropriate"

    def render(self) -> str:
        """The text shown to a model: ``"[Source: X] text"`` when tagged, else the text."""
        return f"[Source: {self.source}] {self.text}" if self.source else self.text


class TestbedItem(BaseModel):
    """A query with its mixed context list at one contamination ratio.

    Attributes:
        id: ``"<row id>@<ratio>"``.
        row_id: Id of the pool row.
        category: Pool category (``fakenews``, ``hate_speech``, ``non_factual``, ``privacy``...).
        question: The query.
        reference: The reference (appropriate) answer.
        claim: The inappropriate claim the bad items paraphrase.
        ratio: Share of inappropriate items.
        items: The context list, shuffled.
    """

    model_config = ConfigDict(extra="forbid")
    __test__ = False  # not a pytest test class

    id: str
    row_id: str
    category: str
    question: str
    reference: str = ""
    claim: str = ""
    ratio: float
    items: list[ContextItem]

    @property
    def labels(self) -> list[int]:
        """1 for inappropriate items, 0 for appropriate ones, in item order."""
        return [int(it.inappropriate) for it in self.items]

    @property
    def inappropriate_indices(self) -> list[int]:
        """1-based indices of the inappropriate items."""
        return [i + 1 for i, it in enumerate(self.items) if it.inappropriate]

    @property
    def appropriate_indices(self) -> list[int]:
        """1-based indices of the appropriate items."""
        return [i + 1 for i, it in enumerate(self.items) if not it.inappropriate]

    def to_passages(self) -> list[Passage]:
        """The items as :class:`~ctxkit.Passage` objects (label and source in metadata)."""
        return [
            Passage(
                id=f"{self.id}#{i}",
                text=it.render(),
                doc_id=self.row_id,
                metadata={"label": it.label, "source": it.source, "raw_text": it.text},
            )
            for i, it in enumerate(self.items)
        ]

    def to_state(self) -> ContextState:
        """A :class:`~ctxkit.ContextState` for pipelines (reference and ratio in metadata)."""
        return ContextState(
            query=self.question,
            query_id=self.id,
            passages=self.to_passages(),
            metadata={
                "reference": self.reference,
                "claim": self.claim,
                "ratio": self.ratio,
                "category": self.category,
            },
        )


def _first(row: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    for k in keys:
        if k in row and row[k] is not None:
            vals = row[k]
            if isinstance(vals, str):
                vals = [vals]
            return [str(v).strip() for v in vals if str(v).strip()]
    return []


def _category_of(path: Path) -> str:
    stem = path.stem
    return stem.removesuffix("_output")


def load_pool(path: str | Path, category: str | None = None) -> list[PoolRow]:
    """Read one pool JSON file (a list of rows in the paper's shape).

    Args:
        path: The JSON file.
        category: Category name; default: the file name without ``_output.json``.

    Raises:
        InputError: unreadable file, not a list, or rows without a question or items.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read pool file {str(path)!r}: {exc}") from exc
    if not isinstance(data, list):
        raise InputError(f"pool file {str(path)!r} must hold a JSON list of rows")
    cat = category or _category_of(path)
    rows: list[PoolRow] = []
    for i, row in enumerate(data):
        if not isinstance(row, Mapping):
            raise InputError(f"{path}: row {i} is not an object")
        question = str(row.get("Question") or row.get("question") or "").strip()
        good, bad = _first(row, _GOOD_KEYS), _first(row, _BAD_KEYS)
        if not question or not good or not bad:
            raise InputError(
                f"{path}: row {i} needs 'Question', one of {list(_GOOD_KEYS)} and one of "
                f"{list(_BAD_KEYS)} (non-empty)"
            )
        rows.append(
            PoolRow(
                id=str(row.get("id", f"{cat}-{i}")),
                category=str(row.get("category", cat)),
                question=question,
                claim=str(row.get("Input") or "").strip(),
                appropriate=good,
                inappropriate=bad,
                reference=str(row.get("Simple Answer") or "").strip(),
                explanation=str(row.get("Explainable Answer") or "").strip(),
            )
        )
    return rows


def load_pools(
    source: str | Path, categories: Iterable[str] | None = None
) -> dict[str, list[PoolRow]]:
    """Read pools from a folder of ``<category>_output.json`` files or from one JSON file.

    Args:
        source: Folder or file.
        categories: Keep only these categories (default: all found).

    Raises:
        InputError: the path does not exist, holds no pool, or a requested category is missing.
    """
    src = Path(source)
    if not src.exists():
        raise InputError(
            f"pool path {str(src)!r} does not exist; pass the folder holding "
            "<category>_output.json files (e.g. ../shared/data/rw_steering_poisoned_context)"
        )
    files = sorted(src.glob("*.json")) if src.is_dir() else [src]
    pools: dict[str, list[PoolRow]] = {}
    for f in files:
        for row in load_pool(f):
            pools.setdefault(row.category, []).append(row)
    if not pools:
        raise InputError(f"no pool JSON files found in {str(src)!r}")
    if categories is not None:
        wanted = list(categories)
        missing = [c for c in wanted if c not in pools]
        if missing:
            raise InputError(f"categories {missing} not in the pools; found {sorted(pools)}")
        pools = {c: pools[c] for c in wanted}
    return pools


def n_inappropriate(ratio: float, n_items: int) -> int:
    """Number of inappropriate items for ``ratio`` of ``n_items`` (rounded half up)."""
    return int(ratio * n_items + 0.5 + 1e-9)


def _cycled(texts: list[str], n: int, rng: random.Random) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        block = list(texts)
        rng.shuffle(block)
        out.extend(block)
    return out[:n]


def build_mixture(
    row: PoolRow,
    ratio: float,
    *,
    n_items: int = 20,
    seed: int = 0,
    source_tags: bool = False,
) -> TestbedItem:
    """One mixture of ``n_items`` items for ``row`` with ``ratio`` of them inappropriate.

    Deterministic for a given (row id, ratio, n_items, seed).

    Raises:
        InputError: ratio outside [0, 1) or ``n_items`` < 1.
    """
    if not 0.0 <= ratio < 1.0:
        raise InputError(f"ratio must be in [0, 1), got {ratio}")
    if n_items < 1:
        raise InputError(f"n_items must be >= 1, got {n_items}")
    rng = random.Random(f"{seed}|{row.id}|{ratio:.4f}|{n_items}")
    n_bad = n_inappropriate(ratio, n_items)
    items = [ContextItem(text=t, label="inappropriate") for t in _cycled(row.inappropriate, n_bad, rng)]
    items += [ContextItem(text=t, label="appropriate") for t in _cycled(row.appropriate, n_items - n_bad, rng)]
    rng.shuffle(items)
    if source_tags:
        for it in items:
            pool = LOW_CREDIBILITY_SOURCES if it.inappropriate else REPUTABLE_SOURCES
            it.source = rng.choice(pool)
    return TestbedItem(
        id=f"{row.id}@{ratio:.2f}",
        row_id=row.id,
        category=row.category,
        question=row.question,
        reference=row.reference,
        claim=row.claim,
        ratio=round(ratio, 4),
        items=items,
    )


def build_testbed(
    pools: Mapping[str, Sequence[PoolRow]] | str | Path,
    *,
    n_items: int = 20,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    n_queries: int | None = None,
    categories: Iterable[str] | None = None,
    seed: int = 0,
    source_tags: bool = False,
) -> list[TestbedItem]:
    """Build mixtures for sampled queries of each category at each ratio.

    Args:
        pools: Output of :func:`load_pools`, or a path for it.
        n_items: Items per context list (N).
        ratios: Contamination ratios (default 0, 0.05, ..., 0.95).
        n_queries: Queries sampled per category (under ``seed``); ``None``: all.
        categories: Restrict to these categories.
        seed: Seed of the query sample, the item choice, the order and the tags.
        source_tags: Prefix items with a source (reputable for appropriate, low-credibility for
            inappropriate items). Off by default: a detector evaluated with tags on measures the
            tags, not the content.

    Returns:
        Items ordered by category, query, then ratio.
    """
    if not isinstance(pools, Mapping):
        pools = load_pools(pools, categories)
    elif categories is not None:
        missing = [c for c in categories if c not in pools]
        if missing:
            raise InputError(f"categories {missing} not in the pools; found {sorted(pools)}")
        pools = {c: pools[c] for c in categories}
    bad_ratios = [r for r in ratios if not 0.0 <= r < 1.0]
    if bad_ratios:
        raise InputError(f"ratios must be in [0, 1); got {bad_ratios}")
    out: list[TestbedItem] = []
    for cat in sorted(pools):
        rows = list(pools[cat])
        if n_queries is not None and n_queries < len(rows):
            rows = random.Random(f"{seed}|{cat}").sample(rows, n_queries)
        for row in rows:
            for r in ratios:
                out.append(build_mixture(row, r, n_items=n_items, seed=seed, source_tags=source_tags))
    return out


def save_jsonl(items: Iterable[TestbedItem], path: str | Path) -> int:
    """Write items as JSON Lines; returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for it in items:
            fh.write(it.model_dump_json() + "\n")
            n += 1
    return n


def load_jsonl(path: str | Path) -> list[TestbedItem]:
    """Read items written by :func:`save_jsonl`.

    Raises:
        InputError: missing file or a malformed line (the message gives the line number).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"testbed file {str(p)!r} does not exist; build one with `ctxkit rw-testbed`")
    out: list[TestbedItem] = []
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(TestbedItem.model_validate_json(line))
            except ValueError as exc:
                raise InputError(f"{p}:{n}: not a testbed item ({exc})") from None
    return out
