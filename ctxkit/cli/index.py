"""``ctxkit ingest`` and ``ctxkit query``.

Heavy libraries (chromadb, bm25s, sentence-transformers) are imported inside the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ctxkit.errors import InputError

__all__ = ["RETRIEVERS", "add_commands", "dedupe_documents", "make_retriever"]

RETRIEVERS = ("hybrid", "dense", "bm25")


def add_commands(sub: Any) -> None:
    """Register ``ingest`` and ``query`` on the ``ctxkit`` sub-parser."""
    p = sub.add_parser(
        "ingest",
        help="chunk, embed and index files (.md, .txt, BEIR .jsonl) into an index folder",
        description="Index files or folders into DIR (Chroma + BM25). Re-running is safe: "
        "unchanged documents are skipped, changed ones replaced.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (.md, .txt, .jsonl)")
    p.add_argument("--index", required=True, metavar="DIR", help="index folder (created if needed)")
    p.add_argument("--chunk-size", type=int, default=None, help="words per chunk for a new index (default 160)")
    p.add_argument("--chunk-overlap", type=int, default=None, help="overlap in words for a new index (default 30)")
    p.add_argument("--embedding-model", default=None, help="embedder for a new index (default: all-MiniLM-L6-v2)")
    p.add_argument("--collection", default=None, help="Chroma collection name (default: ctxkit)")
    p.add_argument("--host", default=None, help="Chroma server host (server mode; default: embedded)")
    p.add_argument("--port", type=int, default=None, help="Chroma server port (default 8000)")
    p.add_argument("--device", default="auto", help="embedder device: auto, cpu, cuda, mps")
    p.add_argument("--batch-size", type=int, default=256, help="documents per write batch")
    p.add_argument(
        "--on-duplicate", choices=("error", "keep-last"), default="error",
        help="the same document id twice (e.g. a repeated _id in a .jsonl): stop with an error "
        "(default), or keep the last record and warn",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_ingest)

    q = sub.add_parser(
        "query",
        help="query an index: one question, or a BEIR queries file into a run file",
        description="Print ranked passages for a question, or answer every line of --queries "
        "and write one JSON line per query to --out (results deduplicated to documents).",
    )
    q.add_argument("question", nargs="?", help="the question (omit with --queries)")
    q.add_argument("--index", required=True, metavar="DIR", help="index folder written by `ctxkit ingest`")
    q.add_argument("--queries", metavar="Q.jsonl", help='BEIR-style query lines {"_id", "text"}')
    q.add_argument("--out", metavar="RUN.jsonl", help="run file to write (with --queries; default: stdout)")
    q.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    q.add_argument("--retriever", choices=RETRIEVERS, default="hybrid", help="default: hybrid")
    q.add_argument("--where", default=None, help='metadata filter as JSON, e.g. \'{"lang": "en"}\'')
    q.add_argument("--host", default=None, help="Chroma server host (server mode)")
    q.add_argument("--port", type=int, default=None, help="Chroma server port")
    q.add_argument("--device", default="auto", help="embedder device")
    q.add_argument("--batch-size", type=int, default=64, help="queries per batch with --queries")
    q.add_argument("--chars", type=int, default=300, help="characters of each passage to print")
    q.set_defaults(func=cmd_query)


def cmd_ingest(args: argparse.Namespace) -> int:
    from ctxkit.retrievers.store.index import Index
    from ctxkit.retrievers.store.ingest import ingest
    from ctxkit.retrievers.store.loaders import iter_files

    files = list(iter_files(args.paths))  # raises InputError on a missing path
    settings: dict[str, Any] = {
        "embedding_model": args.embedding_model, "chunk_size": args.chunk_size,
        "chunk_overlap": args.chunk_overlap, "collection": args.collection,
        "host": args.host, "port": args.port, "device": args.device,
    }
    from tqdm.auto import tqdm

    idx = Index(args.index, **settings)
    if not args.quiet:
        print(f"ingesting {len(files)} file(s) into {idx!r}", file=sys.stderr)

    def warn(message: str) -> None:  # each warning once, as it happens, above the progress bar
        tqdm.write(f"warning: {message}", file=sys.stderr)

    try:
        report = ingest(args.paths, idx, show_progress=not args.quiet, batch_size=args.batch_size,
                        on_duplicate="keep_last" if args.on_duplicate == "keep-last" else "error",
                        on_warning=warn)
        print(
            f"indexed {report.files} file(s): {report.summary()}; index now holds "
            f"{idx.count_documents()} documents / {idx.count_chunks()} chunks in {idx.path}"
        )
    finally:
        idx.close()
    return 0


def make_retriever(
    index: str, kind: str = "hybrid", k: int = 10, *, host: str | None = None, port: int | None = None,
    device: str = "auto",
) -> Any:
    """The retriever the CLI uses for ``--retriever`` over the index folder ``index``.

    Raises:
        IndexNotFoundError: ``index`` holds no ctxkit index.
        InputError: unknown ``kind``.
    """
    from ctxkit.retrievers.bm25 import BM25Retriever
    from ctxkit.retrievers.chroma import ChromaRetriever
    from ctxkit.retrievers.hybrid import HybridRetriever
    from ctxkit.retrievers.store.index import Index

    Index.open(index)  # a clear error before any model loads
    chroma_kw: dict[str, Any] = {"path": index, "device": device}
    if host:
        chroma_kw.update(host=host, port=port or 8000)
    if kind == "dense":
        return ChromaRetriever(k=k, **chroma_kw)
    if kind == "bm25":
        return BM25Retriever(path=index, k=k)
    if kind == "hybrid":
        return HybridRetriever(
            retrievers=[ChromaRetriever(k=k, **chroma_kw), BM25Retriever(path=index, k=k)],
            k=k, candidates=max(100, k),
        )
    raise InputError(f"unknown retriever {kind!r}; use one of {', '.join(RETRIEVERS)}")


def dedupe_documents(passages: list[Any], k: int) -> list[tuple[str, float, Any]]:
    """``(doc_id, score, passage)`` for the best chunk of each document, best first, top ``k``."""
    out: list[tuple[str, float, Any]] = []
    seen: set[str] = set()
    for p in passages:
        doc = p.doc_id or p.id
        if doc in seen:
            continue
        seen.add(doc)
        out.append((doc, float(p.score if p.score is not None else 0.0), p))
        if len(out) >= k:
            break
    return out


def _read_queries(path: str) -> list[tuple[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--queries: no such file {path!r}")
    out: list[tuple[str, str]] = []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"--queries: {path!r} is not UTF-8 text") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"--queries {path}:{n}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f'--queries {path}:{n}: expected an object {{"_id", "text"}}')
        qid = row.get("_id", row.get("id", str(n)))
        text = row.get("text", row.get("query"))
        if not isinstance(text, str) or not text.strip():
            raise InputError(f'--queries {path}:{n}: empty or missing "text"')
        out.append((str(qid), text))
    if not out:
        raise InputError(f"--queries: {path!r} holds no queries")
    return out


def cmd_query(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise InputError(f"--k must be >= 1, got {args.k}")
    if args.queries and args.question:
        raise InputError("give either a question or --queries FILE, not both")
    if not args.queries and (args.question is None or not args.question.strip()):
        raise InputError('the query is empty: pass a question, e.g. ctxkit query --index DIR "what is X?"')
    where = None
    if args.where:
        try:
            where = json.loads(args.where)
        except json.JSONDecodeError as exc:
            raise InputError(f"--where is not valid JSON ({exc.msg})") from None
        if not isinstance(where, dict):
            raise InputError('--where must be a JSON object, e.g. \'{"lang": "en"}\'')
    queries = _read_queries(args.queries) if args.queries else [("q", args.question)]
    # Fetch extra chunks so that k distinct documents remain after deduplication.
    retriever = make_retriever(args.index, args.retriever, k=args.k * 3, host=args.host, port=args.port, device=args.device)

    if not args.queries:
        passages = retriever.retrieve([args.question], where=where)[0]
        hits = dedupe_documents(passages, args.k)
        if not hits:
            print("no results")
            return 0
        for rank, (doc, score, p) in enumerate(hits, 1):
            text = " ".join(p.text.split())
            if len(text) > args.chars:
                text = text[: args.chars].rstrip() + "..."
            extra = ", ".join(f"{k}={v:.3f}" for k, v in p.scores.items())
            print(f"{rank:>3}. {doc}  [{extra}]\n     {text}")
        return 0

    from tqdm.auto import tqdm

    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        with tqdm(total=len(queries), unit="query", desc="query", disable=not args.out) as bar:
            for i in range(0, len(queries), args.batch_size):
                batch = queries[i : i + args.batch_size]
                results = retriever.retrieve([t for _, t in batch], where=where)
                for (qid, _), passages in zip(batch, results, strict=True):
                    hits = dedupe_documents(passages, args.k)
                    line = {"query_id": qid, "results": [{"id": d, "score": s} for d, s, _ in hits]}
                    out.write(json.dumps(line, ensure_ascii=False) + "\n")
                bar.update(len(batch))
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"wrote {len(queries)} queries to {args.out}", file=sys.stderr)
    return 0
