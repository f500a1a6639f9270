"""LangChain integration: retriever (LangChain's standard tests), compressor, Runnable, chat model."""

from __future__ import annotations

import asyncio
import threading

import pytest

pytest.importorskip("langchain_core")

from _integration_stages import EchoGenerator, FlagPoison, KeywordRetriever, ShortFirstRanker
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_tests.integration_tests import RetrieversIntegrationTests

from ctxkit import BaseStage, ContextState, Pipeline
from ctxkit.errors import ConfigError, CtxkitError, InputError
from ctxkit.integrations.langchain import (
    CtxkitChatModel,
    CtxkitCompressor,
    CtxkitRetriever,
    CtxkitRunnable,
)

QUERY = "Who discovered penicillin in 1928?"


def _pipe(k: int = 5) -> Pipeline:
    return Pipeline([KeywordRetriever(k=k), ShortFirstRanker(), FlagPoison()])


class TestCtxkitRetrieverStandard(RetrieversIntegrationTests):
    """LangChain's own retriever test-suite, over a real ctxkit pipeline."""

    @property
    def retriever_constructor(self) -> type[CtxkitRetriever]:
        return CtxkitRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"pipeline": _pipe(k=8), "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return "Who discovered penicillin and when was the Eiffel Tower completed in Paris?"


