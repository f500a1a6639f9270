"""Retrieval benchmark: BM25, dense (Chroma + all-MiniLM-L6-v2) and hybrid fusion.

Usage::

    python benchmarks/retrieval.py --out results.json   # data: ../shared/data/retrieval/msmarco_trecdl2019

Reads a BEIR-style folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv`` with graded
relevance), ingests the corpus (title + text) into a temporary ctxkit index, and reports:

* nDCG@10 (trec_eval style: linear gain = grade, log2 discount, ideal from all judged grades)
  and recall@100 (relevant = grade >= 1, the BEIR convention; ``recall@100_grade2`` uses the
  TREC DL passage convention grade >= 2) for ``bm25``, ``dense`` and ``hybrid`` (the
  HybridRetriever with its DEFAULT settings);
* ingest throughput (documents/s, embedding + Chroma + SQLite + BM25 build);
* latency of single queries through the default hybrid retriever (p50/p95 ms);
* other fusion settings computed from the same candidate lists (``fusion_variants``), for the
  docs' comparison table;
* with ``--hotpotqa FILE`` (default: ``../shared/data/hotpotqa/hotpot_dev_distractor_500.jsonl``
  when present), the same metrics on a BEIR-style set built from HotpotQA distractor paragraphs
  (corpus: every distinct paragraph; query: the question; relevant: its supporting paragraphs),
  under the key ``hotpotqa``.

Exits with a clear message (status 2) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import data_missing, data_path, machine, ndcg_at, recall_at, write_json

from ctxkit.retrievers import BM25Retriever, ChromaRetriever, Document, HybridRetriever, Index, fuse

DEPTH = 100


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


def load_hotpot(path: Path, max_questions: int = 300) -> tuple[list[Document], dict[str, str], dict[str, dict[str, int]]]:
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


def run_dataset(name: str, docs: list[Document], queries: dict[str, str], qrels: dict[str, dict[str, int]],
                workdir: Path, latency: bool, ingest_sample: int = 0) -> dict:
    print(f"[{name}] {len(docs)} documents, {len(queries)} queries", flush=True)
    idx = Index(workdir / name)
    report = idx.add(docs, show_progress=True, total=len(docs))
    print(f"[{name}] ingest: {report.summary()}", flush=True)
    if idx.count_documents() != len({d.id for d in docs}):
        raise SystemExit(f"[{name}] index holds {idx.count_documents()} documents, expected {len(docs)}")

    dense = ChromaRetriever(path=str(idx.path), k=DEPTH)
    bm25 = BM25Retriever(path=str(idx.path), k=DEPTH)
    hybrid = HybridRetriever(retrievers=[dense, bm25], k=DEPTH)
    qids = list(queries)
    texts = [queries[q] for q in qids]

    lists: dict[str, list[list[tuple[str, float, str]]]] = {}
    for label, r in (("dense", dense), ("bm25", bm25), ("hybrid", hybrid)):
        res = r.retrieve(texts, k=DEPTH)
        lists[label] = [[(p.id, p.scores[r.name], p.doc_id or p.id) for p in ps] for ps in res]
    out: dict = {"n_docs": len(docs), "n_queries": len(queries)}
    for label in ("bm25", "dense", "hybrid"):
        out[label] = evaluate({q: doc_level(lst) for q, lst in zip(qids, lists[label], strict=True)}, qrels)
    out["hybrid"]["settings"] = {
        "fusion": hybrid.fusion, "normalization": hybrid.normalization,
        "weights": hybrid.effective_weights(), "candidates": hybrid.candidates,
    }

    # Other fusion settings from the same candidate lists (same as HybridRetriever would compute).
    doc_of = {cid: d for key in ("dense", "bm25") for lst in lists[key] for cid, _s, d in lst}
    variants = {
        "rrf (plain, k=60)": {"method": "rrf"},
        "convex minmax 0.5/0.5": {"method": "convex", "normalization": "minmax", "weights": [0.5, 0.5]},
        "convex minmax 0.7/0.3 (default)": {"method": "convex", "normalization": "minmax", "weights": [0.7, 0.3]},
        "convex minmax 0.8/0.2": {"method": "convex", "normalization": "minmax", "weights": [0.8, 0.2]},
        "convex tmm 0.7/0.3": {"method": "convex", "normalization": "tmm", "weights": [0.7, 0.3]},
        "convex zscore 0.7/0.3": {"method": "convex", "normalization": "zscore", "weights": [0.7, 0.3]},
        "rrf weighted 0.7/0.3": {"method": "rrf", "weights": [0.7, 0.3]},
    }
    out["fusion_variants"] = {}
    for vname, kw in variants.items():
        runs = {}
        for qi, q in enumerate(qids):
            d_l = [(c, s) for c, s, _ in lists["dense"][qi]]
            b_l = [(c, s) for c, s, _ in lists["bm25"][qi]]
            fused = fuse([d_l, b_l], floors=[-1.0, 0.0], **kw)
            runs[q] = doc_level([(c, s, doc_of[c]) for c, s in fused[:DEPTH]])
        m = evaluate(runs, qrels)
        out["fusion_variants"][vname] = {k: m[k] for k in ("ndcg@10", "ndcg@10_exp", "recall@100")}

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(data_path("retrieval", "msmarco_trecdl2019")),
                    help="BEIR-style folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    ap.add_argument("--hotpotqa", default=str(data_path("hotpotqa", "hotpot_dev_distractor_500.jsonl")), help="HotpotQA distractor JSONL for the second check ('' to skip)")
    ap.add_argument("--hotpotqa-max", type=int, default=300, help="HotpotQA questions used (default 300)")
    ap.add_argument("--workdir", default=None,
                    help="keep the indexes here and reuse them (ingest is idempotent: a re-run only writes what is missing)")
    ap.add_argument("--ingest-sample", type=int, default=1000, help="documents timed for ingest_docs_per_s")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads (1 avoids thread thrashing on a shared, oversubscribed CPU)")
    ap.add_argument("--out", default="results.json", help="where to write the JSON results")
    args = ap.parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)

    data = Path(args.data)
    if not (data / "corpus.jsonl").exists():
        data_missing("retrieval", data, needs="corpus.jsonl, queries.jsonl, qrels/test.tsv")
        return 2

    results: dict = {"data": str(args.data)}
    results["machine"] = machine()
    results["torch_threads"] = args.torch_threads
    results["metrics"] = (
        "ndcg@10: linear gains (gain = grade, trec_eval style); ndcg@10_exp: gains 2^grade - 1; "
        "recall@100: relevant = grade >= 1; recall@100_grade2: grade >= 2; document level"
    )
    with contextlib.ExitStack() as stack:
        if args.workdir:
            work = Path(args.workdir)
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ctxkit-bench-")))
        main_res = run_dataset("trecdl2019", *load_beir(data), work, latency=True, ingest_sample=args.ingest_sample)
        results.update(main_res)
        write_json(args.out, results)
        hp = Path(args.hotpotqa) if args.hotpotqa else None
        if hp and hp.exists():
            hres = run_dataset("hotpotqa", *load_hotpot(hp, args.hotpotqa_max), work, latency=False)
            results["hotpotqa"] = hres
        elif hp:
            print(f"(no HotpotQA file at {hp}: skipped the second check)", file=sys.stderr)
    write_json(args.out, results)
    keys = ("bm25", "dense", "hybrid")
    print(json.dumps({k: results[k] for k in keys}, indent=1))
    print(f"ingest {results.get('ingest_docs_per_s')} docs/s, query p50 {results.get('query_ms_p50')} ms, "
          f"p95 {results.get('query_ms_p95')} ms; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
