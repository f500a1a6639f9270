"""OpenAIGenerator against a REAL local HTTP server (ours, serving a tiny transformers model).

Retries, 4xx handling, the concurrency limit and timeouts are exercised through real server
behaviour (failing the first N requests, slow answers, an API key), not through client mocks.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import pytest

from ctxkit.errors import CapabilityError, ConfigError, InputError
from ctxkit.llm import BaseGenerator, Generation, OpenAIGenerator, SamplingSettings, build_generator
from ctxkit.llm.base import require_scoring
from ctxkit.llm.server import OpenAICompatibleServer
from ctxkit.llm.transformers import TransformersGenerator

CONVS = [
    [{"role": "user", "content": "the quick brown fox"}],
    [{"role": "system", "content": "answer with a year"}, {"role": "user", "content": "penicillin was discovered"}],
    "who",
    "the eiffel tower was completed in 1889",
]


@pytest.fixture(scope="module")
def local(tiny_llm_dir):
    return TransformersGenerator(str(tiny_llm_dir), device="cpu", batch_size=8, settings={"max_new_tokens": 4})


@pytest.fixture
def server(local, request):
    opts = getattr(request, "param", {})
    with OpenAICompatibleServer(local, model_name="tiny", **opts) as srv:
        yield srv


def client(srv, **kw):
    kw.setdefault("backoff_base", 0.01)
    return OpenAIGenerator("tiny", base_url=srv.url, **kw)


def test_round_trip_equals_local_generation_and_reports_usage(server, local):
    remote = client(server).generate(CONVS, max_new_tokens=4)
    direct = local.generate(CONVS, max_new_tokens=4)
    assert all(g.ok for g in remote)
    assert [g.text for g in remote] == [g.text for g in direct]
    assert [g.n_prompt_tokens for g in remote] == [g.n_prompt_tokens for g in direct]
    assert [g.n_tokens for g in remote] == [g.n_tokens for g in direct]
    assert {g.finish_reason for g in remote} <= {"stop", "length"}


def test_repetition_penalty_round_trip(server, local):
    gen = client(server)
    assert "repetition_penalty" not in gen._body([], SamplingSettings())
    assert gen._body([], SamplingSettings(repetition_penalty=1.5))["repetition_penalty"] == 1.5
    remote = gen.generate(CONVS, max_new_tokens=8, repetition_penalty=2.0)
    assert [g.text for g in remote] == [g.text for g in local.generate(CONVS, max_new_tokens=8, repetition_penalty=2.0)]
    assert [g.text for g in remote] != [g.text for g in local.generate(CONVS, max_new_tokens=8)]


@pytest.mark.parametrize("server", [{"batch_wait_s": 0.5}], indirect=True)
def test_server_batches_concurrent_requests(server):
    out = client(server, max_concurrency=8).generate(CONVS * 2)
    assert all(g.ok for g in out)
    assert max(server.batch_sizes) > 1 and sum(server.batch_sizes) == 8


@pytest.mark.parametrize("server", [{"fail_first": 2, "fail_status": 503}], indirect=True)
def test_retries_on_503_then_succeeds(server):
    g = client(server, max_retries=3).generate(CONVS[:1])[0]
    assert g.ok and g.info["retries"] == 2
    assert server.n_requests == 3


@pytest.mark.parametrize("server", [{"fail_first": 1, "fail_status": 429, "retry_after": 0}], indirect=True)
def test_retries_on_429_with_retry_after(server):
    g = client(server, max_retries=1).generate(CONVS[:1])[0]
    assert g.ok and g.info["retries"] == 1 and server.n_requests == 2


@pytest.mark.parametrize("server", [{"fail_first": 100, "fail_status": 503}], indirect=True)
def test_gives_up_after_max_retries_with_the_server_message(server):
    g = client(server, max_retries=2).generate(CONVS[:1])[0]
    assert not g.ok and g.finish_reason == "error"
    assert "HTTP 503" in g.error and "simulated failure" in g.error and "after 3 attempts" in g.error
    assert g.info["status"] == 503 and server.n_requests == 3


@pytest.mark.parametrize("server", [{"api_key": "secret"}], indirect=True)
def test_4xx_is_not_retried_and_is_recorded_per_item(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = client(server, max_retries=3).generate(CONVS[:2])
    assert all(not g.ok and g.info["status"] == 401 and g.info["retries"] == 0 for g in out)
    assert "invalid or missing API key" in out[0].error
    ok = client(server, api_key="secret").generate(CONVS[:2])
    assert all(g.ok for g in ok)
    monkeypatch.setenv("MY_KEY", "secret")
    assert client(server, api_key_env="MY_KEY").generate(CONVS[:1])[0].ok


def test_one_rejected_item_does_not_abort_the_batch(tiny_llm_dir):
    small = TransformersGenerator(str(tiny_llm_dir), device="cpu", max_input_tokens=25)
    with OpenAICompatibleServer(small) as srv:
        out = client(srv).generate(["who", "what who when where " * 20, "yes"], max_new_tokens=3)
    assert [g.ok for g in out] == [True, False, True]
    assert out[1].info["status"] == 400 and "prompt too long" in out[1].error


@pytest.mark.parametrize("server", [{"delay_s": 0.3}], indirect=True)
def test_concurrency_limit_is_respected(server):
    out = client(server, max_concurrency=2).generate(CONVS + CONVS[:2], max_new_tokens=1)
    assert all(g.ok for g in out)
    assert server.n_requests == 6 and server.max_concurrent == 2


@pytest.mark.parametrize("server", [{"delay_s": 1.5}], indirect=True)
def test_timeout_is_reported_per_item(server):
    g = client(server, timeout=0.2, max_retries=0).generate(CONVS[:1])[0]
    assert not g.ok and "timed out after 0.2s" in g.error


def test_connection_errors_are_retried_then_reported():
    with _closed_port() as url:
        g = OpenAIGenerator("x", base_url=url, max_retries=1, backoff_base=0.01).generate(CONVS[:1])[0]
    assert not g.ok and "cannot reach" in g.error and "after 2 attempts" in g.error


class _closed_port:
    """A loopback URL where nothing listens."""

    def __enter__(self) -> str:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return f"http://127.0.0.1:{self.port}/v1"

    def __exit__(self, *a: object) -> None:
        return None


async def test_sync_generate_works_inside_a_running_event_loop(server):
    gen = client(server)
    sync = gen.generate(CONVS[:2])  # called from a coroutine: runs its own loop in a worker thread
    asyn = await gen.agenerate(CONVS[:2])
    assert [g.text for g in sync] == [g.text for g in asyn] and all(g.ok for g in sync)


def test_server_http_contract(server):
    with httpx.Client(base_url=server.url) as h:
        models = h.get("/models").json()
        assert models["data"][0]["id"] == "tiny"
        r = h.post("/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "who"}],
                                               "max_tokens": 3, "stop": "zz"})
        body = r.json()
        assert r.status_code == 200 and body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        assert h.post("/chat/completions", content=b"{not json").status_code == 400
        bad = h.post("/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]})
        assert bad.status_code == 400 and "role" in bad.json()["error"]["message"]
        assert h.post("/chat/completions", json={"messages": CONVS[0], "stream": True}).status_code == 400
        assert h.post("/chat/completions", json={"messages": CONVS[0], "temperature": -2}).status_code == 400
        assert h.get("/nope").status_code == 404


def test_transport_seam_and_malformed_responses():
    transport = httpx.MockTransport(lambda req: httpx.Response(200, json={"unexpected": True}))
    g = OpenAIGenerator("m", base_url="http://test/v1", transport=transport).generate(CONVS[:1])[0]
    assert not g.ok and "malformed" in g.error


def test_backoff_honours_retry_after_and_caps():
    gen = OpenAIGenerator(base_url="http://x/v1", backoff_base=1.0, backoff_max=5.0)
    assert gen._backoff(0, 2.5) == 2.5 and gen._backoff(0, 100.0) == 5.0
    waits = [gen._backoff(a, None) for a in range(6)]
    assert 0.5 <= waits[0] <= 1.0 and 2.0 <= waits[2] <= 4.0 and all(w <= 5.0 for w in waits)


def test_settings_validation_and_score_and_spec(monkeypatch):
    for kw, match in [({"base_url": "localhost:8000"}, "base_url"), ({"max_concurrency": 0}, "max_concurrency"),
                      ({"timeout": 0}, "timeout"), ({"max_retries": -1}, "max_retries"),
                      ({"settings": {"top_p": 0}}, "sampling")]:
        with pytest.raises(ConfigError, match=match):
            OpenAIGenerator(**kw)
    gen = OpenAIGenerator("m", base_url="http://h:1/v1", api_key="k", max_concurrency=3)
    with pytest.raises(InputError, match="temperature"):
        gen.generate(CONVS[:1], temperature=-1)
    spec = gen.to_spec()
    assert spec == {"backend": "openai", "model": "m", "base_url": "http://h:1/v1", "max_concurrency": 3}
    assert "k" not in str(spec.values())
    rebuilt = build_generator(spec)
    assert isinstance(rebuilt, OpenAIGenerator) and rebuilt.max_concurrency == 3


def test_cli_serve_subprocess(tiny_llm_dir):
    """``ctxkit serve`` in a real subprocess, queried over HTTP."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctxkit.cli", "serve", "--model", str(tiny_llm_dir), "--port", "0",
         "--device", "cpu", "--name", "tiny", "--max-new-tokens", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "serving 'tiny' at http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].split()[0]
        out = OpenAIGenerator("tiny", base_url=url).generate(CONVS[:2], max_new_tokens=2)
        assert all(g.ok for g in out) and all(g.n_tokens <= 2 for g in out)
        # without max_tokens the server's --max-new-tokens default applies
        r = httpx.post(f"{url}/chat/completions", json={"messages": [{"role": "user", "content": "who"}]}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_asyncio_gather_of_agenerate_calls(server):
    gen = client(server, max_concurrency=4)

    async def main():
        return await asyncio.gather(gen.agenerate(CONVS[:2]), gen.agenerate(CONVS[2:]))

    a, b = asyncio.run(main())
    assert len(a) == 2 and len(b) == 2 and all(g.ok for g in a + b)


# -- scoring over HTTP (issue 21, item 1) ---------------------------------------------------------
SCORE_CONVS = [
    [{"role": "user", "content": "the quick brown fox"}],
    "who was the",
    [{"role": "system", "content": "answer with a year"}, {"role": "user", "content": "penicillin was discovered"}],
    [{"role": "user", "content": "the eiffel tower was completed"}],
]
SCORE_CONTS = [" jumps over", " the eiffel tower", " in 1928", " in 1889 in paris"]


class TextOnlyGenerator(BaseGenerator):
    """A real generator without a model in the process (like a LangChain or HTTP backend)."""

    model_name = "text-only"

    def generate(self, batch, settings=None, **overrides):
        return [Generation(text="fine", n_prompt_tokens=1, n_tokens=1) for _ in batch]


@pytest.mark.parametrize("server", [{}, {"echo_logprobs": False}], indirect=True, ids=["echo", "prompt_logprobs"])
def test_score_over_http_equals_local_scores(server, local, tiny_llm_dir):
    gen = client(server, tokenizer=str(tiny_llm_dir))
    sup = gen.scoring_support()
    assert sup.available and sup.verified
    assert sup.method == ("echo" if server.echo_logprobs else "prompt_logprobs")
    remote = gen.score(SCORE_CONVS, SCORE_CONTS)
    direct = local.score(SCORE_CONVS, SCORE_CONTS)
    assert remote == pytest.approx(direct, abs=1e-3)
    assert gen.score(SCORE_CONVS, SCORE_CONTS, reduce="mean") == pytest.approx(
        local.score(SCORE_CONVS, SCORE_CONTS, reduce="mean"), abs=1e-3)
    sent = [b for b in server.bodies if "prompt" in b]
    assert sent and all(b["max_tokens"] == 1 for b in sent)
    if server.echo_logprobs:
        assert all(b.get("echo") for b in sent[-4:])
    else:
        assert all("prompt_logprobs" in b for b in sent[-4:])


@pytest.mark.parametrize("server", [{}, {"echo_logprobs": False}], indirect=True, ids=["echo", "prompt_logprobs"])
def test_score_over_http_counts_every_byte_of_multibyte_continuations(server, local, tiny_llm_dir):
    # the tiny byte-level tokenizer splits these characters into several tokens each: the server
    # echoes the first ones as "" and the client must still count their log-probabilities
    conts = [" 東京", " café", "é"]
    convs = [SCORE_CONVS[0]] * len(conts)
    gen = client(server, tokenizer=str(tiny_llm_dir))
    assert gen.score(convs, conts) == pytest.approx(local.score(convs, conts), abs=1e-3)


def test_continuation_logprobs_keep_empty_echoed_tokens_inside_characters():
    from ctxkit.llm.openai import _continuation_logprobs

    entries = [("Q", None), (":", -0.5), (" ", -0.6), ("", -1.0), ("", -2.0), ("東", -3.0), ("", -4.0), ("京", -5.0)]
    assert _continuation_logprobs(entries, "Q: ", "東京", 0) == [-1.0, -2.0, -3.0, -4.0, -5.0]
    # the same when the echo does not spell the prompt (prompt_logprobs: no text for position 0)
    assert _continuation_logprobs([("", None), *entries[1:]], "Q: ", "東京", 0) == [-1.0, -2.0, -3.0, -4.0, -5.0]
    # a special token echoed as "" at the end of the prompt is not part of an ASCII continuation
    assert _continuation_logprobs([("Q", None), ("", -9.0), ("A", -1.0)], "Q", "A", 0) == [-1.0]


def test_score_without_tokenizer_ranks_like_the_model(server, local):
    """No tokenizer: the conversation is sent as plain text; scores still come from the model."""
    gen = client(server)
    conv = [{"role": "user", "content": "the eiffel tower was completed in"}]
    conts = [" 1889", " penicillin", " the the the"]
    remote = gen.score([conv] * 3, conts)
    plain = TransformersGenerator(local.model_name, device="cpu", chat_template=False)
    assert remote == pytest.approx(plain.score([conv] * 3, conts), abs=1e-3)
    assert gen.score([conv], [""]) == [pytest.approx(float("nan"), nan_ok=True)]
    with pytest.raises(InputError, match="one continuation per conversation"):
        gen.score([conv], [" a", " b"])


def test_a_server_that_cannot_score_fails_up_front_with_a_typed_error():
    with OpenAICompatibleServer(TextOnlyGenerator(), model_name="m") as srv:
        gen = client(srv)
        sup = gen.scoring_support()
        assert not sup.available and "needs a model in this server's process" in sup.reason
        with pytest.raises(CapabilityError, match="cannot score continuations") as info:
            gen.score(SCORE_CONVS, SCORE_CONTS)
        assert info.value.capability == "scoring" and isinstance(info.value, NotImplementedError)
        assert srv.n_requests == 1  # only the probe: the answer was cached, nothing else was sent
        with pytest.raises(CapabilityError, match="option scoring"):
            require_scoring(gen, "option scoring")
    off = OpenAIGenerator("m", base_url="http://127.0.0.1:9/v1", scoring="off")
    with pytest.raises(CapabilityError, match="scoring='off'"):
        off.check_scoring()


def test_probe_reports_a_server_without_echo_or_prompt_logprobs(tiny_llm_dir, local):
    with OpenAICompatibleServer(local, model_name="tiny", echo_logprobs=False) as srv:
        gen = client(srv, scoring="echo")  # only echo allowed: this server refuses it
        sup = gen.scoring_support()
        assert not sup.available and "echo is not supported with logprobs" in sup.reason
        with pytest.raises(CapabilityError, match="echo is not supported with logprobs"):
            gen.check_scoring("LLM-preference labels")


def test_callers_check_scoring_before_any_work(tmp_path):
    from ctxkit import ContextState, Passage, Pipeline
    from ctxkit.rankers import FeedbackStore, ReasonAggregate, llm_preference_labels

    with OpenAICompatibleServer(TextOnlyGenerator(), model_name="m") as srv:
        gen = client(srv)
        store = FeedbackStore(tmp_path / "fb.sqlite")
        ex = ContextState(query="q", passages=[Passage(id="a", text="x")], metadata={"answer": "y"})
        with pytest.raises(CapabilityError, match="llm_preference_labels"):
            llm_preference_labels(gen, [ex], store)
        assert store.count()["lists"] == 0
        stage = ReasonAggregate(generator=gen, answer_mode="options")
        with pytest.raises(CapabilityError, match="option scoring"):
            Pipeline([stage]).warm_up()
        state = ContextState(query="q", passages=[Passage(id="a", text="x")], metadata={"options": ["1", "2"]})
        with pytest.raises(CapabilityError):
            stage.run([state])
        n = srv.n_requests
        ReasonAggregate(generator=gen, answer_mode="generate").warm_up()  # generation needs no scores
        assert srv.n_requests == n


def test_option_scoring_and_preference_labels_over_http_match_local(server, local, tiny_llm_dir, tmp_path):
    from ctxkit import ContextState, Passage
    from ctxkit.rankers import FeedbackStore, ReasonAggregate, llm_preference_labels

    gen = client(server, tokenizer=str(tiny_llm_dir))

    def states():
        ps = [Passage(id=f"p{i}", text=t) for i, t in enumerate(["the eiffel tower", "penicillin 1928", "fox dog"])]
        return [ContextState(query="when was the eiffel tower completed", passages=ps,
                             metadata={"options": ["1889", "1928", "yes", "no"], "answer": "1889"})]

    remote = ReasonAggregate(generator=gen, answer_mode="options", n_paths=3)(states())[0]
    direct = ReasonAggregate(generator=local, answer_mode="options", n_paths=3)(states())[0]
    assert remote.answer == direct.answer and remote.metadata["votes"] == direct.metadata["votes"]
    a = llm_preference_labels(gen, states(), FeedbackStore(tmp_path / "a.sqlite"), n_lists=3, list_size=2, pool=3)
    b = llm_preference_labels(local, states(), FeedbackStore(tmp_path / "b.sqlite"), n_lists=3, list_size=2, pool=3)
    assert a["lists"] == b["lists"] == 3 and a["mean_reward"] == pytest.approx(b["mean_reward"], abs=1e-3)


def test_server_completions_contract(server):
    with httpx.Client(base_url=server.url, timeout=60) as h:
        r = h.post("/completions", json={"model": "tiny", "prompt": "the quick brown", "max_tokens": 2,
                                         "echo": True, "logprobs": 2})
        body = r.json()
        assert r.status_code == 200 and body["object"] == "text_completion"
        ch = body["choices"][0]
        lp = ch["logprobs"]
        n = body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == n
        assert lp["token_logprobs"][0] is None and all(v <= 0 for v in lp["token_logprobs"][1:])
        assert ch["text"].startswith("the quick brown") and "".join(lp["tokens"]) == ch["text"]
        assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(n)]
        plain = h.post("/completions", json={"prompt": "the quick brown", "max_tokens": 2, "logprobs": 0}).json()
        assert plain["choices"][0]["text"] == ch["text"][len("the quick brown"):]
        assert plain["choices"][0]["logprobs"]["text_offset"][0] == len("the quick brown")
        assert h.post("/completions", json={"prompt": ""}).status_code == 400
        assert h.post("/completions", json={"prompt": "x", "logprobs": 99}).status_code == 400
        assert h.post("/completions", json={"prompt": "x", "max_tokens": -1}).status_code == 400


