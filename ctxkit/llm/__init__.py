"""ctxkit.llm: generators (transformers, OpenAI-compatible HTTP, LangChain), the generation stage,
and a small OpenAI-compatible server.

Everything here is imported lazily: ``import ctxkit.llm`` loads neither torch nor httpx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__all__ = [
    "BaseGenerator",
    "GenerateAnswer",
    "Generation",
    "Generator",
    "LangChainGenerator",
    "Message",
    "OpenAIGenerator",
    "SamplingSettings",
    "TransformersGenerator",
    "as_messages",
    "build_generator",
    "get_generator",
    "serve",
]

_LAZY = {
    "Message": "ctxkit.llm.base",
    "SamplingSettings": "ctxkit.llm.base",
    "Generation": "ctxkit.llm.base",
    "Generator": "ctxkit.llm.base",
    "BaseGenerator": "ctxkit.llm.base",
    "as_messages": "ctxkit.llm.base",
    "TransformersGenerator": "ctxkit.llm.transformers",
    "OpenAIGenerator": "ctxkit.llm.openai",
    "LangChainGenerator": "ctxkit.llm.langchain",
    "GenerateAnswer": "ctxkit.llm.stage",
    "build_generator": "ctxkit.llm.spec",
    "get_generator": "ctxkit.llm.spec",
    "serve": "ctxkit.llm.server",
}

if TYPE_CHECKING:
    from .base import BaseGenerator, Generation, Generator, Message, SamplingSettings, as_messages
    from .langchain import LangChainGenerator
    from .openai import OpenAIGenerator
    from .server import serve
    from .spec import build_generator, get_generator
    from .stage import GenerateAnswer
    from .transformers import TransformersGenerator


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
