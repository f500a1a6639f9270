"""Context lists for the steering benchmark: clean lists from real retrieval and PoisonedRAG mixtures.

* Clean lists (nothing to flag): TREC-DL 2019 top-10 lists retrieved with ctxkit's hybrid
  retriever (dense MiniLM + BM25) from the TREC-DL passages, HotpotQA distractor lists (the 10
  paragraphs each question comes with: 2 gold + 8 retrieved by HotpotQA's authors), and the RW
  testbed at ratio 0 (distinct items of a row).
* PoisonedRAG mixtures: for each PoisonedRAG question (NQ, HotpotQA, MS MARCO; 100 each), the top
  ``n_real`` passages retrieved by the same hybrid retriever -- HotpotQA questions from the
  shared HotpotQA distractor paragraphs (4920), MS MARCO and NQ questions from the TREC-DL 2019
  MS MARCO passages (5000) -- with 1, 3 or 5 of the question's adversarial texts inserted at
  seeded random positions. These corpora are not the questions' own (BEIR HotpotQA / MS MARCO /
  NQ are not shared here), so the real passages are topic neighbours that rarely state the answer.

Every list carries its frozen split: PoisonedRAG by
``ctxkit.faithfulness.judge.sources.split_of("poisonedrag", f"{src}:{id}")`` (``dev_train`` and
``dev`` are both dev here), the other sets by ``split_of(<set name>, <id>)`` too.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ctxkit.faithfulness.judge.sources import split_of

__all__ = ["CtxList", "build_indexes", "clean_lists", "on_topic_lists", "poison_lists", "split"]

POISON_SETS = ("nq", "hotpotqa", "msmarco")


@dataclass
class CtxList:
    """One context list: query, item texts, 0/1 labels (1 = poison / inappropriate) and metadata."""

    id: str
    set: str
    split: str
    query: str
    texts: list[str]
    labels: list[int]
    meta: dict = field(default_factory=dict)


def split(set_name: str, item_id: str) -> str:
    """``"dev"`` or ``"test"``: the judge's frozen split, its two dev parts merged."""
    return "test" if split_of(set_name, item_id) == "test" else "dev"


def _hotpot_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if r.get("context"):
                rows.append(r)
    return rows


def build_indexes(data: Path, work: Path) -> dict:
    """Ingest the TREC-DL passages and the HotpotQA paragraphs (once each); hybrid retrievers over them.

    Returns ``{"msmarco": retriever, "hotpotqa": retriever}`` (dense MiniLM + BM25, ctxkit's
    default convex fusion).
    """
    from ctxkit.retrievers import BM25Retriever, ChromaRetriever, Document, HybridRetriever, Index

    out = {}
    for name in ("msmarco", "hotpotqa"):
        path = work / ("trecdl_index" if name == "msmarco" else "hotpot_index")
        idx = Index(path)
        if idx.count_documents() == 0:
            docs = []
            if name == "msmarco":
                with open(data / "retrieval" / "msmarco_trecdl2019" / "corpus.jsonl", encoding="utf-8") as fh:
                    for line in fh:
                        r = json.loads(line)
                        docs.append(Document(id=str(r["_id"]), text=r["text"], title=r.get("title") or ""))
            else:
                seen: set[str] = set()
                for r in _hotpot_rows(data / "hotpotqa" / "hotpot_dev_distractor_500.jsonl"):
                    for title, sents in r["context"]:
                        text = "".join(sents).strip()
                        if title not in seen and text:
                            seen.add(title)
                            docs.append(Document(id=title, text=text, title=title))
            print(f"ingesting {len(docs)} {name} passages into {path} ...", flush=True)
            idx.add(docs, show_progress=False, total=len(docs))
        out[name] = HybridRetriever(retrievers=[ChromaRetriever(path=str(path), k=50),
                                                BM25Retriever(path=str(path), k=50)], k=20)
    return out


def _texts(passages) -> list[str]:
    return [(p.metadata.get("raw_text") or p.text) for p in passages]


def _retrieve(retriever, queries: list[str], k: int, cache: Path) -> list[list[str]]:
    store: dict[str, list[str]] = json.loads(cache.read_text()) if cache.is_file() else {}
    todo = [q for q in dict.fromkeys(queries) if q not in store]
    for i in range(0, len(todo), 64):
        batch = todo[i:i + 64]
        for q, ps in zip(batch, retriever.retrieve(batch), strict=True):
            store[q] = _texts(ps)
        cache.write_text(json.dumps(store))
    return [store[q][:k] for q in queries]