# -- prompt budgets over HTTP (issue 21, item 2) --------------------------------------------------
FILLER = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)
LONG_CONV = [
    {"role": "system", "content": "answer from the context only"},
    {"role": "user", "content": f"<context>penicillin was discovered in 1928. {FILLER}</context>\nwho was the fox"},
]


def _sent_messages(srv):
    return next(b["messages"] for b in reversed(srv.bodies) if "messages" in b)


@pytest.mark.parametrize("server", [{"context_window": 120}], indirect=True)
def test_over_long_prompt_is_shortened_from_the_servers_limit_without_a_tokenizer(server, local):
    gen = client(server)
    g = gen.generate([LONG_CONV], max_new_tokens=4)[0]
    assert g.ok, g.error
    assert g.info["truncated_context_tokens"] > 0 and g.info["truncation"] == "characters"
    assert g.info["resent_after_context_limit"] in (1, 2) and g.n_prompt_tokens + 4 <= 120
    sent = _sent_messages(server)
    assert sent[0]["content"] == "answer from the context only"
    assert sent[1]["content"].startswith("<context>penicillin was discovered in 1928.")
    assert sent[1]["content"].endswith("</context>\nwho was the fox")
    assert 2 <= server.n_requests <= 3  # refused once (maybe twice), then answered
    n = server.n_requests
    again = gen.generate([LONG_CONV, LONG_CONV], max_new_tokens=4)  # the limit is known now: no 400s
    assert all(x.ok for x in again) and server.n_requests == n + 2


