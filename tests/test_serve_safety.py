"""Hostile and malformed requests get clear 4xx answers (never a traceback), refused ones are
logged, and nothing a rejected request carried reaches the index or the feedback store."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import httpx
import pytest
from _serve_helpers import build_index, index_state

from ctxkit import load_pipeline
from ctxkit.rankers import FeedbackStore
from ctxkit.serve import Service, ServiceSettings

TOKEN = "hostile-test-token"


@pytest.fixture
def setup(tmp_path: Path, tiny_embedder_dir: Path):
    index = build_index(tmp_path / "index", tiny_embedder_dir)
    root = tmp_path / "allowed"
    root.mkdir()
    (root / "ok.md").write_text("# Fine\n\nA harmless page.\n")
    secret = tmp_path / "secret.md"
    secret.write_text("top secret text that must never be indexed\n")
    os.symlink(secret, root / "link.md")
    pipe = load_pipeline({"stages": [{"type": "bm25", "path": str(index), "k": 3},
                                     {"type": "record_feedback", "store": str(tmp_path / "fb.sqlite")}]})
    settings = ServiceSettings(token=TOKEN, allowed_roots=[root], max_body_bytes=64_000, max_query_chars=500,
                               max_queries_per_request=8, max_documents_per_request=3, max_document_chars=1000)
    return Service(pipe, settings), index, tmp_path / "fb.sqlite", root


def _bad(status: int, code: str | None = None, **request):
    return pytest.param(status, code, request, id=f"{status}-{code}-{json.dumps(request, default=str)[:40]}")


HOSTILE = [
    # wrong types and shapes
    ("POST", "/v1/query", {"json": {"query": 123}}, 422, "validation_error"),
    ("POST", "/v1/query", {"json": {"query": ["a"]}}, 422, "validation_error"),
    ("POST", "/v1/query", {"json": {"queries": "not a list"}}, 422, "validation_error"),
    ("POST", "/v1/query", {"json": {"queries": ["ok", 5]}}, 422, "validation_error"),
    ("POST", "/v1/query", {"json": {"query": "ok", "metadata": [1, 2]}}, 422, "validation_error"),
    ("POST", "/v1/query", {"json": {"query": "ok", "queries": ["ok"]}}, 422, "validation_error"),
    ("POST", "/v1/query", {"json": {}}, 422, "validation_error"),
    ("POST", "/v1/query", {"json": {"query": "ok", "evil": True}}, 422, "validation_error"),
    ("POST", "/v1/query", {"json": [1, 2, 3]}, 422, "validation_error"),
    ("POST", "/v1/query", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
    ("POST", "/v1/query", {"content": b"query=x"}, 400, "invalid_json"),
    # empty, huge, too many
    ("POST", "/v1/query", {"json": {"query": ""}}, 422, "validation_error"),
    ("POST", "/v1/query", {"json": {"query": "   \n\t "}}, 422, "invalid_input"),
    ("POST", "/v1/query", {"json": {"query": "a" * 501}}, 422, "query_too_long"),
    ("POST", "/v1/query", {"json": {"queries": ["ok"] * 9}}, 422, "too_many_queries"),
    ("POST", "/v1/query", {"json": {"query": "x" * 70_000}}, 413, "body_too_large"),
    ("POST", "/v1/query", {"content": (b"x" * 1000 for _ in range(100)),
                           "headers": {"content-type": "application/json"}}, 413, "body_too_large"),
    # unicode that no store can keep
    ("POST", "/v1/query", {"content": b'{"query": "bad \\ud800 surrogate"}',
                           "headers": {"content-type": "application/json"}}, 422, "validation_error"),
    ("POST", "/v1/query", {"json": {"query": "nul \u0000 char"}}, 422, "validation_error"),
    # feedback
    ("POST", "/v1/feedback", {"json": {"list_id": "never-shown", "event": "like"}}, 404, "unknown_list"),
    ("POST", "/v1/feedback", {"json": {"list_id": "x" * 600, "event": "like"}}, 422, "validation_error"),
    ("POST", "/v1/feedback", {"json": {"list_id": "a\u0000b", "event": "like"}}, 422, "validation_error"),
    ("POST", "/v1/feedback", {"json": {"list_id": "LID", "event": True}}, 422, "validation_error"),
    ("POST", "/v1/feedback", {"json": {"list_id": "LID", "event": {"x": 1}}}, 422, "validation_error"),
    ("POST", "/v1/feedback", {"json": {"list_id": "LID", "event": "thumbs_sideways"}}, 422, "unknown_event"),
    ("POST", "/v1/feedback", {"content": b'{"list_id": "LID", "event": NaN}',
                              "headers": {"content-type": "application/json"}}, 422, "invalid_input"),
    ("POST", "/v1/feedback", {"json": {"list_id": "LID", "event": "e" * 100}}, 422, "validation_error"),
    # ingest: traversal, links out of the root, bad documents
    ("POST", "/v1/ingest", {"json": {"paths": ["../secret.md"]}}, 403, "path_not_allowed"),
    ("POST", "/v1/ingest", {"json": {"paths": ["/etc/passwd"]}}, 403, "path_not_allowed"),
    ("POST", "/v1/ingest", {"json": {"paths": ["ok.md", "/etc"]}}, 403, "path_not_allowed"),
    ("POST", "/v1/ingest", {"json": {"paths": ["link.md"]}}, 403, "path_not_allowed"),
    ("POST", "/v1/ingest", {"json": {"paths": ["sub/../../secret.md"]}}, 403, "path_not_allowed"),
    ("POST", "/v1/ingest", {"json": {"paths": ["missing.md"]}}, 422, "no_such_path"),
    ("POST", "/v1/ingest", {"json": {"paths": ["ok\u0000.md"]}}, 422, "validation_error"),
    ("POST", "/v1/ingest", {"json": {"documents": [{"id": "d#3", "text": "chunk-like id"}]}}, 422, "validation_error"),
    ("POST", "/v1/ingest", {"json": {"documents": [{"id": "d", "text": 5}]}}, 422, "validation_error"),
    ("POST", "/v1/ingest", {"json": {"documents": [{"id": "d", "text": "t", "metadata": {"k": [1]}}]}}, 422,
     "validation_error"),
    ("POST", "/v1/ingest", {"json": {"documents": [{"id": f"d{i}", "text": "t"} for i in range(4)]}}, 422,
     "too_many_documents"),
    ("POST", "/v1/ingest", {"json": {"documents": [{"id": "d", "text": "t" * 1001}]}}, 422, "document_too_long"),
    ("POST", "/v1/ingest", {"json": {"documents": [{"id": "ok", "text": "fine"}], "paths": ["ok.md"]}}, 422,
     "validation_error"),
    ("POST", "/v1/ingest", {"json": {}}, 422, "validation_error"),
    # routes and methods
    ("GET", "/v1/query", {}, 405, "method_not_allowed"),
    ("GET", "/v1/nope", {}, 404, "not_found"),
    ("POST", "/v1/check", {"json": {"query": "q", "passages": []}}, 422, "validation_error"),
]


def test_hostile_requests_are_refused_cleanly_and_change_nothing(setup, caplog: pytest.LogCaptureFixture) -> None:
    svc, index, fb, _ = setup
    caplog.set_level(logging.INFO, logger="ctxkit.serve")
    before = index_state(index)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with svc.run_in_thread() as running, httpx.Client(base_url=running.url, timeout=60) as c:
        lid = c.post("/v1/query", json={"query": "eiffel tower"}, headers=auth).json()["results"][0]["list_id"]
        store_before = FeedbackStore(fb).count()
        assert store_before == {"lists": 1, "events": 0}
        # no token, a wrong one, another scheme: 401 and a warning in the log, for the API and MCP
        for headers in ({}, {"Authorization": "Bearer wrong-token-xx"}, {"Authorization": f"Basic {TOKEN}"}):
            for path in ("/v1/query", "/v1/feedback", "/v1/ingest", "/mcp"):
                r = c.post(path, json={"query": "eiffel"}, headers=headers)
                assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
                assert r.headers["www-authenticate"].startswith("Bearer")
        assert sum("missing or wrong bearer token" in m for m in caplog.messages) == 12
        assert c.get("/health").status_code == 200  # health stays open for load balancers
        for method, path, kwargs, status, code in HOSTILE:
            kwargs = json.loads(json.dumps(kwargs).replace("LID", lid)) if "json" in kwargs else kwargs
            r = c.request(method, path, headers={**auth, **kwargs.pop("headers", {})}, **kwargs)
            assert r.status_code == status, (path, kwargs, r.text[:300])
            body = r.json()
            assert set(body) == {"error"} and body["error"]["code"] == code, (path, body)
            assert body["error"]["message"] and "Traceback" not in r.text and len(r.text) < 20_000
        assert any("refused ingest path" in m for m in caplog.messages)
        assert any("413" in m for m in caplog.messages)
        # nothing reached the stores
        assert FeedbackStore(fb).count() == store_before
        assert index_state(index) == before
        # unusual but valid text is served
        for q in ("zero\u200bwidth", "\u05e2\u05d1\u05e8\u05d9\u05ea rtl", "emoji \U0001f9ea tube", "e\u0301 combining",
                  "control \x07 bell"):
            r = c.post("/v1/query", json={"query": q}, headers=auth)
            assert r.status_code == 200 and r.json()["results"][0]["query"] == q
        r = c.post("/v1/ingest", json={"paths": ["ok.md"]}, headers=auth)
        assert r.status_code == 200 and r.json()["files"] == 1
    assert FeedbackStore(fb).count()["events"] == 0
    assert index_state(index)[1] == before[1] + 1


def test_paths_are_refused_without_allowed_roots(tmp_path: Path, tiny_embedder_dir: Path) -> None:
    index = build_index(tmp_path / "index", tiny_embedder_dir)
    (tmp_path / "doc.md").write_text("# Doc\n\ntext\n")
    svc = Service(load_pipeline({"stages": [{"type": "bm25", "path": str(index)}]}))
    with svc.run_in_thread() as running:
        r = httpx.post(running.url + "/v1/ingest", json={"paths": [str(tmp_path / "doc.md")]})
        assert r.status_code == 403 and r.json()["error"]["code"] == "paths_not_allowed"
        r = httpx.post(running.url + "/v1/feedback", json={"list_id": "x", "event": "like"})
        assert r.status_code == 409 and "record_feedback" in r.json()["error"]["message"]