@pytest.fixture(scope="module")
def chroma_index(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real embedded Chroma + BM25 index (MiniLM embeddings) built with ctxkit's ingest."""
    from _integration_stages import CORPUS

    from ctxkit.retrievers import ingest

    path = tmp_path_factory.mktemp("lc_index")
    ingest([{"id": pid.split("#")[0] + pid.split("#")[1], "text": t} for pid, t in CORPUS.items()], index=path)
    return str(path)


@pytest.mark.slow
class TestCtxkitRetrieverOverChromaStandard(RetrieversIntegrationTests):
    """LangChain's standard retriever tests over hybrid Chroma + BM25 retrieval."""

    @pytest.fixture(autouse=True)
    def _index(self, chroma_index: str) -> None:
        self.index = chroma_index

    @property
    def retriever_constructor(self) -> type[CtxkitRetriever]:
        return CtxkitRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        from ctxkit.retrievers import BM25Retriever, ChromaRetriever, HybridRetriever

        hybrid = HybridRetriever(
            retrievers=[ChromaRetriever(path=self.index), BM25Retriever(path=self.index)], k=6
        )
        return {"pipeline": Pipeline([hybrid]), "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return "Who discovered penicillin?"


def test_documents_keep_every_stage_score_id_and_conflicts():
    docs = CtxkitRetriever(pipeline=_pipe()).invoke(QUERY)
    assert docs, "the keyword stage should find the penicillin passages"
    ids = [d.id for d in docs]
    assert "fleming#0" in ids and "poison#0" in ids
    for rank, d in enumerate(docs):
        assert list(d.metadata["scores"]) == ["keyword_retriever", "short_first_ranker"]
        assert d.metadata["score"] == d.metadata["scores"]["short_first_ranker"]
        assert d.metadata["rank"] == rank
        assert d.metadata["source"] == "corpus"
        assert d.metadata["doc_id"] == d.id.split("#")[0]
    # ranking stage order (shortest first) is the documents' order
    lengths = [len(d.page_content) for d in docs]
    assert lengths == sorted(lengths)
    poison = next(d for d in docs if d.id == "poison#0")
    assert poison.metadata["conflicts"][0]["chunk_span"] == "Louis Pasteur"
    assert poison.metadata["flags"] == ["inappropriate"]
    assert "conflicts" not in next(d for d in docs if d.id == "fleming#0").metadata


def test_score_stage_picks_the_main_score():
    docs = _pipe().as_retriever(score_stage="keyword_retriever").invoke(QUERY)
    assert all(d.metadata["score"] == d.metadata["scores"]["keyword_retriever"] for d in docs)
    docs = CtxkitCompressor(pipeline=[ShortFirstRanker()], score_stage="nope").compress_documents(docs, QUERY)
    assert all(d.metadata["score"] == d.metadata["scores"]["short_first_ranker"] for d in docs)


def test_k_at_construction_and_per_call_sync_and_async():
    r = CtxkitRetriever(pipeline=_pipe(k=8), k=2)
    assert len(r.invoke(QUERY)) == 2
    assert len(r.invoke(QUERY, k=1)) == 1
    assert len(asyncio.run(r.ainvoke(QUERY, k=3))) == 3
    # k beyond what the pipeline kept returns what exists
    assert len(CtxkitRetriever(pipeline=_pipe(k=2), k=10).invoke(QUERY)) == 2
    with pytest.raises(InputError, match="positive integer"):
        r.invoke(QUERY, k=0)
    with pytest.raises(InputError, match="unknown options"):
        r.invoke(QUERY, top_n=3)
    with pytest.raises(InputError, match="state_metadata"):
        r.invoke(QUERY, state_metadata=["x"])
    with pytest.raises(InputError, match="empty"):
        r.invoke("   ")


class _MetaEcho(BaseStage):
    """Copies state metadata onto the passages (shows per-call metadata reaches the stages)."""

    def run(self, states):
        for s in states:
            for p in s.passages:
                p.metadata["seen_beliefs"] = s.metadata.get("beliefs")
        return states


def test_per_call_state_metadata_reaches_the_stages():
    pipe = Pipeline([KeywordRetriever(k=2), _MetaEcho()])
    docs = CtxkitRetriever(pipeline=pipe).invoke(QUERY, state_metadata={"beliefs": ["b1"]})
    assert docs[0].metadata["seen_beliefs"] == ["b1"]
    out = CtxkitRetriever(pipeline=pipe).batch([QUERY, QUERY], state_metadata={"beliefs": ["b2"]})
    assert out[1][0].metadata["seen_beliefs"] == ["b2"]
    docs = pipe.as_runnable().invoke({"question": QUERY, "beliefs": ["b3"]})
    assert docs[0].metadata["seen_beliefs"] == ["b3"]


def test_retriever_accepts_stage_list_and_config_dict():
    from ctxkit.config import register_stage

    register_stage("test_keyword", KeywordRetriever)
    r1 = CtxkitRetriever(pipeline=[KeywordRetriever(k=3)])
    r2 = CtxkitRetriever(pipeline={"stages": [{"type": "test_keyword", "k": 3}]})
    assert [d.id for d in r1.invoke(QUERY)] == [d.id for d in r2.invoke(QUERY)]
    with pytest.raises(ConfigError):
        CtxkitRetriever(pipeline=42)


class _ThreadRecorder(KeywordRetriever):
    """Records the thread it ran on (to show the async path leaves the event loop's thread)."""

    def run(self, states):
        _THREADS.append(threading.get_ident())
        return super().run(states)


_THREADS: list[int] = []


async def test_async_path_runs_off_the_event_loop_and_loop_stays_responsive():
    _THREADS.clear()
    r = CtxkitRetriever(pipeline=[_ThreadRecorder(k=3)], k=2)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    t = asyncio.create_task(ticker())
    docs = await r.ainvoke(QUERY)
    t.cancel()
    assert len(docs) == 2
    assert _THREADS and _THREADS[0] != threading.get_ident()
    assert ticks > 0


def test_retriever_batch_is_one_pass_per_stage_and_keeps_callbacks():
    from langchain_core.callbacks import BaseCallbackHandler

    calls: list[int] = []

    class CountingRetriever(KeywordRetriever):
        def run(self, states):
            calls.append(len(states))
            return super().run(states)

    class Ends(BaseCallbackHandler):
        n = 0

        def on_retriever_end(self, documents, **kwargs):
            Ends.n += 1

    r = CtxkitRetriever(pipeline=[CountingRetriever(k=3)], k=2)
    qs = [QUERY, "When was the Eiffel Tower completed?", QUERY]
    out = r.batch(qs, config={"callbacks": [Ends()]})
    assert calls == [3] and Ends.n == 3
    assert out[1][0].id.startswith("eiffel") and [d.id for d in out[0]] == [d.id for d in out[2]]
    calls.clear()
    aout = asyncio.run(r.abatch(qs[:2]))
    assert calls == [2] and aout[1][0].id.startswith("eiffel")


def test_compressor_reranks_langchain_docs_and_keeps_earlier_scores():
    retrieved = CtxkitRetriever(pipeline=[KeywordRetriever(k=5)]).invoke(QUERY)
    comp = CtxkitCompressor(pipeline=[ShortFirstRanker(), FlagPoison()], k=2)
    out = comp.compress_documents(retrieved, QUERY)
    assert len(out) == 2
    for d in out:
        assert list(d.metadata["scores"]) == ["keyword_retriever", "short_first_ranker"]
    shortest = min(retrieved, key=lambda d: len(d.page_content))
    assert out[0].id == shortest.id
    # plain documents from elsewhere (no ids, a vector-store score) work too
    plain = [
        Document(page_content="Penicillin was discovered by Louis Pasteur in 1901.", metadata={"score": 0.2}),
        Document(page_content="Alexander Fleming discovered penicillin in 1928, a landmark.", metadata={"score": 0.9}),
    ]
    out2 = asyncio.run(CtxkitCompressor(pipeline=[ShortFirstRanker(), FlagPoison()]).acompress_documents(plain, QUERY))
    assert [d.id for d in out2] == ["doc0", "doc1"]
    assert out2[0].metadata["scores"]["input"] == 0.2
    assert out2[0].metadata["conflicts"][0]["kind"] == "entity"
    assert comp.compress_documents([], QUERY) == []
    with pytest.raises(InputError, match="not a LangChain Document"):
        comp.compress_documents(["text"], QUERY)  # type: ignore[list-item]


def test_compressor_in_contextual_compression_retriever():
    from langchain_classic.retrievers import ContextualCompressionRetriever

    ccr = ContextualCompressionRetriever(
        base_compressor=CtxkitCompressor(pipeline=[ShortFirstRanker()], k=1),
        base_retriever=CtxkitRetriever(pipeline=[KeywordRetriever(k=4)]),
    )
    docs = ccr.invoke(QUERY)
    assert len(docs) == 1 and "short_first_ranker" in docs[0].metadata["scores"]


def test_runnable_outputs_and_batch_is_one_pass_per_stage():
    calls: list[int] = []

    class CountingRetriever(KeywordRetriever):
        def run(self, states):
            calls.append(len(states))
            return super().run(states)

    pipe = Pipeline([CountingRetriever(k=4), FlagPoison()])
    docs = pipe.as_runnable(k=2).invoke(QUERY)
    assert len(docs) == 2 and isinstance(docs[0], Document)
    state = CtxkitRunnable(pipe, output="state").invoke({"question": QUERY})
    assert isinstance(state, ContextState) and state.trace.stages
    context = CtxkitRunnable(pipe, output="context").invoke(QUERY)
    assert context.startswith("[1] ") and "conflict (entity)" in context
    calls.clear()
    out = CtxkitRunnable(pipe).batch([QUERY, "When was the Eiffel Tower completed?", "Marie Curie prizes"])
    assert calls == [3], "batch must send all queries through the stage at once"
    assert out[1][0].id.startswith("eiffel")
    calls.clear()
    aout = asyncio.run(CtxkitRunnable(pipe).abatch([QUERY, "Marie Curie prizes"]))
    assert calls == [2] and aout[1][0].id.startswith("curie")
    with pytest.raises(ConfigError, match="output"):
        CtxkitRunnable(pipe, output="html")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="'query'"):
        CtxkitRunnable(pipe).invoke({"q": QUERY})


def test_lcel_chain_with_ctxkit_chat_model():
    gen = EchoGenerator()
    model = CtxkitChatModel(generator=gen, max_new_tokens=400)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer from the context."), ("human", "Context:\n{context}\n\nQuestion: {question}")]
    )
    chain = {"context": _pipe().as_runnable(output="context"), "question": RunnablePassthrough()} | prompt | model
    msg = chain.invoke(QUERY)
    assert isinstance(msg, AIMessage)
    assert msg.content.startswith("[system,user] Context:\n[1] ")
    assert "Louis Pasteur" in msg.content and msg.response_metadata["finish_reason"] == "stop"
    assert msg.usage_metadata["input_tokens"] > 0