@pytest.mark.parametrize("server", [{"context_window": 120}], indirect=True)
def test_tokenizer_budget_fits_exactly_without_a_refusal(server, tiny_llm_dir):
    gen = client(server, tokenizer=str(tiny_llm_dir), context_window=120)
    out = gen.generate([LONG_CONV, CONVS[0]], max_new_tokens=4)
    assert all(g.ok for g in out) and server.n_requests == 2
    assert out[0].info["truncation"] == "tokenizer" and "resent_after_context_limit" not in out[0].info
    assert "truncated_context_tokens" not in out[1].info
    assert 120 - 4 - 3 <= out[0].n_prompt_tokens <= 120 - 4  # cut to the budget, not far below it
    assert gen.prepare(LONG_CONV, max_new_tokens=4)[1].content.endswith("who was the fox")


@pytest.mark.parametrize("server", [{"context_window": 40}], indirect=True)
def test_4xx_for_an_item_that_cannot_be_shortened_keeps_the_servers_message(server):
    no_context = [{"role": "user", "content": FILLER}]
    out = client(server).generate([no_context, CONVS[0]], max_new_tokens=4)
    assert [g.ok for g in out] == [False, True]
    assert out[0].info["status"] == 400 and "maximum context length is 40 tokens" in out[0].error