def clean_lists(data: Path, work: Path, retrievers: dict, testbed_rows: int = 100,
                hotpot_questions: int = 100) -> list[CtxList]:
    """TREC-DL top-10 (hybrid retrieval), HotpotQA distractor lists, testbed ratio 0."""
    out: list[CtxList] = []
    queries = {}
    with open(data / "retrieval" / "msmarco_trecdl2019" / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            queries[str(r["_id"])] = r["text"]
    qids = sorted(queries)
    lists = _retrieve(retrievers["msmarco"], [queries[q] for q in qids], 10, work / "retrieved_msmarco.json")
    for qid, texts in zip(qids, lists, strict=True):
        out.append(CtxList(f"trecdl:{qid}", "trecdl", split("trecdl", qid), queries[qid], texts, [0] * len(texts)))
    for r in _hotpot_rows(data / "hotpotqa" / "hotpot_dev_distractor_500.jsonl")[:hotpot_questions]:
        texts = ["".join(s).strip() for _, s in r["context"] if "".join(s).strip()]
        out.append(CtxList(f"hotpotqa:{r['_id']}", "hotpotqa", split("hotpotqa", r["_id"]), r["question"], texts,
                           [0] * len(texts)))
    from ctxkit.faithfulness.steering import load_pools

    pools = load_pools(data / "rw_steering_poisoned_context")
    for cat in sorted(pools):
        rows = random.Random(f"0|{cat}").sample(pools[cat], min(testbed_rows, len(pools[cat])))
        for row in rows:
            texts = list(dict.fromkeys(t.strip() for t in row.appropriate))
            out.append(CtxList(f"testbed0:{cat}:{row.id}", "testbed_ratio0", split(f"rw_{cat}", row.id), row.question,
                               texts, [0] * len(texts), {"category": cat}))
    return out


def poison_lists(data: Path, work: Path, retrievers: dict, n_real: int = 10, n_poison: tuple[int, ...] = (1, 3, 5),
                 per_set: int = 100, prefix_question: bool = False) -> list[CtxList]:
    """PoisonedRAG adversarial texts mixed into real retrieved passages of the same question.

    HotpotQA questions retrieve from the HotpotQA paragraphs, MS MARCO and NQ questions from the
    TREC-DL (MS MARCO) passages; ``per_set`` questions per source set (in file order).
    """
    from ctxkit.faithfulness.judge.sources import poisonedrag_items

    items = []
    for src in POISON_SETS:
        for it in poisonedrag_items(data / "poisonedrag" / f"{src}_adv_targeted.json")[:per_set]:
            items.append((src, it))
    lists = []
    for src, it in items:
        name = "hotpotqa" if src == "hotpotqa" else "msmarco"
        lists.append((name, it["question"]))
    by = {name: _retrieve(retrievers[name], [q for n, q in lists if n == name], n_real, work / f"retrieved_{name}.json")
          for name in ("hotpotqa", "msmarco")}
    pos = {"hotpotqa": 0, "msmarco": 0}
    real_lists = []
    for name, _q in lists:
        real_lists.append(by[name][pos[name]])
        pos[name] += 1
    lists = real_lists
    out: list[CtxList] = []
    for (src, it), real in zip(items, lists, strict=True):
        sp = split("poisonedrag", f"{src}:{it['id']}")
        for k in n_poison:
            rng = random.Random(f"{src}:{it['id']}:{k}")
            poison = rng.sample(it["texts"], k)
            if prefix_question:
                poison = [f"{it['question'].rstrip('?')}? {t}" for t in poison]
            texts, labels = list(real), [0] * len(real)
            for t in poison:
                pos = rng.randrange(len(texts) + 1)
                texts.insert(pos, t)
                labels.insert(pos, 1)
            out.append(CtxList(f"poisonedrag:{src}:{it['id']}:{k}", f"poisonedrag_{src}", sp, it["question"], texts,
                               labels, {"k": k, "correct": it["correct"], "incorrect": it["incorrect"], "src": src,
                                        "qid": f"{src}:{it['id']}"}))
    return out


def on_topic_lists(poison: list[CtxList], data: Path, n_true: int = 2, k: int = 3) -> list[CtxList]:
    """A stress test closer to real web results: on-topic true passages that look like the poison.

    For each PoisonedRAG question whose adversarial texts state the target answer literally, two
    of its five texts get the target answer replaced by the correct one (true, on-topic, same
    shape), three stay poisoned, and they are mixed into the first 8 real retrieved passages of
    that question. Question echo cannot separate these; only reading the claims can.
    """
    import re

    from ctxkit.faithfulness.judge.sources import poisonedrag_items

    real_of = {lst.meta["qid"]: [t for t, y in zip(lst.texts, lst.labels, strict=True) if not y]
               for lst in poison if lst.meta["k"] == 1}
    out = []
    for src in POISON_SETS:
        for it in poisonedrag_items(data / "poisonedrag" / f"{src}_adv_targeted.json"):
            qid = f"{src}:{it['id']}"
            if qid not in real_of:
                continue
            rx = re.compile(re.escape(it["incorrect"]), re.IGNORECASE)
            stating = [t for t in it["texts"] if rx.search(t)]
            if len(stating) < n_true + k or it["incorrect"].lower() in ("yes", "no"):
                continue
            rng = random.Random(f"ontopic:{qid}")
            rng.shuffle(stating)
            true = [rx.sub(it["correct"], t) for t in stating[:n_true]]
            bad = stating[n_true:n_true + k]
            texts, labels = list(real_of[qid][:8]), [0] * 8
            for t, y in [(t, 0) for t in true] + [(t, 1) for t in bad]:
                pos = rng.randrange(len(texts) + 1)
                texts.insert(pos, t)
                labels.insert(pos, y)
            out.append(CtxList(f"ontopic:{qid}", f"ontopic_{src}", split("poisonedrag", qid), it["question"], texts,
                               labels, {"k": k, "correct": it["correct"], "incorrect": it["incorrect"], "src": src,
                                        "qid": qid, "true_on_topic": [i for i, t in enumerate(texts) if t in true]}))
    return out
