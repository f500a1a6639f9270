"""The CAAD static window key: a model2vec-style lookup table as the window embedder.

Tiny models only: a hand-made static table over a small word-level tokenizer, and (where model2vec
is installed) a real model2vec distillation of a tiny random BERT. The real key distilled from the
packaged MiniLM is measured in ``benchmarks/caad.py --keys minilm,static``.
"""

from __future__ import annotations

import builtins
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")

from ctxkit.errors import MissingDependencyError
from ctxkit.faithfulness.decoding import (
    CAADLogitsProcessor,
    GroundingSpace,
    GroundingSpaceMismatchError,
    WindowEncoder,
)
from ctxkit.faithfulness.decoding.static_key import (
    KEY_FILE,
    StaticKeyConfig,
    build_static_key,
    static_key_path,
)

EXAMPLES = [
    ("who discovered penicillin", "fleming"),
    ("when was the eiffel tower completed", "in 1889"),
]
WORDS = ["[UNK]", "[PAD]", "the", "who", "discovered", "penicillin", "fleming", "in", "1889", "fox", "jumps",
         "eiffel", "tower", "when", "was", "completed", "what", "does", "do"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _FakeStatic:
    """What build_static_key reads from a ``model2vec.StaticModel``: a table and a tokenizer."""

    def __init__(self, seed: int, dim: int = 6) -> None:
        from tokenizers import Tokenizer, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        self.tokenizer = tok
        g = torch.Generator().manual_seed(seed)
        self.embedding = torch.randn(len(WORDS), dim, generator=g).numpy()
        self.weights = self.token_mapping = None


def _key(tmp_path, name: str, seed: int = 0, pca_dims: int = 6) -> tuple:
    src = tmp_path / f"src-{name}"
    src.mkdir(exist_ok=True)
    cfg = StaticKeyConfig(source=str(src), pca_dims=pca_dims)
    fake = _FakeStatic(seed, dim=pca_dims)
    return build_static_key(cfg, tmp_path / f"key-{name}", static_model=fake), cfg, fake


def test_static_key_encodes_windows_as_the_normalised_mean_of_its_rows(tmp_path):
    path, cfg, fake = _key(tmp_path, "a")
    meta = json.loads((path / KEY_FILE).read_text())
    assert meta["name"] == cfg.name and meta["dim"] == 6 and meta["fingerprint"].startswith("sha256:")
    assert meta["config"] == {"source": cfg.source, "pca_dims": 6, "sif_coefficient": 1e-4, "seed": 0}
    enc = WindowEncoder(str(path))
    assert enc.is_static and enc.name == cfg.name and enc.dim == 6
    assert enc.fingerprint == meta["fingerprint"]
    q = enc.encode(["who discovered penicillin", "the fox jumps", "in 1889"])
    assert q.shape == (3, 6) and q.dtype == torch.float32
    assert torch.allclose(q.norm(dim=-1), torch.ones(3), atol=1e-5)
    table = torch.from_numpy(fake.embedding)
    ref = table[[WORDS.index(w) for w in ("the", "fox", "jumps")]].mean(0)
    assert torch.allclose(q[1], ref / ref.norm(), atol=1e-5)
    # the same text gives the same key; batch composition does not matter
    assert torch.allclose(enc.encode(["the fox jumps"])[0], q[1], atol=1e-6)
    assert enc.encode([]).shape == (0, 6)
    # a rebuild from the same table is byte-identical (reproducible fingerprint)
    again, _, _ = _key(tmp_path, "a2")
    assert json.loads((again / KEY_FILE).read_text())["fingerprint"] == meta["fingerprint"]


def test_space_built_with_a_static_key_round_trips(tiny_lm, tmp_path):
    model, tok = tiny_lm
    path, cfg, _ = _key(tmp_path, "a")
    enc = WindowEncoder(str(path))
    space = GroundingSpace.build(EXAMPLES, model, tok, embedder=enc, model_name="tiny", window=16)
    assert space.manifest["embedder"] == cfg.name
    assert space.manifest["embedder_fingerprint"] == enc.fingerprint
    assert space.manifest["embedder_dim"] == 6 and space.keys.shape[1] == 6
    space.save(tmp_path / "s")
    back = GroundingSpace.load(tmp_path / "s", tokenizer=tok)
    assert back.manifest == space.manifest and torch.equal(back.keys, space.keys)
    proc = CAADLogitsProcessor(back, tok, alpha=1.0, tau=0.99, embedder=str(path))
    first = tok(EXAMPLES[0][0], add_special_tokens=False)["input_ids"][-16:]
    scores = torch.zeros(1, space.vocab_size)
    proc.shift_windows([first], scores)
    assert proc.stats.steps == 1
    assert not proc._prefetch_enabled()  # auto prefetching is off for a lookup table
    # a key with a non-default configuration is not found by name: the error says what to pass
    with pytest.raises(GroundingSpaceMismatchError, match="folder"):
        CAADLogitsProcessor(back, tok)


def test_mismatched_window_keys_are_refused(tiny_lm, tmp_path):
    model, tok = tiny_lm
    path, _, _ = _key(tmp_path, "a")
    space = GroundingSpace.build(EXAMPLES, model, tok, embedder=WindowEncoder(str(path)), window=16)
    # another static key (other configuration): refused by name, before anything is loaded
    other, _, _ = _key(tmp_path, "b", pca_dims=4)
    with pytest.raises(GroundingSpaceMismatchError, match="window key"):
        CAADLogitsProcessor(space, tok, embedder=str(other))
    # the same name but another table (the folder rebuilt in place): refused by its fingerprint on first use
    _key(tmp_path, "a", seed=1)
    proc = CAADLogitsProcessor(space, tok, embedder=str(path))
    with pytest.raises(GroundingSpaceMismatchError, match="another table"):
        proc.shift_windows([[1, 2, 3]], torch.zeros(1, space.vocab_size))
    # a MiniLM space and a static key (and the reverse) are not comparable
    minilm_space = GroundingSpace.synthetic(20, vocab_size=space.vocab_size, dim=384)
    with pytest.raises(GroundingSpaceMismatchError, match="all-MiniLM-L6-v2"):
        CAADLogitsProcessor(minilm_space, embedder=str(path))
    with pytest.raises(GroundingSpaceMismatchError, match="window key"):
        CAADLogitsProcessor(space, tok, embedder="minilm")
    # an unnamed embedder is checked by its dimension on first use
    unnamed = WindowEncoder(WindowEncoder(str(other)).model)
    assert unnamed.name == "custom"
    proc = CAADLogitsProcessor(space, tok, embedder=unnamed)
    with pytest.raises(GroundingSpaceMismatchError, match="6-dimensional"):
        proc.shift_windows([[1, 2, 3]], torch.zeros(1, space.vocab_size))


def test_default_static_key_names_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXKIT_CACHE", str(tmp_path / "cache"))
    enc = WindowEncoder("static")
    assert enc.is_static and enc.name == StaticKeyConfig().name == "ctxkit-static:all-MiniLM-L6-v2:pca256:sif0.0001"
    assert WindowEncoder("minilm").name == WindowEncoder("default").name == "sentence-transformers/all-MiniLM-L6-v2"
    # not built yet, and model2vec missing: a clear error naming the extra
    real_import = builtins.__import__

    def no_model2vec(name, *args, **kwargs):
        if name.startswith("model2vec"):
            raise ImportError("No module named 'model2vec'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_model2vec)
    with pytest.raises(MissingDependencyError, match=r"ctxkit\[caad-static\]"):
        static_key_path()
    with pytest.raises(MissingDependencyError, match=r"ctxkit\[caad-static\]"):
        _ = WindowEncoder("static").model


def test_model2vec_distillation_of_a_tiny_bert_is_reproducible(tmp_path):
    pytest.importorskip("model2vec.distill", reason="model2vec is not installed (pip install 'ctxkit[caad-static]')")
    import transformers as tf

    src = tmp_path / "tiny-bert"
    src.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS[2:], *[f"w{i}" for i in range(40)]]
    from tokenizers import BertWordPieceTokenizer

    wordpiece = BertWordPieceTokenizer({w: i for i, w in enumerate(vocab)}, lowercase=True)
    tf.BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                         cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]").save_pretrained(src)
    torch.manual_seed(0)
    tf.BertModel(tf.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64)).save_pretrained(src)
    cfg = StaticKeyConfig(source=str(src), pca_dims=8)
    a = build_static_key(cfg, tmp_path / "a")
    b = build_static_key(cfg, tmp_path / "b")
    ma, mb = (json.loads((p / KEY_FILE).read_text()) for p in (a, b))
    assert ma["fingerprint"] == mb["fingerprint"] and ma["dim"] == 8
    enc = WindowEncoder(str(a))
    q = enc.encode(["the fox jumps", "who discovered penicillin"])
    assert q.shape == (2, 8) and torch.allclose(q.norm(dim=-1), torch.ones(2), atol=1e-5)
