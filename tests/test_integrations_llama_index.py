"""LlamaIndex integration with real llama-index-core objects (retriever, postprocessor, LLM,
RetrieverQueryEngine), all offline."""

from __future__ import annotations

import asyncio
import threading

import pytest

pytest.importorskip("llama_index.core")

from _integration_stages import EchoGenerator, FlagPoison, KeywordRetriever, ShortFirstRanker
from llama_index.core import Settings
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from ctxkit import Pipeline
from ctxkit.errors import ConfigError, CtxkitError, InputError
from ctxkit.integrations.llama_index import CtxkitLlamaRetriever, CtxkitLLM, CtxkitNodePostprocessor

QUERY = "Who discovered penicillin in 1928?"


@pytest.fixture(autouse=True)
def _offline_settings():
    """Nothing may fall back to a default (networked) embedder or LLM."""
    Settings.embed_model = MockEmbedding(embed_dim=8)
    Settings.llm = CtxkitLLM(generator=EchoGenerator())
    yield


def _pipe(k: int = 5) -> Pipeline:
    return Pipeline([KeywordRetriever(k=k), ShortFirstRanker(), FlagPoison()])


def test_retriever_nodes_keep_scores_hidden_from_llm_text():
    nodes = CtxkitLlamaRetriever(_pipe(), k=3).retrieve(QUERY)
    assert len(nodes) == 3 and all(isinstance(n, NodeWithScore) for n in nodes)
    for rank, n in enumerate(nodes):
        meta = n.node.metadata
        assert list(meta["scores"]) == ["keyword_retriever", "short_first_ranker"]
        assert n.score == meta["scores"]["short_first_ranker"] and meta["rank"] == rank
        llm_text = n.node.get_content(metadata_mode=MetadataMode.LLM)
        assert "short_first_ranker" not in llm_text and "source: corpus" in llm_text
    poison = [n for n in nodes if n.node.node_id == "poison#0"]
    assert poison and poison[0].node.metadata["conflicts"][0]["chunk_span"] == "Louis Pasteur"
    with pytest.raises(ConfigError):
        CtxkitLlamaRetriever(_pipe(), k=0)


async def test_aretrieve_awaits_pipeline_off_the_loop():
    seen: list[int] = []

    class Recorder(KeywordRetriever):
        def run(self, states):
            seen.append(threading.get_ident())
            return super().run(states)

    nodes = await CtxkitLlamaRetriever([Recorder(k=2)]).aretrieve(QUERY)
    assert len(nodes) == 2
    assert seen and seen[0] != threading.get_ident()


def test_postprocessor_reranks_real_nodes_and_keeps_them():
    nodes = [
        NodeWithScore(node=TextNode(id_="a", text="Alexander Fleming discovered penicillin in 1928, a long sentence.", metadata={"file": "x.md"}), score=0.9),
        NodeWithScore(node=TextNode(id_="b", text="Penicillin was discovered by Louis Pasteur in 1901."), score=0.4),
    ]
    post = CtxkitNodePostprocessor(pipeline=[ShortFirstRanker(), FlagPoison()])
    out = post.postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.node_id for n in out] == ["b", "a"]
    assert out[1].node.metadata["file"] == "x.md"
    assert out[1].node.metadata["scores"]["input"] == 0.9
    assert out[0].node.metadata["flags"] == ["inappropriate"]
    assert nodes[0].node.metadata == {"file": "x.md"}, "input nodes are not mutated"
    out_async = asyncio.run(
        CtxkitNodePostprocessor(pipeline=[ShortFirstRanker()], k=1).apostprocess_nodes(nodes, QueryBundle(QUERY))
    )
    assert [n.node.node_id for n in out_async] == ["b"]
    with pytest.raises(InputError, match="needs the query"):
        post.postprocess_nodes(nodes)
    with pytest.raises(ConfigError):
        CtxkitNodePostprocessor(pipeline=[ShortFirstRanker()], k="3x")


