"""A LlamaIndex RetrieverQueryEngine, fully offline: a ctxkit pipeline as the retriever, ctxkit
stages as a node postprocessor, and a ctxkit generator (SmolLM2) as the LLM.

Run: python examples/llamaindex_query_engine.py   (offline; needs the llamaindex extra)
"""

from __future__ import annotations

import asyncio
import tempfile

from llama_index.core import Settings
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.query_engine import RetrieverQueryEngine

import ctxkit
from ctxkit.faithfulness.conflicts import ConflictCheck
from ctxkit.integrations.llama_index import CtxkitLlamaRetriever, CtxkitLLM, CtxkitNodePostprocessor
from ctxkit.llm import TransformersGenerator
from ctxkit.rankers import BiEncoderPreRanker
from ctxkit.retrievers import BM25Retriever, ChromaRetriever, HybridRetriever, ingest

DOCUMENTS = [
    {"id": "apollo", "text": "Apollo 11 landed on the Moon on 20 July 1969; Neil Armstrong walked on it first."},
    {"id": "hoax", "text": "A blog says Apollo 11 landed on the Moon in 1972."},
    {"id": "curie", "text": "Marie Curie won Nobel prizes in physics (1903) and chemistry (1911)."},
    {"id": "eiffel", "text": "The Eiffel Tower in Paris was completed in 1889."},
]


def main() -> None:
    index = tempfile.mkdtemp(prefix="ctxkit-li-")
    ingest(DOCUMENTS, index=index)
    llm = CtxkitLLM(generator=TransformersGenerator("default"), max_new_tokens=32)
    # Nothing may fall back to a hosted model: the LLM is ours, embeddings are not used here.
    Settings.llm = llm
    Settings.embed_model = MockEmbedding(embed_dim=8)

    matching = ctxkit.Pipeline([
        HybridRetriever(retrievers=[ChromaRetriever(path=index), BM25Retriever(path=index)], k=4),
    ])
    checks = ctxkit.Pipeline([
        BiEncoderPreRanker(k=2),
        ConflictCheck(beliefs=["Apollo 11 landed on the Moon in 1969."]),
    ])
    engine = RetrieverQueryEngine.from_args(
        CtxkitLlamaRetriever(matching, k=4),
        llm=llm,
        node_postprocessors=[CtxkitNodePostprocessor(pipeline=checks, score_stage="bi_encoder")],
    )

    response = engine.query("When did Apollo 11 land on the Moon?")
    print(f"answer: {str(response).strip()}")
    for n in response.source_nodes:
        scores = {k: round(v, 3) for k, v in n.node.metadata["scores"].items()}
        conflicts = [f"{c['kind']}: {c['chunk_span']} vs {c['belief_span']}" for c in n.node.metadata.get("conflicts", [])]
        print(f"  {n.node.node_id:10s} score={n.score:.3f} {scores} conflicts={conflicts}")

    # the async path: aretrieve / apostprocess / achat never block the event loop
    aresponse = asyncio.run(engine.aquery("Which prizes did Marie Curie win?"))
    print(f"async answer: {str(aresponse).strip()}  (top source: {aresponse.source_nodes[0].node.node_id})")
    print("llamaindex_query_engine: ok")


if __name__ == "__main__":
    main()