def test_max_completion_tokens_for_model_families_that_need_it(server):
    assert OpenAIGenerator("o3-mini")._body([], SamplingSettings())["max_completion_tokens"] == 256
    assert "max_tokens" not in OpenAIGenerator("openai/gpt-5-mini")._body([], SamplingSettings())
    assert "max_completion_tokens" not in OpenAIGenerator("gpt-4o")._body([], SamplingSettings())
    assert "max_completion_tokens" not in OpenAIGenerator("ollama/o-llama")._body([], SamplingSettings())
    gen = client(server, max_tokens_param="max_completion_tokens")
    g = gen.generate(CONVS[:1], max_new_tokens=2)[0]
    assert g.ok and g.n_tokens <= 2
    assert server.bodies[-1]["max_completion_tokens"] == 2 and "max_tokens" not in server.bodies[-1]
    assert build_generator(gen.to_spec()).max_tokens_param == "max_completion_tokens"
    with pytest.raises(ConfigError, match="max_tokens_param"):
        OpenAIGenerator(max_tokens_param="max_new")


@pytest.mark.parametrize("server", [{"delay_s": 1.0}], indirect=True)
def test_a_timed_out_request_is_not_sent_again_unless_configured(server):
    g = client(server, timeout=0.2, max_retries=3).generate(CONVS[:1])[0]
    assert not g.ok and "not re-sent" in g.error and "retry_timeouts=True" in g.error
    assert server.n_requests == 1
    g = client(server, timeout=0.2, max_retries=1, retry_timeouts=True).generate(CONVS[:1])[0]
    assert not g.ok and "after 2 attempts" in g.error and server.n_requests == 3


