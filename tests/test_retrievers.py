"""Retrievers: chunking, fusion, the index (real embedded Chroma + SQLite + bm25s), hybrid."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from pydantic import Field

from ctxkit import ConfigError, ContextState, IndexNotFoundError, InputError, Passage, Pipeline
from ctxkit.config import build_stage, register_stage
from ctxkit.retrievers import (
    BaseRetriever,
    BM25Retriever,
    ChromaRetriever,
    Document,
    HybridRetriever,
    Index,
    chunk_text,
    fuse,
    ingest,
    split_sentences,
)
from ctxkit.retrievers.chunking import length_function
from ctxkit.retrievers.hybrid import normalize
from ctxkit.retrievers.store.loaders import LoadLog, load_documents

# --------------------------------------------------------------------------------------------
# chunking


def test_split_sentences_handles_abbreviations_decimals_and_newlines():
    text = (
        "Dr. Smith paid 3.50 dollars, e.g. for apples. He left at 5 p.m. yesterday! "
        "Did J. R. R. Tolkien write it?\nYes.\n\nA new paragraph\nwrapped over lines. The U.S. "
        "economy grew 2.5% in 2020... Then it fell."
    )
    assert split_sentences(text) == [
        "Dr. Smith paid 3.50 dollars, e.g. for apples.",
        "He left at 5 p.m. yesterday!",
        "Did J. R. R. Tolkien write it?",
        "Yes.",
        "A new paragraph wrapped over lines.",
        "The U.S. economy grew 2.5% in 2020...",
        "Then it fell.",
    ]


def test_split_sentences_markdown_blocks_and_blank_input():
    text = "# Install\nRun pip.\n- first item\n- second item\n\n\n   \n"
    assert split_sentences(text) == ["# Install", "Run pip.", "- first item", "- second item"]
    assert split_sentences("") == []
    assert split_sentences("   \n\n\t ") == []
    assert split_sentences('He said "stop." Then left.') == ['He said "stop."', "Then left."]
    with pytest.raises(TypeError):
        split_sentences(None)  # type: ignore[arg-type]


def test_chunk_text_respects_size_and_overlaps_whole_sentences():
    sents = [f"Sentence number {i} has exactly seven words." for i in range(10)]
    chunks = chunk_text(" ".join(sents), size=20, overlap=7)
    assert all(0 < len(c.split()) <= 20 for c in chunks)
    assert all(c.strip() for c in chunks)
    # every sentence appears, in order, and consecutive chunks share their boundary sentence
    joined = " ".join(chunks)
    assert all(s in joined for s in sents)
    for a, b in itertools.pairwise(chunks):
        assert split_sentences(a)[-1] == split_sentences(b)[0]
    no_overlap = chunk_text(" ".join(sents), size=20, overlap=0)
    assert sum(len(split_sentences(c)) for c in no_overlap) == 10


def test_chunk_text_splits_an_overlong_sentence_on_word_boundaries():
    words = [f"w{i}" for i in range(25)]
    chunks = chunk_text(" ".join(words) + ".", size=10, overlap=2)
    assert all(len(c.split()) <= 10 for c in chunks)
    assert " ".join(chunks).replace(".", "").split() == words
    assert chunk_text("x" * 12, size=5, overlap=0, unit="chars") == ["xxxxx", "xxxxx", "xx"]


def test_chunk_text_edge_cases_and_errors():
    assert chunk_text("", 10, 2) == []
    assert chunk_text(" \n\n ", 10, 2) == []
    assert chunk_text("One short sentence.", 100, 10) == ["One short sentence."]
    with pytest.raises(ConfigError):
        chunk_text("a b", size=0, overlap=0)
    with pytest.raises(ConfigError):
        chunk_text("a b", size=5, overlap=5)
    with pytest.raises(ConfigError, match="tokenizer"):
        chunk_text("a b", size=5, overlap=1, unit="tokens")
    with pytest.raises(ConfigError, match="unknown unit"):
        length_function("lines")  # type: ignore[arg-type]
    # tokens with any callable tokenizer (here: characters as tokens)
    chunks = chunk_text("Ab cd. Ef gh. Ij kl.", size=8, overlap=0, unit="tokens", tokenizer=list)
    assert chunks == ["Ab cd.", "Ef gh.", "Ij kl."]


# --------------------------------------------------------------------------------------------
# fusion on synthetic ranked lists


def test_rrf_matches_the_formula_and_weights():
    a = [("x", 9.0), ("y", 5.0), ("z", 1.0)]
    b = [("z", 0.9), ("x", 0.8)]
    fused = dict(fuse([a, b], method="rrf", rrf_k=60))
    assert fused["x"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["z"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["y"] == pytest.approx(1 / 62)
    order = [pid for pid, _ in fuse([a, b], method="rrf")]
    assert order == ["x", "z", "y"]
    weighted = [pid for pid, _ in fuse([a, b], method="rrf", weights=[0.0, 1.0])]
    assert weighted[:2] == ["z", "x"]


def test_convex_minmax_uses_score_gaps_and_missing_gets_zero():
    dense = [("a", 0.9), ("b", 0.5), ("c", 0.1)]
    lexical = [("c", 10.0), ("d", 2.0)]
    fused = dict(fuse([dense, lexical], method="convex", normalization="minmax", weights=[0.7, 0.3]))
    assert fused["a"] == pytest.approx(0.7 * 1.0)
    assert fused["b"] == pytest.approx(0.7 * 0.5)
    assert fused["c"] == pytest.approx(0.3 * 1.0)
    assert fused["d"] == pytest.approx(0.0)
    # weights are rescaled to sum to one
    assert dict(fuse([dense, lexical], weights=[7, 3])) == pytest.approx(fused)


def test_normalizations():
    assert normalize([3.0, 1.0, 2.0], "minmax") == [1.0, 0.0, 0.5]
    assert normalize([0.5, 0.0], "tmm", floor=-1.0) == pytest.approx([1.0, 1 / 1.5])
    z = normalize([1.0, 2.0, 3.0], "zscore")
    assert sum(z) == pytest.approx(0.0) and z[2] > z[1] > z[0]
    assert normalize([4.0, 4.0], "minmax") == [1.0, 1.0]
    assert normalize([], "minmax") == []
    with pytest.raises(ConfigError):
        fuse([[("a", 1.0)]], weights=[1.0, 2.0])
    with pytest.raises(ConfigError):
        fuse([[("a", 1.0)]], method="max")  # type: ignore[arg-type]


class ListRetriever(BaseRetriever):
    """Returns fixed ranked lists (id, score) regardless of the query; records the depth asked."""

    stage_type: ClassVar[str] = "test_list_retriever"
    kind: ClassVar[str] = "other"
    items: list[tuple[str, float]] = Field(default_factory=list)
    asked: ClassVar[list[int]] = []

    def _retrieve(self, queries, k, wheres):
        ListRetriever.asked.append(k)
        return [
            [self._p(pid, s) for pid, s in self.items[:k]] for _ in queries
        ]

    def _p(self, pid: str, s: float) -> Passage:
        p = Passage(id=pid, text=f"text {pid}", doc_id=pid.split("#")[0])
        self.set_score(p, s)
        return p


class DenseList(ListRetriever):
    stage_type: ClassVar[str] = "test_dense_list"
    kind: ClassVar[str] = "dense"


class LexList(ListRetriever):
    stage_type: ClassVar[str] = "test_lex_list"
    kind: ClassVar[str] = "lexical"


register_stage("test_dense_list", DenseList)
register_stage("test_lex_list", LexList)


def test_hybrid_fetches_candidates_keeps_input_scores_and_uses_kind_weights():
    dense = DenseList(name="dense", items=[("a#0", 0.9), ("b#0", 0.8), ("c#0", 0.1)])
    lex = LexList(name="lex", items=[("c#0", 12.0), ("a#0", 1.0), ("e#0", 0.5)])
    hybrid = HybridRetriever(retrievers=[dense, lex], k=2, candidates=50, fusion="convex")
    assert hybrid.effective_weights() == [0.7, 0.3]
    ListRetriever.asked.clear()
    state = Pipeline([hybrid]).run("anything")
    assert ListRetriever.asked == [50, 50]
    assert [p.id for p in state.passages] == ["a#0", "b#0"]
    a = state.passages[0]
    assert set(a.scores) == {"dense", "lex", "hybrid"}
    assert a.score == a.scores["hybrid"]
    assert a.scores["dense"] == pytest.approx(0.9) and a.scores["lex"] == pytest.approx(1.0)
    assert hybrid.last_weights == [[0.7, 0.3]]
    # plain RRF ranks c (top of BM25, last of dense) above b
    rrf = HybridRetriever(retrievers=[dense, lex], k=3, fusion="rrf")
    assert [p.id for p in rrf.retrieve(["q"])[0]] == ["a#0", "c#0", "b#0"]


def test_trust_features_read_the_query_and_both_lists():
    from ctxkit.retrievers.hybrid import trust_features

    dense = [("a", 0.8), ("b", 0.6), ("c", 0.4)]
    lex = [("c", 10.0), ("d", 4.0), ("a", 2.0)]
    f = trust_features("who wrote the book", dense, lex)
    assert f["dense_top"] == pytest.approx(0.8)
    assert f["dense_gap"] == pytest.approx(0.4)  # fewer than 10 items: the last one stands in
    assert f["lexical_peak"] == pytest.approx(0.8)  # 1 - 2/10
    assert f["overlap"] == pytest.approx(2 / 4)  # a and c of a, b, c, d
    assert f["dense_rates_lexical"] == pytest.approx((0.0 + 0.0 + 1.0) / 3)  # c=0, d missing=0, a=1
    assert f["lexical_rates_dense"] == pytest.approx((0.0 + 0.0 + 1.0) / 3)  # a=0, b missing, c=1
    assert f["log_query_words"] == pytest.approx(np.log(4))


def test_adaptive_fusion_decides_per_query(monkeypatch):
    from ctxkit.retrievers import hybrid as hybrid_mod

    dense = DenseList(name="dense", items=[("a#0", 0.9), ("b#0", 0.85), ("c#0", 0.8), ("d#0", 0.3)])
    lex = LexList(name="lex", items=[("c#0", 12.0), ("d#0", 11.0), ("b#0", 1.0)])
    h = HybridRetriever(retrievers=[dense, lex], k=4)
    assert h.fusion == "adaptive" and h.adaptive()
    # a trust model that leans on BM25 for long questions and on dense for short queries
    monkeypatch.setattr(hybrid_mod, "ADAPTIVE_MODEL", {"intercept": 4.0, "log_query_words": -4.0})
    short, long_q = "penicillin", "which scientist working in london discovered the antibiotic penicillin"
    res = h.retrieve([short, long_q])
    (ws, ls_), (wl, ll) = h.last_weights
    assert ws > 0.85 and wl < 0.15 and ws + ls_ == pytest.approx(1) and wl + ll == pytest.approx(1)
    assert res[0][0].id == "a#0"  # short query: the dense top
    assert res[1][0].id == "c#0"  # long question: the BM25 top
    assert res[1][0].scores["hybrid"] == pytest.approx(wl * (0.8 - 0.3) / (0.9 - 0.3) + ll * 1.0)  # min-max convex
    # the stage, fuse() and adaptive_weights() agree
    d_l, l_l = [(i, s) for i, s in dense.items], [(i, s) for i, s in lex.items]
    assert hybrid_mod.adaptive_weights(long_q, d_l, l_l) == pytest.approx((wl, ll))
    via_fuse = fuse([d_l, l_l], method="adaptive", kinds=["dense", "lexical"], query=long_q)
    assert [i for i, _ in via_fuse] == [p.id for p in res[1]]
    # inputs in the other order get the same weights, swapped
    h2 = HybridRetriever(retrievers=[LexList(name="lex", items=lex.items), DenseList(name="dense", items=dense.items)], k=4)
    h2.retrieve([long_q])
    assert h2.last_weights[0] == pytest.approx([ll, wl])
    # the weight stays within ADAPTIVE_RANGE whatever the model says
    monkeypatch.setattr(hybrid_mod, "ADAPTIVE_MODEL", {"intercept": 100.0})
    assert hybrid_mod.adaptive_weights("q", d_l, l_l)[0] == pytest.approx(hybrid_mod.ADAPTIVE_RANGE[1])
    # one input returns nothing: the other decides alone
    assert hybrid_mod.adaptive_weights("q", d_l, []) == (1.0, 0.0)
    assert hybrid_mod.adaptive_weights("q", [], l_l) == (0.0, 1.0)


def test_adaptive_without_one_dense_and_one_lexical_input_uses_fixed_weights():
    dense = DenseList(name="dense", items=[("a#0", 0.9), ("b#0", 0.1)])
    other = ListRetriever(name="other", items=[("b#0", 3.0), ("a#0", 1.0)])
    h = HybridRetriever(retrievers=[dense, other], k=2)
    assert not h.adaptive()
    h.retrieve(["q"])
    assert h.last_weights == [pytest.approx([0.7 / 1.2, 0.5 / 1.2])]
    explicit = HybridRetriever(retrievers=[dense, other], k=2, weights=[1.0, 3.0])
    assert [p.id for p in explicit.retrieve(["q"])[0]] == ["b#0", "a#0"]
    assert explicit.last_weights == [[0.25, 0.75]]
    # the fallback is min-max convex, as fuse(method="adaptive") does, whatever normalization is set
    z = HybridRetriever(retrievers=[dense, other], k=2, weights=[1.0, 3.0], normalization="zscore")
    lists = [[("a#0", 0.9), ("b#0", 0.1)], [("b#0", 3.0), ("a#0", 1.0)]]
    expected = fuse(lists, method="adaptive", weights=[1.0, 3.0], kinds=["dense", "other"], query="q")
    got = z.retrieve(["q"])[0]
    assert [(p.id, p.scores[z.name]) for p in got] == [(i, pytest.approx(s)) for i, s in expected]


def test_hybrid_settings_validation_and_config_round_trip():
    dense = DenseList(items=[("a#0", 1.0)])
    lex = LexList(items=[("a#0", 1.0)])
    with pytest.raises(ConfigError, match="weights"):
        HybridRetriever(retrievers=[dense, lex], weights=[1.0])
    with pytest.raises(ConfigError, match="fusion"):
        HybridRetriever(retrievers=[dense, lex], fusion="max")
    with pytest.raises(ConfigError, match="retrievers"):
        HybridRetriever(retrievers=[])
    h = HybridRetriever(retrievers=[dense, lex], k=3, weights=[0.6, 0.4], fusion="convex", normalization="tmm")
    cfg = h.to_config()
    again = build_stage(cfg)
    assert isinstance(again, HybridRetriever)
    assert again.to_config() == cfg
    assert [type(r) for r in again.retrievers] == [DenseList, LexList]
    # two inputs with the same name get distinct names (their scores share Passage.scores)
    twin = HybridRetriever(retrievers=[DenseList(items=[]), DenseList(items=[])])
    assert len({r.name for r in twin.retrievers}) == 2


def test_retrieve_rejects_empty_queries():
    r = DenseList(items=[("a#0", 1.0)])
    with pytest.raises(InputError, match="empty"):
        r.retrieve(["  "])
    with pytest.raises(InputError):
        r.retrieve("a string")  # type: ignore[arg-type]
    assert r.retrieve([]) == []


# --------------------------------------------------------------------------------------------
# real index: embedded Chroma + SQLite + bm25s with the real MiniLM

DOCS = [
    Document(id="penicillin", title="Penicillin",
             text="Penicillin was discovered by Alexander Fleming in 1928. It was the first antibiotic.",
             metadata={"topic": "medicine", "year": 1928}),
    Document(id="eiffel", title="Eiffel Tower",
             text="The Eiffel Tower was completed in 1889 in Paris. It is made of wrought iron.",
             metadata={"topic": "architecture", "year": 1889}),
    Document(id="python", title="Python",
             text="Python is a programming language created by Guido van Rossum. It emphasises readability.",
             metadata={"topic": "computing", "year": 1991}),
    Document(id="volcano", title="Volcanoes",
             text="A volcano is a rupture in the crust of a planet. Lava and ash escape from it.",
             metadata={"topic": "geology", "year": 2000}),
]


@pytest.fixture(scope="module")
def built_index(tmp_path_factory: pytest.TempPathFactory, minilm) -> Path:
    path = tmp_path_factory.mktemp("idx") / "index"
    report = ingest(DOCS, index=path, device="cpu")
    assert report.written == 4 and report.chunks_written == 4
    return path


def _chroma_ids(index: Index) -> list[str]:
    return sorted(index.collection.get(include=[])["ids"])


def test_index_layout_and_manifest(built_index: Path):
    manifest = json.loads((built_index / "ctxkit-index.json").read_text())
    assert manifest["embedding_model"] == "default"
    assert manifest["collection"] == "ctxkit"
    assert manifest["chroma"]["mode"] == "embedded"
    assert (built_index / "chroma").is_dir() and (built_index / "chunks.sqlite").is_file()
    assert (built_index / "bm25" / "ctxkit_ids.json").is_file()
    idx = Index.open(built_index, device="cpu")
    assert idx.count_documents() == 4 and idx.count_chunks() == 4
    assert _chroma_ids(idx) == ["eiffel#0", "penicillin#0", "python#0", "volcano#0"]
    with pytest.raises(ConfigError, match="chunk_size"):
        Index(built_index, chunk_size=7)
    with pytest.raises(ConfigError, match="embedded Chroma"):
        Index(built_index, host="127.0.0.1")


def test_missing_index_and_bad_settings_raise_typed_errors(tmp_path: Path):
    with pytest.raises(IndexNotFoundError, match="ctxkit ingest"):
        Index.open(tmp_path / "nope")
    with pytest.raises(IndexNotFoundError):
        ChromaRetriever(path=str(tmp_path / "nope")).retrieve(["q"])
    with pytest.raises(IndexNotFoundError):
        BM25Retriever(path=str(tmp_path / "nope")).retrieve(["q"])
    with pytest.raises(ConfigError, match="path"):
        ChromaRetriever()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(InputError, match="non-empty"):
        Index(tmp_path / "busy")
    with pytest.raises(InputError, match="id"):
        Index(tmp_path / "new").add([{"text": "no id"}])


def test_chroma_retriever_ranks_and_scores(built_index: Path):
    dense = ChromaRetriever(path=str(built_index), k=2, device="cpu")
    results = dense.retrieve(["Who discovered the first antibiotic?", "tall iron landmark in France"])
    assert results[0][0].id == "penicillin#0"
    assert results[1][0].id == "eiffel#0"
    top = results[0][0]
    assert top.doc_id == "penicillin" and top.metadata["topic"] == "medicine"
    assert "Fleming" in top.text and top.text.startswith("Penicillin\n")
    s = [p.scores["chroma"] for p in results[0]]
    assert s == sorted(s, reverse=True) and -1.0 <= s[-1] <= s[0] <= 1.0


def test_chroma_one_encoder_call_and_one_query_call_per_batch(built_index: Path, monkeypatch):
    dense = ChromaRetriever(path=str(built_index), k=1, device="cpu")
    dense.warm_up()
    dense._warm = True
    calls = {"encode": 0, "query": 0}
    enc, query = dense._embedder.encode, dense._collection.query

    def counting_encode(texts, **kw):
        calls["encode"] += 1
        return enc(texts, **kw)

    def counting_query(**kw):
        calls["query"] += 1
        return query(**kw)

    monkeypatch.setattr(dense._embedder, "encode", counting_encode)
    monkeypatch.setattr(dense._collection, "query", counting_query)
    out = dense.retrieve(["antibiotic", "lava", "programming", "tower"])
    assert calls == {"encode": 1, "query": 1}
    assert [r[0].doc_id for r in out] == ["penicillin", "volcano", "python", "eiffel"]


def test_where_filters_per_stage_and_per_call(built_index: Path):
    dense = ChromaRetriever(path=str(built_index), k=4, device="cpu", where={"year": {"$lt": 1950}})
    ids = {p.doc_id for p in dense.retrieve(["anything at all"])[0]}
    assert ids == {"penicillin", "eiffel"}
    # per call (state metadata), AND-ed with the stage's filter
    state = ContextState(query="anything", metadata={"where": {"topic": "architecture"}})
    dense([state])
    assert [p.doc_id for p in state.passages] == ["eiffel"]
    bm25 = BM25Retriever(path=str(built_index), k=4)
    assert [p.doc_id for p in bm25.retrieve(["Paris iron 1889 Fleming"], where={"topic": "medicine"})[0]] == ["penicillin"]
    assert bm25.retrieve(["Fleming"], where={"topic": {"$in": ["geology"]}})[0] == []


def test_bm25_scores_and_reload_from_disk_is_identical(built_index: Path):
    bm25 = BM25Retriever(path=str(built_index), k=3)
    res = bm25.retrieve(["discovered penicillin", "volcanoes lava"])
    assert res[0][0].id == "penicillin#0" and res[1][0].id == "volcano#0"
    # stemming: "discovering" matches "discovered"; stop words alone match nothing
    assert bm25.retrieve(["discovering"])[0][0].id == "penicillin#0"
    assert bm25.retrieve(["the of and"])[0] == []
    again = BM25Retriever(path=str(built_index), k=3)
    res2 = again.retrieve(["discovered penicillin", "volcanoes lava"])
    assert [[(p.id, p.scores) for p in r] for r in res] == [[(p.id, p.scores) for p in r] for r in res2]


def test_hybrid_end_to_end_in_a_pipeline(built_index: Path):
    hybrid = HybridRetriever(
        retrievers=[ChromaRetriever(path=str(built_index), device="cpu"), BM25Retriever(path=str(built_index))],
        k=2,
    )
    states = Pipeline([hybrid]).batch(["Who found penicillin?", "Guido van Rossum language"])
    assert states[0].passages[0].doc_id == "penicillin"
    assert states[1].passages[0].doc_id == "python"
    top = states[0].passages[0]
    assert {"chroma", "bm25", "hybrid"} <= set(top.scores)
    assert states[0].trace.stages[0].stage == "hybrid" and states[0].trace.stages[0].n_out == 2
    rebuilt = build_stage(hybrid.to_config())
    assert [p.id for p in rebuilt.retrieve(["Who found penicillin?"])[0]] == [p.id for p in states[0].passages]


def test_adaptive_hybrid_over_real_chroma_and_bm25_weighs_each_query(built_index: Path):
    from ctxkit.retrievers.hybrid import ADAPTIVE_RANGE, adaptive_weights

    dense = ChromaRetriever(path=str(built_index), device="cpu", k=4)
    bm25 = BM25Retriever(path=str(built_index), k=4)
    hybrid = HybridRetriever(retrievers=[dense, bm25], k=4, candidates=4)  # the default fusion
    assert hybrid.fusion == "adaptive" and hybrid.adaptive()
    queries = ["Who found penicillin?", "Guido van Rossum programming language", "the of and"]
    res = hybrid.retrieve(queries)
    weights = hybrid.last_weights
    d_lists = [[(p.id, p.scores["chroma"]) for p in r] for r in dense.retrieve(queries, k=4)]
    b_lists = [[(p.id, p.scores["bm25"]) for p in r] for r in bm25.retrieve(queries, k=4)]
    for q, w, d_l, b_l in zip(queries, weights, d_lists, b_lists, strict=True):
        # the stage's weights are the trust model's, read from the inputs' own candidate lists
        assert w == pytest.approx(list(adaptive_weights(q, d_l, b_l)))
        assert sum(w) == pytest.approx(1.0)
    for w in weights[:2]:  # both inputs found something: neither is switched off
        assert ADAPTIVE_RANGE[0] - 1e-9 <= w[0] <= ADAPTIVE_RANGE[1] + 1e-9
    # stop words only: BM25 finds nothing, so the dense list decides alone and is kept as it is
    assert b_lists[2] == [] and weights[2] == [1.0, 0.0]
    assert [p.id for p in res[2]] == [i for i, _ in d_lists[2]]
    assert res[0][0].doc_id == "penicillin" and res[1][0].doc_id == "python"
    # the previous fixed fusion stays available
    fixed = HybridRetriever(retrievers=[dense, bm25], k=4, candidates=4, fusion="convex")
    fixed.retrieve(queries[:1])
    assert fixed.last_weights == [pytest.approx([0.7, 0.3])]


def _docs(n: int, version: str = "v1") -> list[Document]:
    return [
        Document(id=f"d{i}", text=f"Document {i} talks about topic {i} in {version}. " * (1 + i % 2))
        for i in range(n)
    ]


def test_large_batches_are_split_below_sqlite_variable_limit(tmp_path: Path, minilm, monkeypatch):
    """170 queries x k=200 is 34,000 results: one Chroma call would exceed SQLite's 32,766
    variables ("too many SQL variables"); the retriever splits the batch into several calls."""
    ingest(_docs(200), index=tmp_path / "idx", device="cpu")
    dense = ChromaRetriever(path=str(tmp_path / "idx"), k=200, device="cpu")
    queries = [f"topic {i}" for i in range(170)]
    calls = []
    dense.warm_up()
    dense._warm = True
    query = dense._collection.query
    monkeypatch.setattr(dense._collection, "query", lambda **kw: calls.append(len(kw["query_embeddings"])) or query(**kw))
    out = dense.retrieve(queries)
    assert calls == [100, 70]  # 20,000 results per call at most
    assert all(len(r) == 200 for r in out)
    alone = dense.retrieve(queries[-3:])
    assert [[p.id for p in r] for r in out[-3:]] == [[p.id for p in r] for r in alone]


def test_reingest_is_idempotent_and_removes_stale_chunks(tmp_path: Path, minilm):
    idx = Index(tmp_path / "idx", chunk_size=12, chunk_overlap=0, device="cpu")
    long_doc = Document(id="long", text=" ".join(f"Sentence {i} is here now." for i in range(12)))
    others = [Document(id=f"d{i}", text=f"Short document {i}.") for i in range(3)]
    r1 = idx.add([long_doc, *others])
    n_long = len(idx.chunk_document(long_doc))
    assert n_long >= 4 and r1.chunks_written == n_long + 3
    before = _chroma_ids(idx)
    r2 = idx.add([long_doc, *others])
    assert r2.written == 0 and r2.unchanged == 4 and _chroma_ids(idx) == before
    # the same document, shorter: its extra chunks disappear everywhere
    short = Document(id="long", text="Now it is one sentence.")
    r3 = idx.add([short])
    assert r3.written == 1 and r3.chunks_deleted == n_long - 1
    ids = _chroma_ids(idx)
    assert [i for i in ids if i.startswith("long#")] == ["long#0"]
    assert idx.count_chunks() == len(ids) == 4
    bm25 = BM25Retriever(path=str(idx.path), k=10)
    hits = bm25.retrieve(["sentence"])[0]
    assert [p.id for p in hits] == ["long#0"] and "one sentence" in hits[0].text


class Boom(RuntimeError):
    pass


def _failing(docs: list[Document], fail_at: int):
    for i, d in enumerate(docs):
        if i == fail_at:
            raise Boom("disk unplugged")
        yield d


def test_interrupted_ingest_can_be_rerun_to_completion(tmp_path: Path, minilm, monkeypatch):
    docs = _docs(10)
    idx = Index(tmp_path / "idx", device="cpu")
    # tiny Chroma batches: several upserts per write batch, all below the client's limit
    monkeypatch.setattr(idx.client, "get_max_batch_size", lambda: 3)
    with pytest.raises(Boom):
        idx.add(_failing(docs, 7), batch_size=3)
    assert idx.count_documents() == 6  # two full batches committed before the failure
    assert len(_chroma_ids(idx)) == 6
    assert not idx.bm25_is_current()  # BM25 is rebuilt only at the end of a finished ingest
    report = idx.add(docs, batch_size=3)
    assert report.unchanged == 6 and report.written == 4
    assert _chroma_ids(idx) == sorted(f"d{i}#0" for i in range(10))
    assert idx.count_chunks() == 10 and idx.bm25_is_current()
    # BM25 that was left stale by an interrupted run is rebuilt when loaded
    idx.add([Document(id="late", text="A late zebra arrives.")], rebuild_bm25=False)
    assert not idx.bm25_is_current()
    assert BM25Retriever(path=str(idx.path)).retrieve(["zebra"])[0][0].id == "late#0"
    assert idx.bm25_is_current()


def test_empty_index_returns_no_results(tmp_path: Path, minilm):
    idx = Index(tmp_path / "empty", device="cpu")
    idx.add([])
    assert BM25Retriever(path=str(idx.path)).retrieve(["q"]) == [[]]
    assert ChromaRetriever(path=str(idx.path), device="cpu").retrieve(["q"]) == [[]]


# --------------------------------------------------------------------------------------------
# loaders


def test_load_documents_reads_md_txt_jsonl_and_skips_bad_input(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "guide.md").write_text("# The Guide\n\nSome text.", encoding="utf-8")
    (tmp_path / "docs" / "sub" / "note.txt").write_text("A note.", encoding="utf-8")
    (tmp_path / "docs" / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "docs" / "empty.txt").write_text("  ")
    (tmp_path / "docs" / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "docs" / "corpus.jsonl").write_text(
        '{"_id": "b1", "title": "T", "text": "Body.", "lang": "en"}\n'
        "not json\n"
        '{"_id": "b2", "text": ""}\n'
        '{"id": 7, "text": "Numeric id."}\n',
        encoding="utf-8",
    )
    log = LoadLog()
    docs = {d.id: d for d in load_documents(["docs"], log)}
    assert set(docs) == {"docs/guide.md", "docs/sub/note.txt", "b1", "7"}
    assert docs["docs/guide.md"].title == "The Guide"
    assert docs["b1"].title == "T" and docs["b1"].metadata["lang"] == "en"
    reasons = dict(log.skipped)
    assert "UTF-8" in reasons[str(Path("docs/latin1.txt"))]
    assert any("invalid JSON" in r for r in reasons.values())
    assert any("text" in r for w, r in log.skipped if w.endswith(":3"))
    assert str(Path("docs/empty.txt")) in reasons
    assert "image.png" not in " ".join(reasons)  # folders only yield supported types
    with pytest.raises(InputError, match="no such file"):
        list(load_documents(["missing-folder"]))


def test_ingest_paths_reports_skipped_files(tmp_path: Path, minilm, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.md").write_text("# A\n\nAlpha text.", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    report = ingest([tmp_path / "a.md", tmp_path / "bad.txt"], index=tmp_path / "idx", device="cpu")
    assert report.written == 1 and report.files == 1 and len(report.skipped) == 1
    assert "1 skipped" in report.summary()


# --------------------------------------------------------------------------------------------
# input that must not lose data


@pytest.mark.parametrize("batch_size", [256, 1])  # the two records in one write batch, or in two
def test_duplicate_ids_are_an_error_by_default_or_keep_last_with_a_warning(tmp_path: Path, minilm, batch_size):
    from ctxkit.errors import DuplicateDocumentError

    docs = [Document(id="a", text="The first record of a."), Document(id="b", text="Another document."),
            Document(id="a", text="The second record of a, with new text.")]
    with pytest.raises(DuplicateDocumentError, match="appears twice") as exc:
        ingest(docs, index=tmp_path / "strict", device="cpu", batch_size=batch_size)
    assert exc.value.doc_id == "a" and "keep_last" in str(exc.value)
    warnings: list[str] = []
    report = ingest(docs, index=tmp_path / "lenient", device="cpu", batch_size=batch_size,
                    on_duplicate="keep_last", on_warning=warnings.append)
    assert report.duplicates == ["a"] and report.unchanged == 0  # not "1 unchanged" on a fresh index
    assert "1 duplicate ids (last kept)" in report.summary() and "0 unchanged" in report.summary()
    assert len(warnings) == 1 and "'a'" in warnings[0]
    idx = Index(tmp_path / "lenient")
    assert idx.count_documents() == 2
    assert "second record" in idx.get_chunks(["a#0"])["a#0"][0]


def test_nothing_to_index_raises_with_the_reasons(tmp_path: Path, minilm):
    from ctxkit.errors import NothingIndexedError

    (tmp_path / "empty").mkdir()
    with pytest.raises(NothingIndexedError, match="nothing was indexed") as exc:
        ingest([tmp_path / "empty"], index=tmp_path / "i1", device="cpu")
    assert exc.value.report.documents == 0
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.txt").write_bytes(b"\xff\xfe\xfa")
    (tmp_path / "bad" / "blank.md").write_text("   ")
    warnings: list[str] = []
    with pytest.raises(NothingIndexedError, match="skipped") as exc:
        ingest([tmp_path / "bad"], index=tmp_path / "i2", device="cpu", on_warning=warnings.append)
    assert len(exc.value.report.skipped) == 2 and len(warnings) == 2
    with pytest.raises(NothingIndexedError):
        ingest([], index=tmp_path / "i3", device="cpu")


def test_a_file_named_twice_is_read_once(tmp_path: Path, minilm, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.md").write_text("# A\n\nAlpha text.", encoding="utf-8")
    report = ingest(["d", "d/a.md"], index=tmp_path / "idx", device="cpu")  # no duplicate-id error
    assert report.documents == 1 and report.files == 1


def test_progress_is_shown_in_chunks_while_one_big_document_is_embedded(tmp_path: Path, minilm, monkeypatch, capfd):
    import ctxkit.retrievers.store.index as index_mod

    monkeypatch.setattr(index_mod, "EMBED_STEP", 16)
    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # draw every update (tqdm reads TQDM_* defaults),
    monkeypatch.setenv("TQDM_MINITERS", "1")  # however fast the updates come (no dynamic skipping)
    idx = Index(tmp_path / "idx", chunk_size=10, chunk_overlap=0, device="cpu")
    big = Document(id="big", text=" ".join(f"Sentence {i} is about lava." for i in range(100)))
    n = len(idx.chunk_document(big))
    assert n > 40
    idx.add([big], show_progress=True)
    counts = [int(c) for c in re.findall(r"ingest: (\d+)chunk \[", capfd.readouterr().err)]
    # advanced inside the single document, in EMBED_STEP slices (tqdm may skip drawing a fast step)
    inside = [c for c in counts if 0 < c < n]
    assert inside and all(c % 16 == 0 for c in inside) and max(counts) == n, counts
