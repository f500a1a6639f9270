"""Generators in ctxkit: a batched local model, the ``generate`` stage, truncation, and HTTP.

Run offline (SmolLM2-135M-Instruct ships as a pip package; its first load converts the GGUF
file once, about 30 s, and caches the result)::

    python examples/generators.py
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ctxkit import ContextState, Passage, Pipeline
from ctxkit.llm import GenerateAnswer, OpenAIGenerator, TransformersGenerator
from ctxkit.llm.server import OpenAICompatibleServer


def main() -> None:
    # 1. One local model, loaded lazily on first use; prompts of a batch are generated together.
    gen = TransformersGenerator("default", batch_size=8, settings={"max_new_tokens": 24})

    states = [
        ContextState(query="When was the Eiffel Tower completed?", passages=[
            Passage(id="p1", text="The Eiffel Tower in Paris was completed in 1889 for the World's Fair."),
            Passage(id="p2", text="Gustave Eiffel's company designed and built the tower."),
        ]),
        ContextState(query="Who discovered penicillin?", passages=[
            Passage(id="p3", text="Penicillin was discovered in 1928 by Alexander Fleming in London."),
        ]),
    ]

    # 2. The `generate` stage: numbered passages inside <context> markers, one generator call for
    #    the whole batch; answers land on state.answer, failures in state.trace.errors.
    pipe = Pipeline([GenerateAnswer(generator=gen)])
    for s in pipe.batch(states):
        print(f"Q: {s.query}\nA: {s.answer}\n")

    # 3. Truncation only shortens the text between <context> markers (from the end), never the
    #    instructions or the question.
    tight = TransformersGenerator("default", max_input_tokens=110)
    long_context = " ".join(f"Filler sentence number {i} about nothing in particular." for i in range(60))
    conv = [{"role": "user", "content": f"Use the context.\n<context>The answer is 42. {long_context}</context>\n"
             "Question: what is the answer?"}]
    out = tight.generate([conv], max_new_tokens=12)[0]
    print(f"truncated {out.info['truncated_context_tokens']} context tokens; prompt now {out.n_prompt_tokens} "
          f"tokens; question kept: {'Question: what is the answer?' in tight.prompt(conv)}")
    print(f"answer under a tight budget: {out.text!r}\n")

    # 4. The same model behind an OpenAI-compatible server, queried by OpenAIGenerator over HTTP
    #    (point base_url at vLLM / TGI / llama.cpp in production).
    with OpenAICompatibleServer(gen, model_name="smollm2") as server:
        client = OpenAIGenerator("smollm2", base_url=server.url, max_concurrency=4)
        reply = client.generate([[{"role": "user", "content": "What is the capital of France? Answer with one word."}]],
                                max_new_tokens=8)[0]
        print(f"HTTP {server.url}: {reply.text!r} (finish_reason={reply.finish_reason}, tokens={reply.n_tokens})")


if __name__ == "__main__":
    main()
