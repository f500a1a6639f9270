"""Retrieval benchmark: BM25, dense (Chroma + all-MiniLM-L6-v2) and hybrid fusion, on four sets.

Usage::

    python benchmarks/retrieval.py --split dev --out dev.json      # while developing: dev queries only
    python benchmarks/retrieval.py --split test --out test.json    # once, when a change is finished

Sets (each skipped with a message when its file is absent; ``--sets`` picks some):

* ``trecdl``: TREC DL 2019 passages (``../shared/data/retrieval/msmarco_trecdl2019``, BEIR-style
  ``corpus.jsonl`` / ``queries.jsonl`` / ``qrels/test.tsv``, graded relevance);
* ``hotpotqa``: HotpotQA distractor dev (500 questions): corpus = every distinct paragraph of the
  file (title + text), query = the question, relevant = its supporting paragraphs present in the
  file (grade 1; questions with none are left out);
* ``squad`` / ``musique``: the FaithfulRAG SQuAD-KRE / MuSiQue-KRE golden sets
  (``../shared/data/faithfulrag``): corpus = every distinct golden context, query = the question,
  relevant = its own context (grade 1).

Splits: every set's queries are split by a stable hash, ``sha1(f"{set}:{query id}")``: even first
8 hex digits -> ``dev``, odd -> ``test``. Settings are chosen on ``dev``; ``test`` is run once
when a change is finished.

Reported per set and split: nDCG@10 (trec_eval style: linear gain = grade, log2 discount, ideal
from all judged grades), nDCG@10 with 2^g-1 gains, recall@100 (relevant = grade >= 1) for ``bm25``,
``dense`` and ``hybrid`` (the HybridRetriever with its DEFAULT settings, run as a stage), the gap
between the hybrid and the better input, and other fusion settings computed from the same
candidate lists (``fusion_variants``). With timing (off with ``--skip-timing``): ingest throughput
(documents/s) and single-query latency of the default hybrid retriever on ``trecdl``.

``--fit-fusion FEATURES`` (dev split only) also fits the adaptive fusion's trust model
(``ctxkit.retrievers.hybrid.ADAPTIVE_MODEL``): per dev query, the trust features and the fused
nDCG@10 at dense weights 0, 0.05, ..., 1; the model maximises the mean gap to the better input plus
half the worst set's gap. Each set also gets two stress variants (``set+weak-dense``,
``set+weak-bm25``): the same dev queries with one input given the query without its rarer half of
words (it misses the names and rare terms), the other input the full query, so that the model
learns to notice a weak input instead of trusting one blindly (``--no-fit-stress``: without them).
The JSON's ``fit`` block holds the model, its gaps on every set, the fixed fusions' gaps on the same
rows, and leave-one-collection-out gaps (fitted without a collection and its variants).

Exits with a clear message (status 2) when no set's data is present.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import data_missing, data_path, machine, ndcg_at, recall_at, write_json

from ctxkit.retrievers import BM25Retriever, ChromaRetriever, Document, HybridRetriever, Index, fuse

DEPTH = 100
SETS = ("trecdl", "hotpotqa", "squad", "musique")
SPLIT_RULE = "sha1(f'{set}:{query id}'): first 8 hex digits even -> dev, odd -> test"

#: Fusion settings compared on the same candidate lists (dense list first, BM25 second).
VARIANTS: dict[str, dict] = {
    "adaptive (default)": {"method": "adaptive"},
    "convex minmax 0.7/0.3 (previous default)": {"method": "convex", "normalization": "minmax", "weights": [0.7, 0.3]},
    "convex minmax 0.5/0.5": {"method": "convex", "normalization": "minmax", "weights": [0.5, 0.5]},
    "convex zscore 0.5/0.5": {"method": "convex", "normalization": "zscore", "weights": [0.5, 0.5]},
    "rrf (plain, k=60)": {"method": "rrf"},
}


def split_of(set_name: str, query_id: str) -> str:
    """``"dev"`` or ``"test"``: a stable hash of the set name and the query id."""
    return "dev" if int(hashlib.sha1(f"{set_name}:{query_id}".encode()).hexdigest()[:8], 16) % 2 == 0 else "test"


def evaluate(runs: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    qids = [q for q in qrels if q in runs]
    nd = [ndcg_at(runs[q], qrels[q]) for q in qids]
    r1 = [recall_at(runs[q], qrels[q], DEPTH, 1) for q in qids]
    r2 = [x for x in (recall_at(runs[q], qrels[q], DEPTH, 2) for q in qids) if not math.isnan(x)]
    nd_exp = [ndcg_at(runs[q], {d: 2**g - 1 for d, g in qrels[q].items()}) for q in qids]
    return {
        "ndcg@10": round(statistics.fmean(nd), 4),
        "ndcg@10_exp": round(statistics.fmean(nd_exp), 4),
        "recall@100": round(statistics.fmean(r1), 4),
        "recall@100_grade2": round(statistics.fmean(r2), 4) if r2 else None,
        "queries": len(qids),
    }


def doc_level(passages: list[tuple[str, float, str]]) -> list[str]:
    """Chunk results ``(chunk_id, score, doc_id)`` -> document ids, best chunk per document."""
    seen: list[str] = []
    have: set[str] = set()
    for _cid, _s, doc in passages:
        if doc not in have:
            have.add(doc)
            seen.append(doc)
    return seen


def load_beir(folder: Path) -> tuple[list[Document], dict[str, str], dict[str, dict[str, int]]]:
    docs = []
    with open(folder / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            docs.append(Document(id=str(row["_id"]), text=row["text"], title=row.get("title") or ""))
    queries = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            queries[str(row["_id"])] = row["text"]
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    qfile = folder / "qrels" / "test.tsv"
    with open(qfile, encoding="utf-8") as f:
        for line in f:
            parts = line.strip().split("\t")
            if len(parts) < 3 or not parts[2].lstrip("-").isdigit():
                continue  # header
            qrels[parts[0]][parts[1]] = int(parts[2])
    queries = {q: t for q, t in queries.items() if q in qrels}
    return docs, queries, dict(qrels)


def load_hotpot(path: Path, max_questions: int = 500) -> tuple[list[Document], dict[str, str], dict[str, dict[str, int]]]:
    by_title: dict[str, Document] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(queries) >= max_questions:
                break
            row = json.loads(line)
            if not row.get("context"):
                continue
            for title, sents in row["context"]:
                if title not in by_title:
                    by_title[title] = Document(id=title, text="".join(sents).strip(), title=title)
            # Some rows of this file lack a supporting paragraph in their context: only the ones
            # present are judged, and a question with none is left out.
            support = {t for t, _ in row["supporting_facts"]} & {t for t, _ in row["context"]}
            if not support:
                continue
            queries[row["_id"]] = row["question"]
            qrels[row["_id"]] = {t: 1 for t in support}
    docs = [d for d in by_title.values() if d.text]
    return docs, queries, qrels


def load_kre(path: Path) -> tuple[list[Document], dict[str, str], dict[str, dict[str, int]]]:
    """A FaithfulRAG golden set as a retrieval set: each question's own context is its relevant
    document (contexts shared by several questions are one document, id = sha1 of the text)."""
    docs: dict[str, Document] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    for r in rows:
        ctx = r["context"].strip()
        did = hashlib.sha1(ctx.encode()).hexdigest()[:12]
        docs.setdefault(did, Document(id=did, text=ctx))
        queries[str(r["id"])] = r["question"].strip()
        qrels[str(r["id"])] = {did: 1}
    return list(docs.values()), queries, qrels


def _sources(args: argparse.Namespace) -> dict[str, tuple[Path, object]]:
    return {
        "trecdl": (Path(args.data) / "corpus.jsonl", lambda: load_beir(Path(args.data))),
        "hotpotqa": (Path(args.hotpotqa), lambda: load_hotpot(Path(args.hotpotqa), args.hotpotqa_max)),
        "squad": (Path(args.faithfulrag) / "squad_kre_golden.json",
                  lambda: load_kre(Path(args.faithfulrag) / "squad_kre_golden.json")),
        "musique": (Path(args.faithfulrag) / "musique_kre_golden.json",
                    lambda: load_kre(Path(args.faithfulrag) / "musique_kre_golden.json")),
    }


def run_dataset(name: str, docs: list[Document], queries: dict[str, str], qrels: dict[str, dict[str, int]],
                workdir: Path, split: str, latency: bool = False, ingest_sample: int = 0,
                fit_rows: dict[str, list[dict]] | None = None, stress: bool = True) -> dict:
    if split != "all":
        queries = {q: t for q, t in queries.items() if split_of(name, q) == split}
    qrels = {q: r for q, r in qrels.items() if q in queries}
    print(f"[{name}] {len(docs)} documents, {len(queries)} {split} queries", flush=True)
    idx = Index(workdir / name)
    report = idx.add(docs, show_progress=True, total=len(docs))
    print(f"[{name}] ingest: {report.summary()}", flush=True)
    if idx.count_documents() != len({d.id for d in docs}):
        raise SystemExit(f"[{name}] index holds {idx.count_documents()} documents, expected {len(docs)}")

    dense = ChromaRetriever(path=str(idx.path), k=DEPTH)
    bm25 = BM25Retriever(path=str(idx.path), k=DEPTH)
    hybrid = HybridRetriever(retrievers=[dense, bm25], k=DEPTH)  # the defaults
    qids = list(queries)
    texts = [queries[q] for q in qids]

    lists: dict[str, list[list[tuple[str, float, str]]]] = {}
    for label, r in (("dense", dense), ("bm25", bm25), ("hybrid", hybrid)):
        res = r.retrieve(texts, k=DEPTH)
        lists[label] = [[(p.id, p.scores[r.name], p.doc_id or p.id) for p in ps] for ps in res]
    out: dict = {"n_docs": len(docs), "n_queries": len(queries), "split": split}
    for label in ("bm25", "dense", "hybrid"):
        out[label] = evaluate({q: doc_level(lst) for q, lst in zip(qids, lists[label], strict=True)}, qrels)
    out["hybrid"]["settings"] = {
        "fusion": hybrid.fusion, "normalization": hybrid.normalization,
        "weights": hybrid.effective_weights(), "candidates": hybrid.candidates,
    }
    better = "dense" if out["dense"]["ndcg@10"] >= out["bm25"]["ndcg@10"] else "bm25"
    out["better_input"] = better
    out["hybrid_minus_better"] = round(out["hybrid"]["ndcg@10"] - out[better]["ndcg@10"], 4)

    # Other fusion settings from the same candidate lists (what HybridRetriever computes with them).
    doc_of = {cid: d for key in ("dense", "bm25") for lst in lists[key] for cid, _s, d in lst}
    kinds = [dense.kind, bm25.kind]
    out["fusion_variants"] = {}
    for vname, kw in VARIANTS.items():
        runs = {}
        for qi, q in enumerate(qids):
            d_l = [(c, s) for c, s, _ in lists["dense"][qi]]
            b_l = [(c, s) for c, s, _ in lists["bm25"][qi]]
            fused = fuse([d_l, b_l], floors=[-1.0, 0.0], kinds=kinds, query=texts[qi], **kw)
            runs[q] = doc_level([(c, s, doc_of[c]) for c, s in fused[:DEPTH]])
        m = evaluate(runs, qrels)
        out["fusion_variants"][vname] = {k: m[k] for k in ("ndcg@10", "ndcg@10_exp", "recall@100")}
        out["fusion_variants"][vname]["minus_better"] = round(m["ndcg@10"] - out[better]["ndcg@10"], 4)

    if fit_rows is not None:  # per-query features and weight grid for fit_fusion (dev only)
        fit_rows[name] = fit_rows_of(qids, texts, lists["dense"], lists["bm25"], qrels)
        if stress:
            # the same dev queries with one input weakened: that input sees the query without its
            # rarer half of words (names, numbers: what it needs most), the other the full query
            df = document_frequencies(docs)
            weak = [weakened(t, df) for t in texts]
            for label, r in (("dense", dense), ("bm25", bm25)):
                res = r.retrieve(weak, k=DEPTH)
                weak_lists = [[(p.id, p.scores[r.name], p.doc_id or p.id) for p in ps] for ps in res]
                other = lists["bm25"] if label == "dense" else lists["dense"]
                d_lists, b_lists = (weak_lists, other) if label == "dense" else (other, weak_lists)
                fit_rows[f"{name}+weak-{label}"] = fit_rows_of(qids, texts, d_lists, b_lists, qrels)

    if ingest_sample:
        # Throughput on a fresh index (the main index may have been reused from --workdir).
        sample = docs[:ingest_sample]
        with tempfile.TemporaryDirectory(prefix="ctxkit-ingest-") as scratch:
            fresh = Index(Path(scratch) / "idx")
            fresh.embedding_function().embedder.encode(["warm up"])  # model load is not ingest time
            t1 = time.perf_counter()
            fresh.add(sample, show_progress=True, total=len(sample))
            out["ingest_docs_per_s"] = round(len(sample) / (time.perf_counter() - t1), 1)
            out["ingest_docs_timed"] = len(sample)
            fresh.close()
    if latency:
        single = HybridRetriever(retrievers=[ChromaRetriever(path=str(idx.path), k=10), BM25Retriever(path=str(idx.path), k=10)], k=10)
        single.retrieve([texts[0]])  # warm up (model load)
        times = []
        for t in texts:
            t1 = time.perf_counter()
            single.retrieve([t])
            times.append((time.perf_counter() - t1) * 1000)
        times.sort()
        out["query_ms_p50"] = round(statistics.median(times), 1)
        out["query_ms_p95"] = round(times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)], 1)
    idx.close()
    return out


# ---------------------------------------------------------------------------------------------
# fitting the adaptive fusion's trust model (dev queries only)
# ---------------------------------------------------------------------------------------------
GRID = [round(0.05 * i, 2) for i in range(21)]  # dense weights of the per-query grid


def fit_rows_of(qids: list[str], texts: list[str], dense_lists: list[list[tuple[str, float, str]]],
                bm25_lists: list[list[tuple[str, float, str]]], qrels: dict[str, dict[str, int]]) -> list[dict]:
    """Per query: the trust features, the fused nDCG@10 at every GRID weight and each input's nDCG@10."""
    from ctxkit.retrievers.hybrid import trust_features

    rows = []
    for qi, q in enumerate(qids):
        doc_of = {c: d for lst in (dense_lists[qi], bm25_lists[qi]) for c, _s, d in lst}
        d_l = [(c, s) for c, s, _ in dense_lists[qi]]
        b_l = [(c, s) for c, s, _ in bm25_lists[qi]]
        rows.append({"qid": q, "features": trust_features(texts[qi], d_l, b_l),
                     "grid": weight_grid(d_l, b_l, doc_of, qrels[q]),
                     "dense": ndcg_at(doc_level(dense_lists[qi]), qrels[q]),
                     "bm25": ndcg_at(doc_level(bm25_lists[qi]), qrels[q])})
    return rows


