"""OpenAIGenerator against a REAL local HTTP server (ours, serving a tiny transformers model).

Retries, 4xx handling, the concurrency limit and timeouts are exercised through real server
behaviour (failing the first N requests, slow answers, an API key), not through client mocks.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest

from ctxkit.errors import ConfigError, InputError
from ctxkit.llm import OpenAIGenerator, SamplingSettings, build_generator
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
    with pytest.raises(NotImplementedError, match="TransformersGenerator"):
        gen.score([[]], ["x"])
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
