"""Drop-in integrations: ctxkit pipelines and generators inside LangChain and LlamaIndex.

Each framework is imported only when its name is used here (``import ctxkit.integrations`` stays
light). ``ctxkit.integrations.langchain`` needs the ``langchain`` extra,
``ctxkit.integrations.llama_index`` the ``llamaindex`` extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "CtxkitRetriever",
    "CtxkitCompressor",
    "CtxkitRunnable",
    "CtxkitChatModel",
    "CtxkitEmbeddings",
    "as_runnable",
    "CtxkitLlamaRetriever",
    "CtxkitNodePostprocessor",
    "CtxkitLLM",
    "CtxkitEmbedding",
]

_LAZY = {
    "CtxkitRetriever": "ctxkit.integrations.langchain",
    "CtxkitCompressor": "ctxkit.integrations.langchain",
    "CtxkitRunnable": "ctxkit.integrations.langchain",
    "CtxkitChatModel": "ctxkit.integrations.langchain",
    "CtxkitEmbeddings": "ctxkit.integrations.langchain",
    "as_runnable": "ctxkit.integrations.langchain",
    "CtxkitLlamaRetriever": "ctxkit.integrations.llama_index",
    "CtxkitNodePostprocessor": "ctxkit.integrations.llama_index",
    "CtxkitLLM": "ctxkit.integrations.llama_index",
    "CtxkitEmbedding": "ctxkit.integrations.llama_index",
}

if TYPE_CHECKING:
    from .langchain import (
        CtxkitChatModel,
        CtxkitCompressor,
        CtxkitEmbeddings,
        CtxkitRetriever,
        CtxkitRunnable,
        as_runnable,
    )
    from .llama_index import (
        CtxkitEmbedding,
        CtxkitLlamaRetriever,
        CtxkitLLM,
        CtxkitNodePostprocessor,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ctxkit.integrations' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
