"""Token windows: their text, the tokenizer fingerprint and the embedder that turns them into keys.

The window is defined identically at build and generation time: the decode (special tokens kept,
no clean-up) of the same ``window`` token ids immediately before the predicted token.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from ..._lazy import require
from ...errors import ConfigError

__all__ = ["WindowEncoder", "tokenizer_fingerprint", "window_texts"]


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
class WindowEncoder:
    """Embeds token windows with a sentence-transformers model through a low-overhead path.

    ``SentenceTransformer.encode`` sorts, batches and converts on every call; at one call per
    decoding step that overhead matters. This calls the model's modules directly under
    ``torch.inference_mode`` and returns L2-normalised float32 embeddings on the model's device.

    Args:
        embedder: ``"default"`` (all-MiniLM-L6-v2), a model name/path, or a
            :class:`ctxkit.models.Embedder`.
        device: Device for a model loaded here (``"auto"``, ``"cpu"``, ``"cuda"``...).
        max_length: Token cap of the embedder's input (windows are short).
    """

    def __init__(self, embedder: Any = "default", *, device: str = "auto", max_length: int = 64) -> None:
        self._embedder = embedder
        self.device_setting = device
        self.max_length = max_length
        self._st: Any = None
        self.name = embedder if isinstance(embedder, str) else getattr(embedder, "model_name", "custom")
        if self.name in ("default", "minilm", "all-MiniLM-L6-v2"):
            self.name = "sentence-transformers/all-MiniLM-L6-v2"

    @property
    def model(self) -> Any:
        """The loaded ``SentenceTransformer``."""
        if self._st is None:
            from ...models import get_embedder

            emb = self._embedder
            if isinstance(emb, str):
                emb = get_embedder(emb, device=self.device_setting)
            st = getattr(emb, "model", emb)
            if not hasattr(st, "encode"):
                raise ConfigError(f"WindowEncoder: {self._embedder!r} is not a sentence-transformers model")
            self._st = st
        return self._st

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
                feats = {k: (v[:, : self.max_length].to(st.device) if torch.is_tensor(v) else v)
                         for k, v in feats.items()}
                emb = st(feats)["sentence_embedding"].float()
                outs.append(torch.nn.functional.normalize(emb, dim=-1))
        return torch.cat(outs) if len(outs) > 1 else outs[0]