def test_context_limit_messages_of_known_servers():
    from ctxkit.llm.openai import context_limit

    assert context_limit("This model's maximum context length is 2048 tokens. However, you requested 2100 "
                         "tokens (2000 in the messages, 100 in the completion).") == (2048, 2000)
    assert context_limit("Requested tokens (300) exceed context window of 256") == (256, 300)
    assert context_limit("Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. "
                         "Given: 4000 `inputs` tokens and 200 `max_new_tokens`") == (4096, 4000)
    assert context_limit("request (5000 tokens) exceeds the available context size (4096 tokens), "
                         "try increasing it") == (4096, 5000)
    assert context_limit("invalid or missing API key") is None
    # other "must be <= N" validation errors say nothing about the context window
    assert context_limit("temperature must be <= 2") is None
    assert context_limit("Input validation error: `top_k` must be <= 100") is None


# -- what needs the model in-process (CAAD / CAD) --------------------------------------------------
def test_caad_and_cad_with_an_http_generator_raise_a_clear_typed_error():
    from ctxkit.faithfulness.decoding import CAADLogitsProcessor, CADLogitsProcessor, GroundingSpace

    caad = CAADLogitsProcessor(GroundingSpace.synthetic(8, vocab_size=50, top_k=4))
    gen = OpenAIGenerator("m", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(CapabilityError, match=r"cannot run logits processors \(CAADLogitsProcessor\)") as info:
        OpenAIGenerator("m", logits_processors=[caad])
    assert "needs the model in this process" in str(info.value) and "TransformersGenerator" in str(info.value)
    assert info.value.capability == "logits_processors"
    with pytest.raises(CapabilityError, match="CAADLogitsProcessor"):
        gen.generate(CONVS[:1], logits_processors=[caad])
    with pytest.raises(CapabilityError, match="CAADLogitsProcessor"):
        gen.logits_processors = [caad]
    with pytest.raises(CapabilityError, match="has no model in this process"):
        CADLogitsProcessor.for_generator(gen)
    with pytest.raises(CapabilityError, match="has no model in this process"):
        GroundingSpace.from_generator(gen, [("q", "a")])
    assert getattr(gen, "model", None) is None and gen.logits_processors == []


def test_mmlu_harness_checks_scoring_before_reading_data(bench_module, tmp_path):
    cascade = bench_module("cascade")
    with OpenAICompatibleServer(TextOnlyGenerator(), model_name="m") as srv:
        spec = json.dumps({"backend": "openai", "model": "m", "base_url": srv.url})
        with pytest.raises(CapabilityError, match="MMLU harness"):  # no data exists: the check comes first
            cascade.mmlu(tmp_path / "no-data", tmp_path, "cpu", 5, 5, 0, 3, 1, generator=spec)


def test_token_strings_spell_the_text_in_linear_time(tiny_llm_dir):
    from transformers import AutoTokenizer

    from ctxkit.llm.server import _token_strings

    tok = AutoTokenizer.from_pretrained(str(tiny_llm_dir))
    seen: list[int] = []

    class Counting:
        def decode(self, ids):
            seen.append(len(ids))
            return tok.decode(ids)

    ascii_text = "the quick brown fox: 1928\nnew line  two spaces"
    seq = tok(ascii_text, add_special_tokens=True)["input_ids"]
    # ASCII: what each token adds to the decoding of every prefix (the quadratic reference)
    pieces = [tok.decode(seq[: j + 1]) for j in range(len(seq))]
    assert _token_strings(tok, seq) == [pieces[0]] + [pieces[j][len(pieces[j - 1]):] for j in range(1, len(seq))]
    text = "café, naïve 東京 ✓ — " + " ".join(["the quick brown fox"] * 20)
    seq = tok(text, add_special_tokens=True)["input_ids"]
    got = _token_strings(Counting(), seq)
    # byte-level pieces of one character: "" until the token that completes it, never "\ufffd"
    assert len(got) == len(seq) and "".join(got) == tok.decode(seq) and "\ufffd" not in "".join(got)
    assert "" in got and any("東" in t for t in got) and any("é" in t for t in got)
    # every decode call sees a bounded slice, two per token: linear, not quadratic, in the length
    assert max(seen) <= 8 + 4 and len(seen) == 2 * len(seq) and len(seq) > 60
