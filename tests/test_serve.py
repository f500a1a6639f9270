"""The HTTP service on loopback with a real HTTP client: queries, cross-request batching, errors
isolated per request, timeouts, feedback, ingest, answers and token streaming, OpenAPI."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from _serve_helpers import build_index, index_state, wait_for

from ctxkit import load_pipeline
from ctxkit.serve import MicroBatcher, Service, ServiceSettings

TOKEN = "test-token-123"


@pytest.fixture(scope="module")
def base_index(tmp_path_factory: pytest.TempPathFactory, tiny_embedder_dir: Path) -> Path:
    return build_index(tmp_path_factory.mktemp("serve_index") / "index", tiny_embedder_dir)


@pytest.fixture
def index(base_index: Path, tmp_path: Path) -> Path:
    """A private copy of the index (tests that ingest change it)."""
    dst = tmp_path / "index"
    shutil.copytree(base_index, dst)
    return dst


def _pipe(index: Path, tmp_path: Path, *extra: dict) -> object:
    return load_pipeline({"stages": [{"type": "bm25", "path": str(index), "k": 3}, *extra,
                                     {"type": "record_feedback", "store": str(tmp_path / "fb.sqlite")}]})


def _client(url: str, token: str | None = TOKEN) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=60)


def _concurrently(n: int, fn) -> list:
    out: list = [None] * n
    start = threading.Barrier(n)

    def worker(i: int) -> None:
        start.wait()
        out[i] = fn(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_query_returns_passages_scores_trace_and_feedback_roundtrip(index: Path, tmp_path: Path) -> None:
    svc = Service(_pipe(index, tmp_path), ServiceSettings(token=TOKEN))
    with svc.run_in_thread() as running, _client(running.url) as c:
        assert c.get("/ready").json() == {"ready": True}
        r = c.post("/v1/query", json={"query": "when was the eiffel tower completed"})
        assert r.status_code == 200, r.text
        [res] = r.json()["results"]
        assert res["passages"][0]["id"] == "eiffel#0"
        assert set(res["passages"][0]["scores"]) == {"bm25"} and res["passages"][0]["scores"]["bm25"] > 0
        assert [s["stage"] for s in res["trace"]["stages"]] == ["bm25", "record_feedback"]
        assert res["error"] is None and res["answer"] is None
        lid = res["list_id"]
        assert c.post("/v1/feedback", json={"list_id": lid, "event": "like"}).json() == {"list_id": lid, "reward": 1.0}
        assert c.post("/v1/feedback", json={"list_id": lid, "event": -0.5}).json()["reward"] == -0.5
        bad = c.post("/v1/feedback", json={"list_id": "never-shown", "event": "like"})
        assert bad.status_code == 404 and bad.json()["error"]["code"] == "unknown_list"
        bad = c.post("/v1/feedback", json={"list_id": lid, "event": "meh"})
        assert bad.status_code == 422 and "known events" in bad.json()["error"]["message"]
        # a batch in one request, top_k and per-query metadata (a where filter)
        r = c.post("/v1/query", json={"queries": ["penicillin discovered", "moon landing"], "top_k": 1,
                                      "metadata": {"where": {"doc_id": "pasteur"}}})
        results = r.json()["results"]
        assert [len(x["passages"]) for x in results] == [1, 0]
        assert results[0]["passages"][0]["doc_id"] == "pasteur"
        info = c.get("/v1/info").json()
        assert [s["type"] for s in info["stages"]] == ["bm25", "record_feedback"] and info["settings"]["auth"] is True
        assert "token" not in info["settings"]
        schema = c.get("/openapi.json").json()
        assert {"/v1/query", "/v1/answer", "/v1/check", "/v1/feedback", "/v1/ingest", "/health", "/ready"} <= set(schema["paths"])
    from ctxkit.rankers import FeedbackStore

    shown = FeedbackStore(tmp_path / "fb.sqlite").get(lid)
    assert shown.rewards == [1.0, -0.5] and shown.items[0]["id"] == "eiffel#0"


def test_concurrent_requests_share_pipeline_batches_and_each_gets_its_own_result(index: Path, tmp_path: Path) -> None:
    svc = Service(_pipe(index, tmp_path), ServiceSettings(batch_window_ms=300, max_batch_size=64))
    topics = ["eiffel tower", "marie curie radium", "moon apollo", "quick brown fox"] * 4
    expected = ["eiffel", "curie", "moon", "fox"] * 4
    with svc.run_in_thread() as running, _client(running.url, None) as c:
        out = _concurrently(len(topics), lambda i: c.post("/v1/query", json={"query": topics[i]}).json()["results"][0])
        health = c.get("/health").json()
    assert [r["query"] for r in out] == topics
    assert [r["passages"][0]["doc_id"] for r in out] == expected
    sizes = [r["trace"]["stages"][0]["info"]["batch_size"] for r in out]
    assert max(sizes) > 1, sizes  # requests from different clients ran through bm25 together
    assert health["max_batch_seen"] == max(sizes) and health["queries"] == len(topics)
    assert health["batches"] < len(topics)


def test_unbatched_mode_runs_one_request_at_a_time(index: Path, tmp_path: Path) -> None:
    svc = Service(_pipe(index, tmp_path), ServiceSettings.unbatched())
    with svc.run_in_thread() as running, _client(running.url, None) as c:
        out = _concurrently(8, lambda i: c.post("/v1/query", json={"query": "eiffel"}).json()["results"][0])
        health = c.get("/health").json()
    assert {r["trace"]["stages"][0]["info"]["batch_size"] for r in out} == {1}
    assert health["batches"] == 8 and health["max_batch_seen"] == 1


def test_a_failing_query_does_not_fail_the_others_in_its_batch(index: Path, tmp_path: Path) -> None:
    pipe = _pipe(index, tmp_path, {"type": "_serve_helpers:FailOn", "word": "boom"})
    svc = Service(pipe, ServiceSettings(batch_window_ms=300))
    queries = ["eiffel tower", "boom eiffel", "moon apollo", "fox"]
    with svc.run_in_thread() as running, _client(running.url, None) as c:
        out = _concurrently(4, lambda i: c.post("/v1/query", json={"query": queries[i]}))
        assert [r.status_code for r in out] == [200, 500, 200, 200]
        err = out[1].json()["error"]
        assert err["code"] == "internal_error" and "asked to fail" in err["message"] and "Traceback" not in out[1].text
        assert all(r.json()["results"][0]["flags"]["checked_by"] == "fail_on" for r in out if r.status_code == 200)
        # in one request with several queries: per-query errors, status 200
        r = c.post("/v1/query", json={"queries": ["eiffel", "boom"]})
        assert r.status_code == 200
        a, b = r.json()["results"]
        assert a["error"] is None and a["passages"] and "asked to fail" in b["error"] and b["passages"] == []


def test_request_timeout_gives_504_and_the_service_goes_on(index: Path, tmp_path: Path) -> None:
    gate = {"type": "_serve_helpers:Gate", "word": "slow", "entered": str(tmp_path / "entered"),
            "release": str(tmp_path / "release"), "limit_s": 60}
    svc = Service(_pipe(index, tmp_path, gate), ServiceSettings(request_timeout_s=0.5))
    with svc.run_in_thread() as running, _client(running.url, None) as c:
        r = c.post("/v1/query", json={"query": "slow eiffel"})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        (tmp_path / "release").touch()
        ok = c.post("/v1/query", json={"query": "eiffel"})
        assert ok.status_code == 200 and ok.json()["results"][0]["passages"]


def test_ingest_documents_and_allowed_paths_then_query_finds_them(index: Path, tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "volcano.md").write_text("# Volcano\n\nVesuvius erupted in 79 and buried pompeii.\n")
    svc = Service(_pipe(index, tmp_path), ServiceSettings(allowed_roots=[root]))
    gen0, n0 = index_state(index)
    with svc.run_in_thread() as running, _client(running.url, None) as c:
        r = c.post("/v1/ingest", json={"documents": [{"id": "zebra", "text": "zebras have black and white stripes",
                                                      "metadata": {"lang": "en"}}]})
        assert r.status_code == 200 and r.json()["written"] == 1 and r.json()["chunks_written"] == 1
        r = c.post("/v1/ingest", json={"paths": ["sub"]})  # relative to the first allowed root
        assert r.status_code == 200 and r.json()["files"] == 1, r.text
        assert c.post("/v1/query", json={"query": "zebra stripes"}).json()["results"][0]["passages"][0]["doc_id"] == "zebra"
        hits = c.post("/v1/query", json={"query": "vesuvius pompeii"}).json()["results"][0]["passages"]
        assert hits and "Vesuvius" in hits[0]["text"]
    gen1, n1 = index_state(index)
    assert gen1 > gen0 and n1 == n0 + 2


def test_check_runs_the_checks_on_passages_sent(index: Path, tmp_path: Path) -> None:
    pipe = _pipe(index, tmp_path, {"type": "_integration_stages:FlagPoison"})
    svc = Service(pipe)
    with svc.run_in_thread() as running, _client(running.url, None) as c:
        r = c.post("/v1/check", json={"query": "who discovered penicillin", "passages": [
            {"id": "a", "text": "Penicillin was discovered by Louis Pasteur in 1901."},
            {"id": "b", "text": "Fleming found penicillin in 1928."}]})
        assert r.status_code == 200, r.text
        res = r.json()
        assert [p["id"] for p in res["passages"]] == ["a", "b"]  # no retrieval: the passages sent
        assert res["flags"]["inappropriate"] == ["a"] and res["conflicts"][0]["chunk_span"] == "Louis Pasteur"
        assert [s["stage"] for s in res["trace"]["stages"]] == ["flag_poison", "record_feedback"]
        dup = c.post("/v1/check", json={"query": "q", "passages": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]})
        assert dup.status_code == 422 and dup.json()["error"]["code"] == "duplicate_passage_ids"
        assert c.post("/v1/answer", json={"query": "who?"}).status_code == 409  # no generator here


def _sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.mark.slow
def test_answer_and_streamed_tokens_from_a_transformers_generator(index: Path, tmp_path: Path, tiny_llm_dir: Path) -> None:
    gen = {"type": "generate", "generator": {"backend": "transformers", "model": str(tiny_llm_dir), "device": "cpu"},
           "sampling": {"max_new_tokens": 8}}
    pipe = load_pipeline({"stages": [{"type": "bm25", "path": str(index), "k": 2}, gen]})
    svc = Service(pipe)
    assert svc.can_answer and svc.can_stream
    with svc.run_in_thread() as running, _client(running.url, None) as c:
        full = c.post("/v1/answer", json={"query": "who discovered penicillin"}).json()
        assert full["answer"] and full["passages"] and "penicillin" in full["prompt"]
        r = c.post("/v1/answer", json={"query": "who discovered penicillin", "stream": True})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r.text)
        kinds = [k for k, _ in events]
        assert kinds[-1] == "done" and kinds.count("token") >= 2 and set(kinds[:-1]) == {"token"}
        done = events[-1][1]
        assert "".join(d["text"] for k, d in events if k == "token").strip() == done["answer"] == full["answer"]
        assert done["trace"]["stages"][-1]["info"]["streamed"] is True
        long_q = c.post("/v1/answer", json={"query": "x" * 5000, "stream": True})
        assert long_q.status_code == 422 and long_q.json()["error"]["code"] == "query_too_long"


async def test_micro_batcher_window_limit_cancellation_and_drain() -> None:
    calls: list[list[int]] = []

    def fn(items: list[int]) -> list[object]:
        calls.append(list(items))
        return [ValueError("odd") if i == 13 else i * 10 for i in items]

    b = MicroBatcher(fn, window_s=0.2, max_batch=4, name="test")
    await b.start()
    results = await asyncio.gather(*(b.submit(i) for i in range(10)), b.submit(13), return_exceptions=True)
    assert results[:10] == [i * 10 for i in range(10)] and isinstance(results[10], ValueError)
    assert max(len(c) for c in calls) == 4 and sum(len(c) for c in calls) == 11
    # a caller that gave up is not run
    calls.clear()
    slow = asyncio.ensure_future(b.submit(99))
    slow.cancel()
    assert await b.submit(1) == 10
    assert all(99 not in c for c in calls)
    # close runs what is queued, then refuses
    pending = [asyncio.ensure_future(b.submit(i)) for i in range(3)]
    await asyncio.sleep(0)
    await b.close()
    assert [p.result() for p in pending] == [0, 10, 20]
    with pytest.raises(RuntimeError, match="not running"):
        await b.submit(1)


def test_import_ctxkit_serve_is_light() -> None:
    code = ("import sys, ctxkit, ctxkit.serve; from ctxkit.serve import ServiceSettings; "
            "print(sorted(m for m in ('fastapi','mcp','psycopg','torch','uvicorn','starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_readiness_follows_start_and_stop(index: Path, tmp_path: Path) -> None:
    svc = Service(_pipe(index, tmp_path))
    assert svc.health()["status"] == "starting" and not svc.ready
    with svc.run_in_thread() as running:
        assert httpx.get(running.url + "/health").json()["status"] == "ok"
    wait_for(lambda: not svc.ready, 10, "the service to stop")
    assert svc.health()["status"] == "stopping"
