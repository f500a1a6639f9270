"""Shared fixtures: tiny random models built offline in seconds, temp dirs, markers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "penicillin was discovered by alexander fleming in 1928",
    "the eiffel tower was completed in 1889 in paris",
    "question answer context passage model token retrieval",
    "what who when where why how is was the a an of in on",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 yes no true false",
]


def build_tiny_tokenizer(out: Path):
    """A small BPE tokenizer trained on a few sentences, saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 10, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama causal LM + tokenizer with a chat template, saved to a local dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_llama")
    tok = build_tiny_tokenizer(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 causal LM + tokenizer with a chat template, saved to a local dir."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("tiny_gpt2")
    tok = build_tiny_tokenizer(out)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    GPT2LMHeadModel(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT encoder + WordPiece tokenizer (the shape of all-MiniLM-L6-v2), saved locally."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny_bert")
    words = sorted({w for line in _CORPUS for w in line.split()} | set("abcdefghijklmnopqrstuvwxyz.,?!'-:_"))
    (out / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bench_module():
    """Load a script of ``benchmarks/`` (not a package) as a module: ``bench_module("conflicts")``.

    The scripts import their shared helpers with ``import _common`` (run as ``python
    benchmarks/x.py``, their folder is on ``sys.path``), so the folder is put on ``sys.path`` for
    the session, at the end so that it shadows nothing.
    """
    import importlib.util

    bench_dir = str(Path(__file__).resolve().parents[1] / "benchmarks")
    added = bench_dir not in sys.path
    if added:
        sys.path.append(bench_dir)

    def load(name: str):
        path = Path(bench_dir) / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    yield load
    if added and bench_dir in sys.path:
        sys.path.remove(bench_dir)


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 (packaged offline), shared by the whole session."""
    from ctxkit.models import get_embedder

    emb = get_embedder("default", device="cpu")
    emb.encode(["warm up"])
    return emb


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for the module: many tiny forward passes oversubscribe 2 cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_lm(tiny_llm_dir):
    """``(model, tokenizer)`` of the tiny Llama, tokenizer left-padded for batched generation."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tiny_llm_dir)
    tok.padding_side = "left"
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llm_dir).eval()
    return model, tok


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on loopback in a temp folder (initdb + pg_ctl), for the session.

    Skipped, with the reason, only where it cannot start (no server binaries, no psycopg).
    """
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'ctxkit[postgres]')")
    from _postgres import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        pytest.skip(f"cannot start a PostgreSQL server here: {exc}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """URL of a fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def feedback_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a feedback store lives, once per backend: a SQLite file, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "fb.sqlite")
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random sentence-transformer (for indexes whose dense side no test reads)."""
    from _serve_helpers import build_tiny_embedder

    return build_tiny_embedder(tmp_path_factory.mktemp("tiny_st"))
