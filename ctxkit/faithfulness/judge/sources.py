"""Readers for the public data the claim judge is trained and evaluated on, and its frozen splits.

Every evaluation set is split once, by a hash of the set name and the item id, into
``dev_train`` (25%: the judge may train on it), ``dev`` (25%: calibration, thresholds, choices
and audits of misses) and ``test`` (50%: run once when a change is finished; nothing is chosen
from it). :func:`split_of` is the only definition of the split.

Formats read (the layout of ``shared/data`` in the ctxkit repository's evaluation data):
FaithfulRAG's ``{squad,musique}_kre_{golden,negative}.json`` and
``faitheval_counterfactual.json``, HotpotQA's distractor JSON Lines, BEIR ``corpus.jsonl``,
TruthfulQA's CSV, PoisonedRAG's ``*_adv_targeted.json``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from .data import QARecord

__all__ = [
    "Split",
    "beir_passages",
    "faitheval_records",
    "hotpot_records",
    "kre_records",
    "poisonedrag_items",
    "split_of",
    "truthfulqa_claims",
]

Split = Literal["dev_train", "dev", "test"]


def split_of(set_name: str, item_id: str) -> Split:
    """The frozen split of an item: ``dev_train`` (25%), ``dev`` (25%) or ``test`` (50%)."""
    h = int(hashlib.sha1(f"{set_name}:{item_id}".encode()).hexdigest()[:8], 16) % 100
    return "dev_train" if h < 25 else "dev" if h < 50 else "test"


def _sentences(text: str) -> list[str]:
    from ...retrievers import split_sentences

    return split_sentences(text)


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def _clean(value: str) -> str:
    from ..faithfulrag.parsing import clean_field

    out = clean_field(value)
    return " ".join(str(out).split())


def kre_records(folder: str | Path, name: str, splits: tuple[Split, ...]) -> list[QARecord]:
    """SQuAD-KRE or MuSiQue-KRE (``name`` ``"squad"`` / ``"musique"``) as records: the golden
    context states the answer, the negative context of the same id states a substitute."""
    folder = Path(folder)
    gold = {_clean(r["id"]): r for r in _load(folder / f"{name}_kre_golden.json")}
    neg = {_clean(r["id"]): r for r in _load(folder / f"{name}_kre_negative.json")}
    out = []
    for rid, g in gold.items():
        if split_of(name, rid) not in splits or rid not in neg:
            continue
        answer = _clean(g["answer"])
        out.append(QARecord(
            question=_clean(g["question"]), answer=answer, sentences=_sentences(_clean(g["context"])),
            source=name, alt_answer=_clean(neg[rid]["answer"]), alt_sentences=_sentences(_clean(neg[rid]["context"])),
            wrong_answers=[_clean(c) for c in g.get("choices", []) if _clean(c) and _clean(c) != answer],
        ))
    return out


def faitheval_records(folder: str | Path, splits: tuple[Split, ...]) -> list[QARecord]:
    """FaithEval counterfactual as records: each context states its (counterfactual) answer; the
    other choices are answers the context contradicts."""
    out = []
    for r in _load(Path(folder) / "faitheval_counterfactual.json"):
        if split_of("faitheval", _clean(str(r["id"]))) not in splits:
            continue
        answer = _clean(r["answer"])
        out.append(QARecord(
            question=_clean(r["question"]), answer=answer, sentences=_sentences(_clean(r["context"])),
            source="faitheval", wrong_answers=[_clean(c) for c in r["choices"] if _clean(c) and _clean(c) != answer],
        ))
    return out


def hotpot_records(path: str | Path, exclude: set[str] = frozenset()) -> tuple[list[QARecord], list[list[str]]]:
    """HotpotQA distractor questions as records (the supporting paragraph that states the answer)
    and every paragraph as a list of sentences; ids in ``exclude`` are left out."""
    records, paragraphs = [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if r["_id"] in exclude or not r.get("context"):
                continue
            support_titles = {t for t, _ in r.get("supporting_facts", [])}
            for title, sents in r["context"]:
                sents = [s.strip() for s in sents if s.strip()]
                if not sents:
                    continue
                paragraphs.append(sents)
                answer = r["answer"].strip()
                if title in support_titles and answer.lower() not in ("yes", "no") and any(
                    answer.lower() in s.lower() for s in sents
                ):
                    records.append(QARecord(question=r["question"].strip(), answer=answer, sentences=sents,
                                            source="hotpotqa"))
    return records, paragraphs


def beir_passages(path: str | Path, exclude: set[str] = frozenset()) -> Iterator[str]:
    """Passage texts of a BEIR ``corpus.jsonl`` (ids in ``exclude`` left out)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if r["_id"] not in exclude and r.get("text", "").strip():
                yield r["text"].strip()


def truthfulqa_claims(path: str | Path) -> Iterator[tuple[str, str, list[str], list[str]]]:
    """TruthfulQA rows as ``(question, best answer, true answers, false answers)``."""
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            split = [s.strip() for s in row["Correct Answers"].split(";")], [s.strip() for s in row["Incorrect Answers"].split(";")]
            yield row["Question"].strip(), row["Best Answer"].strip(), split[0], split[1]


def poisonedrag_items(path: str | Path) -> list[dict]:
    """PoisonedRAG targeted items: ``{id, question, correct, incorrect, texts}``."""
    data = _load(Path(path)) if not isinstance(path, dict) else path
    return [
        {"id": str(k), "question": v["question"], "correct": v["correct answer"], "incorrect": v["incorrect answer"],
         "texts": list(v["adv_texts"])}
        for k, v in (data.items() if isinstance(data, dict) else ((r["id"], r) for r in data))
    ]