def test_chat_model_batches_roles_settings_and_errors():
    gen = EchoGenerator()
    model = CtxkitChatModel(generator=gen, temperature=0.0)
    outs = model.batch(["one", "two", [SystemMessage("s"), HumanMessage("three")]], max_tokens=9)
    assert gen.calls == [3], "batch must reach the generator as one call"
    assert [o.content for o in outs] == ["[user] on", "[user] tw", "[system,u"]
    assert gen.settings_seen[-1].max_new_tokens == 9
    gen.calls.clear()
    aouts = asyncio.run(model.abatch(["a", "b"]))
    assert gen.calls == [2] and [o.content for o in aouts] == ["[user] a", "[user] b"]
    assert asyncio.run(model.ainvoke("hello")).content == "[user] hello"
    model.invoke("x", stop=["END"])
    assert gen.settings_seen[-1].stop == ["END"]
    with pytest.raises(CtxkitError, match="asked to fail"):
        model.invoke("please FAIL")
    with pytest.raises(InputError, match="unsupported options"):
        model.invoke("x", top_logprobs=3)
    with pytest.raises(ConfigError, match="generator"):
        CtxkitChatModel(generator="gpt")
    with pytest.raises(ConfigError, match="positive integer"):
        CtxkitRetriever(pipeline=_pipe(), k=-1)


