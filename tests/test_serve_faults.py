"""Service processes (``ctxkit serve-pipeline``) under faults, on loopback, bounded in time:
graceful shutdown, a kill mid-request (SQLite and PostgreSQL feedback), two replicas sharing a
PostgreSQL feedback store that the ranker then trains from."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx
import pytest
from _serve_helpers import ServiceProcess, build_index, corpus, wait_for, write_config

from ctxkit.rankers import FeedbackRanker, FeedbackStore

# uvicorn re-raises the SIGTERM it handled once the graceful shutdown is done
CLEAN = (0, -signal.SIGTERM)


@pytest.fixture
def index(tmp_path: Path, tiny_embedder_dir: Path) -> Path:
    return build_index(tmp_path / "index", tiny_embedder_dir, corpus(n_filler=40))


def _gate(tmp_path: Path) -> dict:
    return {"type": "_serve_helpers:Gate", "word": "slow", "entered": str(tmp_path / "entered"),
            "release": str(tmp_path / "release"), "limit_s": 120}


def test_sigterm_finishes_in_flight_requests_then_closes_the_stores(tmp_path: Path, index: Path) -> None:
    fb = tmp_path / "fb.sqlite"
    cfg = write_config(tmp_path / "p.yaml", [{"type": "bm25", "path": str(index), "k": 3}, _gate(tmp_path),
                                             {"type": "record_feedback", "store": str(fb)}])
    svc = ServiceProcess(cfg).start()
    answer: dict = {}

    def slow_request() -> None:
        answer["r"] = httpx.post(svc.url + "/v1/query", json={"query": "slow eiffel tower"}, timeout=120)

    t = threading.Thread(target=slow_request)
    t.start()
    wait_for((tmp_path / "entered").exists, 60, "the request to enter the pipeline")
    svc.send(signal.SIGTERM)

    def refusing() -> bool:
        try:
            httpx.get(svc.url + "/health", timeout=2)
        except httpx.HTTPError:
            return True
        return False

    wait_for(refusing, 30, "the service to stop accepting connections")
    (tmp_path / "release").touch()
    t.join(60)
    r = answer["r"]
    assert r.status_code == 200 and r.json()["results"][0]["passages"][0]["doc_id"] == "eiffel"
    assert svc.stop(timeout=60) in CLEAN
    logs = svc.logs()
    assert "stopping: finishing" in logs and "stopped: closed 1 feedback store(s)" in logs
    lid = r.json()["results"][0]["list_id"]
    assert FeedbackStore(fb).get(lid).query == "slow eiffel tower"  # recorded before the stores closed


def test_killed_mid_request_keeps_committed_feedback_and_a_readable_index(
    tmp_path: Path, index: Path, feedback_location: str
) -> None:
    cfg = write_config(tmp_path / "p.yaml", [{"type": "bm25", "path": str(index), "k": 3}, _gate(tmp_path),
                                             {"type": "record_feedback", "store": feedback_location}])
    svc = ServiceProcess(cfg).start()
    lids = [httpx.post(svc.url + "/v1/query", json={"query": q}, timeout=60).json()["results"][0]["list_id"]
            for q in ("eiffel tower", "marie curie", "apollo moon")]
    acked: list[tuple[str, float]] = []
    stop = threading.Event()

    def hammer() -> None:  # feedback keeps arriving while the process is killed
        i = 0
        while not stop.is_set():
            lid, reward = lids[i % 3], float(i % 5) / 4
            try:
                r = httpx.post(svc.url + "/v1/feedback", json={"list_id": lid, "event": reward}, timeout=10)
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                acked.append((lid, reward))
            i += 1

    worker = threading.Thread(target=hammer)
    worker.start()
    slow = threading.Thread(target=lambda: _quiet_post(svc.url + "/v1/query", {"query": "slow fox"}))
    slow.start()
    wait_for((tmp_path / "entered").exists, 60, "the slow request to enter the pipeline")
    wait_for(lambda: len(acked) >= 10, 60, "some acknowledged feedback")
    svc.send(signal.SIGKILL)
    assert svc.stop(timeout=30) == -signal.SIGKILL
    stop.set()
    worker.join(30)
    slow.join(30)
    # every acknowledged event is in the store; the killed request left no list behind
    store = FeedbackStore(feedback_location)
    got = {sl.list_id: sl.rewards for sl in store.lists()}
    for lid in lids:
        want = [r for lid2, r in acked if lid2 == lid]
        assert got[lid][: len(want)] == want  # an event in flight when killed may or may not be there
    assert len(got) == 3 and store.count()["lists"] == 3
    # a fresh process serves the same index and store
    (tmp_path / "release").touch()
    again = ServiceProcess(cfg).start()
    try:
        r = httpx.post(again.url + "/v1/query", json={"query": "eiffel tower"}, timeout=60)
        assert r.status_code == 200 and r.json()["results"][0]["passages"][0]["doc_id"] == "eiffel"
        assert httpx.post(again.url + "/v1/feedback", json={"list_id": lids[0], "event": "like"}).status_code == 200
    finally:
        assert again.stop() in CLEAN


def _quiet_post(url: str, body: dict) -> None:
    try:
        httpx.post(url, json=body, timeout=60)
    except httpx.HTTPError:
        pass


def test_killed_during_an_ingest_leaves_an_index_that_opens_and_can_be_completed(tmp_path: Path, index: Path) -> None:
    cfg = write_config(tmp_path / "p.yaml", [{"type": "bm25", "path": str(index), "k": 3}])
    svc = ServiceProcess(cfg, "--max-body-bytes", "20000000").start()
    docs = [{"id": f"new{i}", "text": f"zebra number {i} " + "stripes and savanna grass " * 60} for i in range(256)]
    t = threading.Thread(target=_quiet_post, args=(svc.url + "/v1/ingest", {"documents": docs}))
    t.start()
    wait_for(lambda: httpx.get(svc.url + "/health", timeout=5).json()["in_flight"] >= 1, 60, "the ingest in flight")
    svc.send(signal.SIGKILL)
    assert svc.stop(timeout=30) == -signal.SIGKILL
    t.join(30)
    again = ServiceProcess(cfg, "--max-body-bytes", "20000000").start()
    try:
        r = httpx.post(again.url + "/v1/query", json={"query": "eiffel tower"}, timeout=60)
        assert r.status_code == 200 and r.json()["results"][0]["passages"][0]["doc_id"] == "eiffel"
        r = httpx.post(again.url + "/v1/ingest", json={"documents": docs}, timeout=300)
        assert r.status_code == 200 and r.json()["written"] + r.json()["unchanged"] == 256
        hits = httpx.post(again.url + "/v1/query", json={"query": "zebra number 255"}, timeout=60).json()
        assert any(p["doc_id"] == "new255" for p in hits["results"][0]["passages"])
    finally:
        assert again.stop() in CLEAN


def test_two_replicas_share_postgres_feedback_and_the_ranker_trains_from_it(
    tmp_path: Path, index: Path, postgres_url: str
) -> None:
    cfg = write_config(tmp_path / "p.yaml", [{"type": "bm25", "path": str(index), "k": 4},
                                             {"type": "record_feedback", "store": postgres_url}])
    a, b = ServiceProcess(cfg).start(), ServiceProcess(cfg).start()
    try:
        shown: dict[str, str] = {}
        questions = ["eiffel tower paris", "marie curie radium", "apollo moon landing", "penicillin discovered"]
        for q in questions:
            # each question is shown twice, once per replica (the second list without the first's
            # top document); the feedback goes to the OTHER replica: the store is shared
            first = httpx.post(a.url + "/v1/query", json={"query": q}, timeout=60).json()["results"][0]
            where = {"doc_id": {"$ne": first["passages"][0]["doc_id"]}}
            second = httpx.post(b.url + "/v1/query", json={"query": q, "metadata": {"where": where}},
                                timeout=60).json()["results"][0]
            for res, replica, other, event in ((first, a, b, "like"), (second, b, a, "dislike")):
                shown[res["list_id"]] = replica.url
                r = httpx.post(other.url + "/v1/feedback", json={"list_id": res["list_id"], "event": event})
                assert r.status_code == 200, r.text
        assert len(set(shown.values())) == 2
    finally:
        assert a.stop() in CLEAN and b.stop() in CLEAN
    store = FeedbackStore(postgres_url)
    lists = store.lists()
    assert {sl.list_id for sl in lists} == set(shown) and all(len(sl.rewards) == 1 for sl in lists)
    ranker = FeedbackRanker(store=postgres_url, use_embeddings=False, epochs=20, validation=0.0, k=None)
    report = ranker.fit()
    assert report["lists"] == 2 * len(questions) and report["groups"] == len(questions) and ranker.fitted
    assert ranker.weights()  # trained weights from what both replicas recorded
