"""Drop-in integrations: ctxkit pipelines and generators inside LangChain and LlamaIndex.

Each framework is imported only when its name is used here (``import ctxkit.integrations`` stays
light). ``ctxkit.integrations.langchain`` needs the ``langchain`` extra,
``ctxkit.integrations.llama_index`` the ``llamaindex`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__all__ = [
    "CtxkitChatModel",
    "CtxkitCompressor",
    "CtxkitEmbedding",
    "CtxkitEmbeddings",
    "CtxkitLLM",
    "CtxkitLlamaRetriever",
    "CtxkitNodePostprocessor",
    "CtxkitRetriever",
    "CtxkitRunnable",
    "as_runnable",
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


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
