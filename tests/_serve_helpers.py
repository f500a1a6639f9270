"""Helpers for the service tests: a tiny embedder, small indexes, test stages, service processes.

Stages here are named in configs by import path (``_serve_helpers:FailOn``); service processes
get this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ctxkit.pipeline import BaseStage
from ctxkit.types import ContextState

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TOPICS = {
    "fleming": "penicillin was discovered by alexander fleming in 1928 in london",
    "eiffel": "the eiffel tower was completed in 1889 in paris for the world fair",
    "curie": "marie curie discovered polonium and radium with pierre curie",
    "moon": "apollo eleven landed on the moon in 1969 with armstrong and aldrin",
    "pasteur": "penicillin was discovered by Louis Pasteur in 1901 says a poisoned page",
    "fox": "the quick brown fox jumps over the lazy dog near the river bank",
}


def corpus(n_filler: int = 0) -> list[dict[str, Any]]:
    """The topic documents plus ``n_filler`` filler documents (for bigger indexes)."""
    docs = [{"id": k, "text": v, "title": k} for k, v in TOPICS.items()]
    words = " ".join(TOPICS.values()).split()
    for i in range(n_filler):
        text = " ".join(words[(i * 7 + j) % len(words)] for j in range(30))
        docs.append({"id": f"filler{i}", "text": f"{text} filler number {i}"})
    return docs


def build_tiny_embedder(out: Path) -> Path:
    """A tiny random sentence-transformer (BERT, mean pooling) saved to ``out/st``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted(set(" ".join(TOPICS.values()).lower().split()) | {"who", "when", "what", "where", "filler", "number"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *"abcdefghijklmnopqrstuvwxyz0123456789"]
    bert = out / "bert"
    bert.mkdir(parents=True, exist_ok=True)
    (bert / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tok = BertTokenizerFast(vocab_file=str(bert / "vocab.txt"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=256)
    BertModel(cfg).save_pretrained(bert)
    tok.save_pretrained(bert)
    word = Transformer(str(bert), max_seq_length=128)
    SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "mean")], device="cpu").save(str(out / "st"))
    return out / "st"


def build_index(path: Path, embedder: Path, docs: list[dict[str, Any]] | None = None) -> Path:
    """An index folder (Chroma + chunk store + BM25) holding ``docs`` (default: :func:`corpus`)."""
    from ctxkit.retrievers import ingest

    ingest(docs if docs is not None else corpus(), index=str(path), embedding_model=str(embedder), device="cpu")
    return path


def index_state(path: Path) -> tuple[int, int]:
    """``(generation, chunks)`` of an index: unchanged by a rejected request."""
    from ctxkit.retrievers import Index

    idx = Index.open(str(path))
    try:
        return idx.generation, idx.count_chunks()
    finally:
        idx.close()


def write_config(path: Path, stages: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return path


class FailOn(BaseStage):
    """Raises for any query that contains ``word`` (so a batch holding it fails as a whole)."""

    word: str = "boom"

    def run(self, states: list[ContextState]) -> list[ContextState]:
        for s in states:
            if self.word in s.query:
                raise RuntimeError(f"asked to fail on {s.query!r}")
            s.flags["checked_by"] = self.name
        return states


class Gate(BaseStage):
    """Blocks queries that contain ``word`` until the file ``release`` exists (at most ``limit_s``).

    On entering, it creates ``entered``: a test polls for it to know a request is mid-pipeline.
    """

    word: str = "slow"
    entered: str
    release: str
    limit_s: float = 60.0

    def run(self, states: list[ContextState]) -> list[ContextState]:
        if any(self.word in s.query for s in states):
            Path(self.entered).touch()
            deadline = time.monotonic() + self.limit_s
            while not Path(self.release).exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return states


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


class ServiceProcess:
    """``ctxkit serve-pipeline CONFIG`` (or ``ctxkit mcp``) in a subprocess on a free loopback port."""

    def __init__(self, config: Path, *args: str, command: str = "serve-pipeline", log: Path | None = None) -> None:
        self.log = log or config.with_suffix(f".{os.getpid()}.{time.monotonic_ns()}.log")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        self._log_fh = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ctxkit.cli", command, str(config), "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=self._log_fh, text=True, env=env, cwd=str(config.parent),
        )
        self.url = ""

    def start(self, timeout: float = 180.0) -> ServiceProcess:
        import httpx

        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the service prints its URL once it listens
        if "http://" not in line:
            self.proc.kill()
            raise AssertionError(f"the service did not start: {line!r}\n{self.log.read_text()[-3000:]}")
        self.url = "http://" + line.split("http://", 1)[1].split()[0].rstrip("/,;").removesuffix("/mcp")

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the service exited: {self.log.read_text()[-3000:]}")
            try:
                return httpx.get(self.url + "/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, "the service to be ready")
        return self

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self._log_fh.close()
        return rc

    def logs(self) -> str:
        return self.log.read_text(errors="replace")
