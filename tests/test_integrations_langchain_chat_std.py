"""LangChain's standard chat-model test-suites (unit + integration) on CtxkitChatModel.

The generator is the deterministic :class:`EchoGenerator` (a real ctxkit generator that answers
with what it was asked), so the suites check the adapter: messages, batching, async, streaming,
usage metadata and LangSmith parameters. Tool calling and structured output are not supported.
"""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_tests")

from _integration_stages import EchoGenerator
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from ctxkit.integrations.langchain import CtxkitChatModel


class _Params:
    @property
    def chat_model_class(self) -> type[CtxkitChatModel]:
        return CtxkitChatModel

    @property
    def chat_model_params(self) -> dict:
        return {"generator": EchoGenerator()}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False


class TestCtxkitChatModelUnit(_Params, ChatModelUnitTests):
    pass


class TestCtxkitChatModelIntegration(_Params, ChatModelIntegrationTests):
    pass
