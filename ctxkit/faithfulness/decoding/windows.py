"""Token windows: their text, the tokenizer fingerprint and the embedder that turns them into keys.

The window is defined identically at build and generation time: the decode (special tokens kept,
no clean-up) of the same ``window`` token ids immediately before the predicted token.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..._lazy import require
from ...errors import ConfigError

__all__ = ["DEFAULT_WINDOW_KEY", "MINILM", "WindowEncoder", "tokenizer_fingerprint", "window_texts"]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the tokenizer's vocabulary and special tokens (identifies token ids)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    specials = sorted(str(t) for t in getattr(tokenizer, "all_special_tokens", []))
    blob = json.dumps([vocab, specials], ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def window_texts(tokenizer: Any, windows: Sequence[Sequence[int]]) -> list[str]:
    """The text of each token window: special tokens kept, no clean-up (same at build and decode)."""
    return tokenizer.batch_decode(
        [list(w) for w in windows], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )


# -- window embedding ----------------------------------------------------------------------------
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_NAMES = ("minilm", "all-MiniLM-L6-v2", MINILM)
DEFAULT_WINDOW_KEY = "minilm"
"""What ``embedder="default"`` means for CAAD window keys: ``"minilm"`` (all-MiniLM-L6-v2) or
``"static"`` (its model2vec distillation, see :mod:`.static_key`). MiniLM stays the default: on
150 TruthfulQA questions the static key matched its MC1 but was 1.8 MC2 points lower (1.75 bootstrap
std of the paired difference; ``benchmarks/README.md``, *Window keys*), and a static default would
make a first CAAD run need ``ctxkit[caad-static]`` and a few minutes of distillation."""


class WindowEncoder:
    """Embeds token windows with a sentence-transformers model through a low-overhead path.

    ``SentenceTransformer.encode`` sorts, batches and converts on every call; at one call per
    decoding step that overhead matters. This calls the model's modules directly under
    ``torch.inference_mode`` and returns L2-normalised float32 embeddings on the model's device.

    Args:
        embedder: ``"default"`` (see :data:`DEFAULT_WINDOW_KEY`), ``"minilm"`` (all-MiniLM-L6-v2),
            ``"static"`` (the model2vec static key distilled from the packaged MiniLM, built into
            the ctxkit cache on first use; needs ``pip install 'ctxkit[caad-static]'`` for that
            build), a :class:`~.static_key.StaticKeyConfig`, a model name/path (a static key
            folder is recognised by its ``ctxkit_window_key.json``), or a
            :class:`ctxkit.models.Embedder` / ``SentenceTransformer``.
        device: Device for a model loaded here (``"auto"``, ``"cpu"``, ``"cuda"``...). A static
            key always runs on the CPU (a table lookup; the keys move to the scores' device).
        max_length: Token cap of the embedder's input (windows are short).

    Attributes:
        name: The key's name, recorded in a grounding space's manifest (``embedder``).
        fingerprint: For a static key, a hash of its table (recorded as ``embedder_fingerprint``);
            ``None`` for a transformer embedder (its name identifies it).
    """

    def __init__(self, embedder: Any = "default", *, device: str = "auto", max_length: int = 64) -> None:
        from .static_key import STATIC_KEY_NAMES, StaticKeyConfig, read_key_file

        if embedder == "default":
            embedder = DEFAULT_WINDOW_KEY
        self._static_cfg: StaticKeyConfig | None = None
        self._key_meta: dict[str, Any] | None = None
        if isinstance(embedder, StaticKeyConfig) or embedder in STATIC_KEY_NAMES:
            self._static_cfg = embedder if isinstance(embedder, StaticKeyConfig) else StaticKeyConfig()
            device = "cpu"
        elif isinstance(embedder, str | Path) and Path(embedder).is_dir():
            self._key_meta = read_key_file(embedder)
            if self._key_meta is not None:
                embedder, device = str(embedder), "cpu"
        self._embedder = embedder
        self.device_setting = device
        self.max_length = max_length
        self._st: Any = None
        if self._static_cfg is not None:
            self.name = self._static_cfg.name
        elif self._key_meta is not None:
            self.name = str(self._key_meta["name"])
        else:
            self.name = embedder if isinstance(embedder, str) else getattr(embedder, "model_name", "custom")
            if self.name in ("default", *MINILM_NAMES):
                self.name = MINILM

    @property
    def is_static(self) -> bool:
        """A static (lookup-table) key rather than a transformer."""
        return self._static_cfg is not None or self._key_meta is not None

    @property
    def fingerprint(self) -> str | None:
        """Hash of a static key's table (loads the key's description); ``None`` otherwise."""
        if self._static_cfg is not None and self._key_meta is None:
            _ = self.model
        return None if self._key_meta is None else self._key_meta.get("fingerprint")

    @property
    def model(self) -> Any:
        """The loaded ``SentenceTransformer``."""
        if self._st is None:
            if self.is_static:
                self._st = self._load_static()
                return self._st
            from ...models import get_embedder

            emb = self._embedder
            if isinstance(emb, str):
                emb = get_embedder(emb, device=self.device_setting)
            st = getattr(emb, "model", emb)
            if not hasattr(st, "encode"):
                raise ConfigError(f"WindowEncoder: {self._embedder!r} is not a sentence-transformers model")
            self._st = st
        return self._st

    def _load_static(self) -> Any:
        from .static_key import read_key_file, static_key_path

        path = static_key_path(self._static_cfg) if self._static_cfg is not None else Path(self._embedder)
        self._key_meta = read_key_file(path)
        if self._key_meta is None:
            raise ConfigError(f"WindowEncoder: {str(path)!r} is not a ctxkit static window key")
        st = require("sentence_transformers").SentenceTransformer(str(path), device="cpu")
        return st.eval()

    @property
    def device(self) -> Any:
        """The ``torch.device`` of the embedder."""
        return self.model.device

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        st = self.model
        get = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        return int(get())

    def encode(self, texts: list[str], *, batch_size: int = 256, show_progress: bool = False) -> Any:
        """``(len(texts), dim)`` normalised float32 embeddings (torch, on the embedder's device)."""
        torch = require("torch")
        st = self.model
        prep = getattr(st, "preprocess", None) or st.tokenize
        if not texts:
            return torch.zeros((0, self.dim), device=self.device)
        outs = []
        starts = range(0, len(texts), batch_size)
        if show_progress and len(texts) > batch_size:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="embed windows", unit="batch")
        with torch.inference_mode():
            for s in starts:
                feats = prep(texts[s : s + batch_size])
                # (B, T) inputs are capped at max_length; a static key's flat ids + offsets are not
                feats = {k: (v[:, : self.max_length] if torch.is_tensor(v) and v.ndim == 2 else v)
                         for k, v in feats.items()}
                feats = {k: (v.to(st.device) if torch.is_tensor(v) else v) for k, v in feats.items()}
                emb = st(feats)["sentence_embedding"].float()
                outs.append(torch.nn.functional.normalize(emb, dim=-1))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def __repr__(self) -> str:
        return f"WindowEncoder({self.name!r})"
