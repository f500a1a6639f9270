"""ctxkit in one screen: index documents, retrieve with a hybrid pipeline, see every stage's
score and the trace, then answer offline with SmolLM2.

Run: python examples/quickstart.py   (offline; about a minute on a laptop CPU)
"""

from __future__ import annotations

import tempfile

import ctxkit
from ctxkit.llm import GenerateAnswer, TransformersGenerator
from ctxkit.retrievers import BM25Retriever, ChromaRetriever, HybridRetriever, ingest

DOCUMENTS = [
    {"id": "fleming", "title": "Penicillin",
     "text": "Penicillin was discovered by Alexander Fleming in 1928 at St Mary's Hospital in London. "
             "He noticed that a mould had killed the bacteria around it in a petri dish."},
    {"id": "eiffel", "title": "Eiffel Tower",
     "text": "The Eiffel Tower in Paris was completed in 1889 for the World's Fair. "
             "Gustave Eiffel's company designed and built it."},
    {"id": "curie", "title": "Marie Curie",
     "text": "Marie Curie discovered polonium and radium together with Pierre Curie. "
             "She won Nobel prizes in physics (1903) and chemistry (1911)."},
    {"id": "apollo", "title": "Apollo 11",
     "text": "Apollo 11 landed on the Moon on 20 July 1969. Neil Armstrong was the first person to walk on it."},
]
QUESTIONS = ["Who discovered penicillin?", "When was the Eiffel Tower completed?"]


def main() -> None:
    index = tempfile.mkdtemp(prefix="ctxkit-quickstart-")
    report = ingest(DOCUMENTS, index=index)
    print(f"indexed {report.documents} documents ({report.chunks_written} chunks) into {index}")

    pipe = ctxkit.Pipeline([
        HybridRetriever(retrievers=[ChromaRetriever(path=index), BM25Retriever(path=index)], k=2),
        GenerateAnswer(generator=TransformersGenerator("default", settings={"max_new_tokens": 32})),
    ])
    states = pipe.batch(QUESTIONS)  # each stage processes both questions at once

    for state in states:
        print(f"\nQ: {state.query}")
        for p in state.passages:
            scores = ", ".join(f"{k}={v:.3f}" for k, v in p.scores.items())
            print(f"  {p.id:10s} {scores}")
        print(f"A: {state.answer}")
        print("  trace: " + ", ".join(f"{r.stage} {r.n_in}->{r.n_out} {r.seconds:.2f}s" for r in state.trace.stages))
    assert states[0].passages[0].doc_id == "fleming", "dense+BM25 should rank the penicillin passage first"
    print("\nquickstart: ok")


if __name__ == "__main__":
    main()