def test_llm_chat_complete_settings_and_errors():
    gen = EchoGenerator()
    llm = CtxkitLLM(generator=gen, max_new_tokens=30)
    assert llm.metadata.is_chat_model and llm.metadata.num_output == 30
    assert llm.complete("hello").text == "[user] hello"
    r = llm.chat([ChatMessage(role=MessageRole.SYSTEM, content="s"), ChatMessage(role=MessageRole.USER, content="q")])
    assert r.message.content == "[system,user] q"
    assert asyncio.run(llm.acomplete("hey")).text == "[user] hey"
    assert asyncio.run(llm.achat([ChatMessage(role="user", content="x")])).message.content == "[user] x"
    assert "".join(c.delta for c in llm.stream_complete("streamed")) == "[user] streamed"
    llm.complete("x", max_tokens=5, stop=["Z"])
    assert gen.settings_seen[-1].max_new_tokens == 5 and gen.settings_seen[-1].stop == ["Z"]
    gen.calls.clear()
    assert llm.generate_batch(["a", "b", "c"]) == ["[user] a", "[user] b", "[user] c"]
    assert gen.calls == [3]
    with pytest.raises(CtxkitError, match="asked to fail"):
        llm.complete("FAIL")
    with pytest.raises(InputError, match="role"):
        llm.chat([ChatMessage(role=MessageRole.TOOL, content="t")])


def test_retriever_query_engine_end_to_end_offline():
    gen = EchoGenerator()
    engine = RetrieverQueryEngine.from_args(
        CtxkitLlamaRetriever(Pipeline([KeywordRetriever(k=6)]), k=4),
        llm=CtxkitLLM(generator=gen, max_new_tokens=1500, context_window=8192),
        node_postprocessors=[CtxkitNodePostprocessor(pipeline=[ShortFirstRanker(), FlagPoison()], k=3)],
    )
    resp = engine.query(QUERY)
    assert len(resp.source_nodes) == 3
    assert all("short_first_ranker" in n.node.metadata["scores"] for n in resp.source_nodes)
    # the LLM saw the context text (but not ctxkit's score metadata) and the question
    assert "Louis Pasteur" in str(resp) and QUERY in str(resp)
    assert "short_first_ranker" not in str(resp)
    aresp = asyncio.run(engine.aquery("When was the Eiffel Tower completed?"))
    assert aresp.source_nodes[0].node.node_id.startswith("eiffel")


def test_pipeline_adapters():
    pipe = _pipe()
    assert isinstance(pipe.as_retriever(k=2, framework="llamaindex"), CtxkitLlamaRetriever)
    assert isinstance(pipe.as_postprocessor(k=2), CtxkitNodePostprocessor)
    r = pipe.as_retriever(framework="llamaindex", score_stage="keyword_retriever")
    assert all(n.score == n.node.metadata["scores"]["keyword_retriever"] for n in r.retrieve(QUERY))
    with pytest.raises(ConfigError, match="framework"):
        pipe.as_retriever(framework="haystack")


@pytest.mark.slow
def test_vector_store_index_with_ctxkit_embedding_and_postprocessor():
    from _integration_stages import CORPUS
    from llama_index.core import Document, VectorStoreIndex

    from ctxkit.integrations.llama_index import CtxkitEmbedding

    emb = CtxkitEmbedding(device="cpu")
    assert len(emb.get_query_embedding("hello")) == 384
    docs = [Document(text=t, id_=pid) for pid, t in CORPUS.items()]
    index = VectorStoreIndex.from_documents(docs, embed_model=emb)
    engine = index.as_query_engine(
        llm=CtxkitLLM(generator=EchoGenerator(), max_new_tokens=1500, context_window=8192),
        similarity_top_k=4,
        node_postprocessors=[CtxkitNodePostprocessor(pipeline=[ShortFirstRanker(), FlagPoison()], k=3)],
    )
    resp = engine.query("Who discovered penicillin?")
    texts = [n.node.get_content() for n in resp.source_nodes]
    assert len(texts) == 3 and any("Fleming" in t for t in texts)
    for n in resp.source_nodes:
        assert list(n.node.metadata["scores"]) == ["input", "short_first_ranker"]
    assert [len(t) for t in texts] == sorted(len(t) for t in texts)
