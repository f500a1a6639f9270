"""LangChainGenerator with real LangChain chat models that run offline.

``ParrotFakeChatModel`` and ``FakeListChatModel`` are real ``BaseChatModel`` classes shipped by
langchain-core for testing; ``Picky`` below is an ordinary custom chat model (the documented way
to write one: subclass ``BaseChatModel`` and implement ``_generate``) that fails on some inputs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel, ParrotFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from ctxkit import ContextState, Passage, Pipeline
from ctxkit.errors import ConfigError, InputError
from ctxkit.llm import GenerateAnswer, LangChainGenerator

SEEN_ROLES: list[list[str]] = []


class Picky(BaseChatModel):
    """Answers with the upper-cased last message; raises on messages containing 'boom'."""

    @property
    def _llm_type(self) -> str:
        return "picky"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        SEEN_ROLES.append([m.type for m in messages])
        last = str(messages[-1].content)
        if "boom" in last:
            raise ValueError("picky model refuses 'boom'")
        msg = AIMessage(content=last.upper(), usage_metadata={"input_tokens": len(last), "output_tokens": 3,
                                                               "total_tokens": len(last) + 3},
                        response_metadata={"finish_reason": "length" if "long" in last else "stop"})
        return ChatResult(generations=[ChatGeneration(message=msg)])


def test_batch_keeps_order_and_converts_roles():
    gen = LangChainGenerator(Picky())
    SEEN_ROLES.clear()
    out = gen.generate([
        [{"role": "system", "content": "s"}, {"role": "user", "content": "hello"},
         {"role": "assistant", "content": "a"}, {"role": "user", "content": "again"}],
        "second",
        "a long one",
    ])
    assert [g.text for g in out] == ["AGAIN", "SECOND", "A LONG ONE"]
    assert [g.finish_reason for g in out] == ["stop", "stop", "length"]
    assert out[0].n_tokens == 3 and out[1].n_prompt_tokens == len("second")
    assert ["system", "human", "ai", "human"] in SEEN_ROLES


def test_one_failing_item_does_not_abort_the_batch():
    out = LangChainGenerator(Picky(), max_concurrency=2).generate(["fine", "boom", "also fine", [{"role": "robot", "content": "x"}]])
    assert [g.ok for g in out] == [True, False, True, False]
    assert "picky model refuses" in out[1].error and out[1].finish_reason == "error"
    assert out[2].text == "ALSO FINE" and "invalid conversation" in out[3].error


def test_async_batch_and_stop_strings():
    gen = LangChainGenerator(ParrotFakeChatModel())
    out = asyncio.run(gen.agenerate(["alpha STOP beta", "gamma"], stop=["STOP"]))
    assert [g.text for g in out] == ["alpha", "gamma"]
    assert out[0].finish_reason == "stop"


def test_in_the_generate_stage_with_a_fake_list_model():
    gen = LangChainGenerator(FakeListChatModel(responses=["1889", "Fleming"]))
    stage = GenerateAnswer(generator=gen)
    states = Pipeline([stage]).batch([
        ContextState(query="when?", passages=[Passage(id="a", text="completed in 1889")]),
        ContextState(query="who?", passages=[Passage(id="b", text="fleming")]),
    ])
    assert sorted(s.answer for s in states) == ["1889", "Fleming"]
    assert "[1] completed in 1889" in states[0].prompt


def test_validation():
    with pytest.raises(ConfigError, match="BaseChatModel"):
        LangChainGenerator(object())
    with pytest.raises(ConfigError, match="max_concurrency"):
        LangChainGenerator(Picky(), max_concurrency=0)
    with pytest.raises(InputError):
        LangChainGenerator(Picky()).generate("not a list")
    with pytest.raises(NotImplementedError):
        LangChainGenerator(Picky()).score([["x"]], ["y"])
    assert LangChainGenerator(Picky()).generate([]) == []
