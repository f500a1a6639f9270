"""ctxkit's chromadb embedding function (imported only when chromadb is used).

Chroma's default embedding function downloads an ONNX model at first use and fails offline, so
ctxkit always hands Chroma this one, backed by :class:`ctxkit.models.Embedder`.
"""

from __future__ import annotations

from typing import Any

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

from ...models import Embedder, get_embedder

__all__ = ["CtxkitEmbeddingFunction"]


@register_embedding_function
class CtxkitEmbeddingFunction(EmbeddingFunction[Documents]):
    """A chromadb ``EmbeddingFunction`` over a ctxkit :class:`~ctxkit.models.Embedder`.

    Args:
        model: Embedder model name or path (``"default"`` is the packaged all-MiniLM-L6-v2).
        device: Device for the embedder.
        embedder: An existing embedder to reuse (overrides ``model``/``device``).
    """

    def __init__(self, model: str = "default", device: str = "auto", embedder: Embedder | None = None) -> None:
        self.model = model
        self.device = device
        self._embedder = embedder

    @property
    def embedder(self) -> Embedder:
        """The ctxkit embedder (loaded on first use)."""
        if self._embedder is None:
            self._embedder = get_embedder(self.model, device=self.device)
        return self._embedder

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.embedder.encode(list(input)))

    @staticmethod
    def name() -> str:
        return "ctxkit"

    def default_space(self) -> str:  # type: ignore[override]
        return "cosine"

    def supported_spaces(self) -> list[str]:  # type: ignore[override]
        return ["cosine", "ip", "l2"]

    def get_config(self) -> dict[str, Any]:
        return {"model": self.model}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> CtxkitEmbeddingFunction:
        return CtxkitEmbeddingFunction(model=config.get("model", "default"))

    def is_legacy(self) -> bool:
        return False