_WORD = re.compile(r"\w+")


def document_frequencies(docs: list[Document]) -> Counter:
    """In how many documents (title + text) each lower-cased word occurs."""
    df: Counter = Counter()
    for d in docs:
        df.update(set(_WORD.findall(f"{d.title} {d.text}".lower())))
    return df


def weakened(query: str, df: Counter) -> str:
    """The query without its rarer half of words (lowest document frequency first; a word's
    frequency is its rarest token's): what an input that misses names and rare terms would see."""
    words = query.split()
    if len(words) < 2:
        return query
    rarity = [min((df.get(t, 0) for t in _WORD.findall(w.lower())), default=0) for w in words]
    drop = set(sorted(range(len(words)), key=lambda i: (rarity[i], i))[: len(words) // 2])
    return " ".join(w for i, w in enumerate(words) if i not in drop)


def weight_grid(d_l: list[tuple[str, float]], b_l: list[tuple[str, float]], doc_of: dict[str, str],
                qrels: dict[str, int]) -> list[float]:
    """nDCG@10 of the min-max convex fusion of one query's lists at every dense weight of GRID."""
    from ctxkit.retrievers.hybrid import normalize

    ids = list(dict.fromkeys([c for c, _ in d_l] + [c for c, _ in b_l]))
    dn = dict(zip([c for c, _ in d_l], normalize([x for _, x in d_l], "minmax"), strict=True))
    bn = dict(zip([c for c, _ in b_l], normalize([x for _, x in b_l], "minmax"), strict=True))
    rank = {c: r for r, c in enumerate(ids)}
    out = []
    for w in GRID:
        fused = sorted(ids, key=lambda c: (-(w * dn.get(c, 0.0) + (1 - w) * bn.get(c, 0.0)), rank[c]))
        out.append(ndcg_at(doc_level([(c, 0.0, doc_of[c]) for c in fused[:40]]), qrels))
    return out


def fit_trust_model(rows: dict[str, list[dict]], features: list[str], l2: float = 0.01,
                    stress_weight: float = 1.0, restarts: int = 20) -> dict[str, float]:
    """Intercept and coefficients of the dense weight ``lo + (hi - lo) * sigmoid(z)``.

    The objective, maximised, is ``T(sets) + stress_weight * T(stress sets)`` with ``T`` the mean
    over its sets of (fused nDCG@10 - the better input's) plus half the worst set's: the real
    sets decide, the stress variants (names with ``+``: one input weakened) keep the model from
    trusting an input blindly.

    Args:
        rows: Per set, per dev query: ``{"features": {...}, "grid": [nDCG@10 per GRID weight],
            "dense": nDCG@10, "bm25": nDCG@10}``.
        features: The feature names used.
        l2: Penalty on the standardised coefficients.
        stress_weight: Weight of the stress sets' term (0: the real sets alone).
        restarts: Nelder-Mead restarts from the best point so far (stops when one gains nothing).
    """
    import numpy as np
    from scipy.optimize import minimize

    from ctxkit.retrievers.hybrid import ADAPTIVE_RANGE

    lo, hi = ADAPTIVE_RANGE
    sets = []
    for rs in rows.values():
        X = np.array([[r["features"][f] for f in features] for r in rs]).reshape(len(rs), len(features))
        G = np.array([r["grid"] for r in rs])
        better = max(np.mean([r["dense"] for r in rs]), np.mean([r["bm25"] for r in rs]))
        sets.append((X, G, better))
    stress = np.array(["+" in name for name in rows])
    allx = np.concatenate([x for x, _, _ in sets]) if features else np.zeros((1, 0))
    mu, sd = allx.mean(0), allx.std(0) + 1e-9

    def gaps(theta: np.ndarray) -> np.ndarray:
        out = []
        for X, G, better in sets:
            w = lo + (hi - lo) / (1 + np.exp(-(theta[0] + ((X - mu) / sd) @ theta[1:])))
            x = w * (len(GRID) - 1)
            i = np.clip(np.floor(x).astype(int), 0, len(GRID) - 2)
            t = x - i
            ar = np.arange(len(G))
            out.append(float(np.mean(G[ar, i] * (1 - t) + G[ar, i + 1] * t)) - better)
        return np.array(out)

    def objective(theta: np.ndarray) -> float:
        g = gaps(theta)
        value = 0.0
        for part, weight in ((g[~stress], 1.0), (g[stress], stress_weight)):
            if len(part) and weight:
                value += weight * (part.mean() + 0.5 * part.min())
        return -value + l2 * float(np.sum(theta[1:] ** 2))

    best = None
    for start in (-1.0, 0.0, 1.0):
        r = minimize(objective, np.r_[start, np.zeros(len(features))], method="Nelder-Mead",
                     options={"maxiter": 2000, "xatol": 1e-4, "fatol": 1e-6})
        if best is None or r.fun < best.fun:
            best = r
    # the objective is piecewise linear (interpolated grid): Nelder-Mead stalls on its kinks, so
    # restart it from the best point (a fresh simplex) until it stops improving
    for _ in range(restarts):
        r = minimize(objective, best.x, method="Nelder-Mead", options={"maxiter": 2000, "xatol": 1e-4, "fatol": 1e-6})
        if r.fun > best.fun - 1e-6:
            break
        best = r
    theta = best.x
    coef = theta[1:] / sd
    model = {"intercept": round(float(theta[0] - coef @ mu), 4)}
    model.update({f: round(float(c), 4) for f, c in zip(features, coef, strict=True)})
    return model


def evaluate_trust_model(rows: dict[str, list[dict]], model: dict[str, float]) -> dict[str, float]:
    """Per set: nDCG@10 of the model's per-query weights (interpolated on the grid) minus the better input."""
    import numpy as np

    from ctxkit.retrievers.hybrid import ADAPTIVE_RANGE

    lo, hi = ADAPTIVE_RANGE
    out = {}
    for name, rs in rows.items():
        vals = []
        for r in rs:
            z = model["intercept"] + sum(c * r["features"][f] for f, c in model.items() if f != "intercept")
            x = (lo + (hi - lo) / (1 + np.exp(-z))) * (len(GRID) - 1)
            i = min(int(x), len(GRID) - 2)
            vals.append(r["grid"][i] * (1 - (x - i)) + r["grid"][i + 1] * (x - i))
        better = max(np.mean([r["dense"] for r in rs]), np.mean([r["bm25"] for r in rs]))
        out[name] = round(float(np.mean(vals) - better), 4)
    return out


def fit_fusion(rows: dict[str, list[dict]], features: list[str]) -> dict:
    """The trust model on all dev sets (and their stress variants ``set+weak-dense`` /
    ``set+weak-bm25``), and leave-one-collection-out: fitted without a collection and its stress
    variants, scored on them (how the fusion does on a collection it has never seen)."""
    import numpy as np

    model = fit_trust_model(rows, features)
    out = {"features": features, "model": model, "dev_minus_better": evaluate_trust_model(rows, model),
           "leave_one_set_out": {}}
    # the fixed fusions on the same rows (min-max convex at a fixed dense weight), for comparison
    out["fixed_minus_better"] = {}
    for name, rs in rows.items():
        G = np.array([r["grid"] for r in rs])
        better = max(np.mean([r["dense"] for r in rs]), np.mean([r["bm25"] for r in rs]))
        out["fixed_minus_better"][name] = {
            "dense": round(float(np.mean([r["dense"] for r in rs]) - better), 4),
            "bm25": round(float(np.mean([r["bm25"] for r in rs]) - better), 4),
            **{f"convex {w:g}/{1 - w:g}": round(float(G[:, GRID.index(w)].mean() - better), 4) for w in (0.7, 0.5)}}
    collections = list(dict.fromkeys(k.split("+")[0] for k in rows))
    if len(collections) > 2:
        for held in collections:
            m = fit_trust_model({k: v for k, v in rows.items() if k.split("+")[0] != held}, features)
            scored = evaluate_trust_model({k: v for k, v in rows.items() if k.split("+")[0] == held}, m)
            out["leave_one_set_out"][held] = {"model": m, "minus_better": scored}
    return out


def summarize(sets: dict[str, dict]) -> dict:
    """Per fusion setting: the mean and the worst gap to the better input over the sets."""
    if not sets:
        return {}
    out = {"hybrid (default)": {
        "mean_minus_better": round(statistics.fmean(r["hybrid_minus_better"] for r in sets.values()), 4),
        "min_minus_better": round(min(r["hybrid_minus_better"] for r in sets.values()), 4)}}
    for v in VARIANTS:
        gaps = [r["fusion_variants"][v]["minus_better"] for r in sets.values()]
        out[v] = {"mean_minus_better": round(statistics.fmean(gaps), 4), "min_minus_better": round(min(gaps), 4)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(data_path("retrieval", "msmarco_trecdl2019")),
                    help="TREC DL BEIR-style folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    ap.add_argument("--hotpotqa", default=str(data_path("hotpotqa", "hotpot_dev_distractor_500.jsonl")),
                    help="HotpotQA distractor JSONL")
    ap.add_argument("--hotpotqa-max", type=int, default=500, help="HotpotQA questions read (default 500: all)")
    ap.add_argument("--faithfulrag", default=str(data_path("faithfulrag")), help="folder of the *_kre_golden.json sets")
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated subset of {', '.join(SETS)}")
    ap.add_argument("--split", default="dev", choices=["dev", "test", "all"],
                    help="queries evaluated (dev while developing; test once when a change is finished)")
    ap.add_argument("--workdir", default=None,
                    help="keep the indexes here and reuse them (ingest is idempotent: a re-run only writes what is missing)")
    ap.add_argument("--skip-timing", action="store_true",
                    help="skip the ingest throughput and query latency measurements (run them on an idle machine)")
    ap.add_argument("--ingest-sample", type=int, default=1000, help="documents timed for ingest_docs_per_s")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads (1 avoids thread thrashing on a shared, oversubscribed CPU)")
    ap.add_argument("--fit-fusion", default=None, metavar="FEATURES",
                    help="also fit the adaptive fusion's trust model on these comma-separated trust features "
                         "(dev split only; writes 'fit' with leave-one-collection-out scores)")
    ap.add_argument("--no-fit-stress", dest="fit_stress", action="store_false",
                    help="fit on the sets alone, without their stress variants (each input in turn "
                         "given the dev queries without their rarer half of words)")
    ap.add_argument("--out", default="results.json", help="where to write the JSON results")
    args = ap.parse_args(argv)
    if args.fit_fusion and args.split != "dev":
        ap.error("--fit-fusion fits on dev queries only: use --split dev")
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    wanted = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SETS))
    if unknown:
        ap.error(f"unknown sets {unknown}; choose from {', '.join(SETS)}")
    sources = _sources(args)
    present = [s for s in wanted if sources[s][0].exists()]
    for s in wanted:
        if s not in present:
            data_missing(f"retrieval ({s})", sources[s][0])
    if not present:
        return 2

    results: dict = {"machine": machine(), "torch_threads": args.torch_threads, "split": args.split,
                     "split_rule": SPLIT_RULE, "depth": DEPTH, "sets": {}}
    results["metrics"] = (
        "ndcg@10: linear gains (gain = grade, trec_eval style); ndcg@10_exp: gains 2^grade - 1; "
        "recall@100: relevant = grade >= 1; recall@100_grade2: grade >= 2; document level; "
        "minus_better: nDCG@10 minus the better of dense and bm25 on the same queries"
    )
    with contextlib.ExitStack() as stack:
        if args.workdir:
            work = Path(args.workdir)
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ctxkit-bench-")))
        fit_rows: dict[str, list[dict]] | None = {} if args.fit_fusion else None
        for name in present:
            timing = name == "trecdl" and not args.skip_timing
            results["sets"][name] = run_dataset(name, *sources[name][1](), work, args.split, latency=timing,
                                                ingest_sample=args.ingest_sample if timing else 0, fit_rows=fit_rows,
                                                stress=args.fit_stress)
            results["summary"] = summarize(results["sets"])
            write_json(args.out, results)
        if fit_rows:
            results["fit"] = fit_fusion(fit_rows, [f.strip() for f in args.fit_fusion.split(",") if f.strip()])
            write_json(args.out, results)
            print("trust model:", json.dumps(results["fit"]["model"]))
    for name, r in results["sets"].items():
        print(f"{name:9s} dense {r['dense']['ndcg@10']:.4f}  bm25 {r['bm25']['ndcg@10']:.4f}  "
              f"hybrid {r['hybrid']['ndcg@10']:.4f}  (vs better input {r['hybrid_minus_better']:+.4f})")
    print(json.dumps(results["summary"], indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
