"""An LCEL chain: ctxkit retrieval + ranking + conflict annotation -> prompt -> a ctxkit
generator (offline SmolLM2) exposed as a LangChain chat model.

Run: python examples/langchain_chain.py   (offline; needs the langchain extra)
"""

from __future__ import annotations

import tempfile

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

import ctxkit
from ctxkit.faithfulness.conflicts import ConflictCheck
from ctxkit.integrations.langchain import CtxkitChatModel
from ctxkit.llm import TransformersGenerator
from ctxkit.rankers import Arranger, BiEncoderPreRanker
from ctxkit.retrievers import BM25Retriever, ChromaRetriever, HybridRetriever, ingest

DOCUMENTS = [
    {"id": "forum", "text": "Penicillin was discovered by Louis Pasteur in 1901, a forum post claims."},
    {"id": "fleming", "text": "Alexander Fleming worked at St Mary's Hospital in London."},
    {"id": "eiffel", "text": "The Eiffel Tower in Paris was completed in 1889 for the World's Fair."},
    {"id": "curie", "text": "Marie Curie discovered polonium and radium with Pierre Curie."},
]
# What we trust (a knowledge base, an earlier verified answer...): the conflict check compares
# every retrieved passage with these and annotates explicit, fact-level disagreements. (A passage
# that states the believed value more on topic outweighs a conflicting one: here none does.)
BELIEFS = ["Penicillin was discovered by Alexander Fleming.", "The Eiffel Tower was completed in 1889."]


def main() -> None:
    index = tempfile.mkdtemp(prefix="ctxkit-lc-")
    ingest(DOCUMENTS, index=index)
    pipe = ctxkit.Pipeline([
        HybridRetriever(retrievers=[ChromaRetriever(path=index), BM25Retriever(path=index)], k=4),
        BiEncoderPreRanker(k=3),
        ConflictCheck(beliefs=BELIEFS),
        Arranger(strategy="best_last"),  # small models read the end of the context most
    ])

    # 1. the pipeline as a LangChain retriever: every stage's score is in the metadata
    retriever = pipe.as_retriever(k=3, score_stage="bi_encoder")
    for doc in retriever.invoke("Who discovered penicillin?"):
        conflicts = [f"{c['kind']}: {c['chunk_span']} vs {c['belief_span']}" for c in doc.metadata.get("conflicts", [])]
        print(f"{doc.id:10s} score={doc.metadata['score']:.3f} scores={ {k: round(v, 3) for k, v in doc.metadata['scores'].items()} } conflicts={conflicts}")

    # 2. the LCEL chain: context (conflicts annotated) -> prompt -> chat model -> text
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer the question in one short sentence. Where a passage is marked as conflicting, trust the belief."),
        ("human", "Context:\n{context}\n\nQuestion: {question}"),
    ])
    model = CtxkitChatModel(generator=TransformersGenerator("default"), max_new_tokens=32)
    chain = (
        {"context": pipe.as_runnable(output="context", k=3), "question": RunnablePassthrough()}
        | prompt
        | model
        | StrOutputParser()
    )
    questions = ["Who discovered penicillin?", "When was the Eiffel Tower completed?"]
    print("\nprompt context for the first question:\n" + pipe.as_runnable(output="context").invoke(questions[0]))
    # batch: the pipeline runs each stage once for both questions, the model generates both at once
    for q, answer in zip(questions, chain.batch(questions), strict=True):
        print(f"\nQ: {q}\nA: {answer.strip()}")
    print("\nlangchain_chain: ok")


if __name__ == "__main__":
    main()
