"""Server mode: a real ``chroma run`` process on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ctxkit import IndexNotFoundError
from ctxkit.retrievers import BM25Retriever, ChromaRetriever, Document, HybridRetriever, Index


def _chroma_bin() -> str | None:
    local = Path(sys.executable).with_name("chroma")
    return str(local) if local.exists() else shutil.which("chroma")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory):
    binary = _chroma_bin()
    if binary is None:
        pytest.skip("the `chroma` command is not installed (pip install 'ctxkit[chroma]')")
    port = _free_port()
    data = tmp_path_factory.mktemp("chroma_server")
    log = open(data / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, "run", "--path", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api/v2/heartbeat"
    deadline = time.monotonic() + 60
    ready = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                ready = resp.status == 200
        except (urllib.error.URLError, OSError):
            ready = False
        if ready:
            break
        try:  # poll interval that also notices a server that exits
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
    if not ready:
        proc.kill()
        log.close()
        pytest.fail(f"chroma server did not answer its heartbeat: {(data / 'server.log').read_text()[-2000:]}")
    yield "127.0.0.1", port
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_server_mode_ingest_and_query(chroma_server, tmp_path: Path, minilm):
    host, port = chroma_server
    idx = Index(tmp_path / "idx", host=host, port=port, collection="server_docs", device="cpu")
    docs = [
        Document(id="fleming", text="Alexander Fleming discovered penicillin in 1928.", metadata={"kind": "bio"}),
        Document(id="paris", text="Paris is the capital of France and home of the Louvre.", metadata={"kind": "geo"}),
    ]
    assert idx.add(docs).written == 2
    assert idx.add(docs).unchanged == 2  # idempotent against the server too
    assert not (tmp_path / "idx" / "chroma").exists()  # nothing embedded: vectors live in the server

    # server only: host/port/collection, the embedding model comes from the collection metadata
    remote = ChromaRetriever(host=host, port=port, collection="server_docs", k=1, device="cpu")
    assert remote.retrieve(["who discovered penicillin"])[0][0].doc_id == "fleming"
    assert remote.retrieve(["anything"], where={"kind": "geo"})[0][0].doc_id == "paris"
    # local index folder that points at the server (manifest) + BM25 next to it
    hybrid = HybridRetriever(
        retrievers=[ChromaRetriever(path=str(idx.path), device="cpu"), BM25Retriever(path=str(idx.path))], k=2
    )
    top = hybrid.retrieve(["capital of France"])[0][0]
    assert top.doc_id == "paris" and {"chroma", "bm25", "hybrid"} <= set(top.scores)
    with pytest.raises(IndexNotFoundError, match="no Chroma collection"):
        ChromaRetriever(host=host, port=port, collection="missing").retrieve(["q"])


def test_unreachable_server_gives_a_clear_error(tmp_path: Path):
    port = _free_port()
    with pytest.raises(IndexNotFoundError, match="chroma run"):
        ChromaRetriever(host="127.0.0.1", port=port, collection="x").retrieve(["q"])