@pytest.mark.slow
def test_chat_model_over_real_transformers_generator(tiny_llm_dir):
    tg = pytest.importorskip("ctxkit.llm.transformers")
    model = CtxkitChatModel(generator=tg.TransformersGenerator(str(tiny_llm_dir), device="cpu"), max_new_tokens=4)
    outs = model.batch(["the quick brown fox", "penicillin was"])
    assert len(outs) == 2 and all(isinstance(o, AIMessage) for o in outs)
    assert all(o.usage_metadata["output_tokens"] <= 4 for o in outs)


@pytest.mark.slow
def test_ctxkit_embeddings_in_a_langchain_vector_store():
    from _integration_stages import CORPUS
    from langchain_core.vectorstores import InMemoryVectorStore

    from ctxkit.integrations.langchain import CtxkitEmbeddings

    emb = CtxkitEmbeddings(device="cpu")
    vecs = emb.embed_documents(["a", "b"])
    assert len(vecs) == 2 and len(vecs[0]) == 384 and emb.embed_documents([]) == []
    store = InMemoryVectorStore(embedding=emb)
    store.add_documents([Document(id=pid, page_content=t) for pid, t in CORPUS.items()])
    hits = store.similarity_search_with_score("Who discovered penicillin?", k=3)
    assert hits[0][0].id in {"fleming#0", "poison#0"}
    docs = [Document(id=d.id, page_content=d.page_content, metadata={"score": s}) for d, s in hits]
    out = CtxkitCompressor(pipeline=[ShortFirstRanker(), FlagPoison()]).compress_documents(docs, QUERY)
    assert all(list(d.metadata["scores"]) == ["input", "short_first_ranker"] for d in out)
    assert asyncio.run(emb.aembed_query("x")) == emb.embed_query("x")
