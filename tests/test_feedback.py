"""Feedback store: real SQLite files and a real PostgreSQL server (the same tests on both
backends), concurrent threads and processes, crash mid-transaction."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from pathlib import Path

import pytest

from ctxkit import ConfigError, ContextState, InputError, Passage, Pipeline
from ctxkit.rankers import FeedbackStore, RecordFeedback, UnknownEventError, UnknownListError


def _state(q: str, ids: list[str]) -> ContextState:
    return ContextState(query=q, passages=[Passage(id=i, text=f"text {i}", scores={"bm25": float(n)}) for n, i in enumerate(ids)])


def test_record_list_and_events_roundtrip(feedback_location: str) -> None:
    store = FeedbackStore(feedback_location)
    s = _state("who?", ["a", "b", "c"])
    lid = store.record_list(s)
    assert lid == s.trace.list_id
    assert store.record_event(lid, "copy") == 1.0
    assert store.record_event(lid, "Dislike") == -1.0
    assert store.record_event(lid, 0.25) == 0.25
    assert store.record_event(lid, "0.5") == 0.5
    got = store.get(lid)
    assert [it["id"] for it in got.items] == ["a", "b", "c"]
    assert got.items[1]["scores"] == {"bm25": 1.0}
    assert got.rewards == [1.0, -1.0, 0.25, 0.5]
    assert got.reward == pytest.approx(0.1875)
    assert [p.id for p in got.passages()] == ["a", "b", "c"]
    # re-recording the same list is a no-op, different items under the same id is an error
    store.record_list(s)
    assert store.count() == {"lists": 1, "events": 4}
    s.passages = s.passages[:1]
    with pytest.raises(InputError, match="already recorded"):
        store.record_list(s)


def test_bad_events_are_rejected_and_leave_nothing(feedback_location: str) -> None:
    store = FeedbackStore(feedback_location)
    lid = store.record_list(_state("q", ["a"]))
    with pytest.raises(UnknownListError, match="record the shown list first"):
        store.record_event("nope", "like")
    with pytest.raises(UnknownEventError, match="known events: copy, dislike, like, regenerate"):
        store.record_event(lid, "thumbs_sideways")
    with pytest.raises(InputError):
        store.record_event(lid, float("nan"))
    with pytest.raises(InputError):
        store.record_event(lid, True)  # type: ignore[arg-type]
    with pytest.raises(UnknownListError):
        store.record_event(["not", "an", "id"], "like")  # type: ignore[arg-type]
    assert store.count()["events"] == 0
    assert isinstance(UnknownListError("x"), InputError)


def test_custom_label_mapping(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite", labels={"thumbs_up": 2.0, "copy": 0.5})
    lid = store.record_list(_state("q", ["a"]))
    assert store.record_event(lid, "thumbs_up") == 2.0
    assert store.record_event(lid, "copy") == 0.5
    with pytest.raises(UnknownEventError):
        store.record_event(lid, "like")
    with pytest.raises(ConfigError):
        FeedbackStore(tmp_path / "x.sqlite", labels={"bad": float("inf")})
    with pytest.raises(ConfigError):
        FeedbackStore(":memory:")


def _same_id_writer(path: str, list_id: str, n: int) -> None:
    store = FeedbackStore(path)
    for i in range(n):
        s = _state(f"race-{i}", [f"r{i}-a", f"r{i}-b"])
        s.trace.list_id = f"{list_id}-{i}"
        store.record_list(s)  # every writer records the same lists: no key error, no duplicate
        store.record_event(s.trace.list_id, "like")
    store.close()


def test_writers_racing_on_the_same_list_ids(feedback_location: str) -> None:
    FeedbackStore(feedback_location)
    threads = [threading.Thread(target=_same_id_writer, args=(feedback_location, "same", 20)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = FeedbackStore(feedback_location)
    assert store.count() == {"lists": 20, "events": 80}
    assert all(sl.rewards == [1.0] * 4 for sl in store.lists())


def test_close_all_closes_every_thread_connection_and_reopens(feedback_location: str) -> None:
    store = FeedbackStore(feedback_location)
    lid = store.record_list(_state("q", ["a"]))
    t = threading.Thread(target=store.record_event, args=(lid, "like"))
    t.start()
    t.join()
    assert len(store._open) == 2
    store.close_all()
    assert store._open == []
    assert store.record_event(lid, "dislike") == -1.0  # a fresh connection after close_all
    assert store.count() == {"lists": 1, "events": 2}


def test_postgres_url_gives_the_postgres_backend_with_the_same_schema(postgres_url: str, tmp_path: Path) -> None:
    from ctxkit.rankers.feedback_postgres import PostgresFeedbackStore

    pg = FeedbackStore(postgres_url)
    assert isinstance(pg, PostgresFeedbackStore) and isinstance(pg, FeedbackStore)
    lite = FeedbackStore(tmp_path / "fb.sqlite")
    cols = pg._execute(pg._con, "SELECT table_name, column_name FROM information_schema.columns "
                                "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position").fetchall()
    lite_cols = [(t, r[1]) for t in ("events", "lists") for r in lite._con.execute(f"PRAGMA table_info({t})")]
    assert [tuple(c) for c in cols] == lite_cols
    with pytest.raises(InputError, match="NUL"):
        pg.record_list(_state("bad\x00query", ["a"]))
    assert pg.count() == {"lists": 0, "events": 0}
    with pytest.raises(ConfigError, match="cannot connect"):
        FeedbackStore("postgresql://nobody@127.0.0.1:1/none", timeout=1)


def test_wal_mode_and_busy_timeout(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite", timeout=7)
    con = store._con
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA busy_timeout").fetchone()[0] == 7000


def _writer(path: str, tag: str, n: int) -> None:
    store = FeedbackStore(path)
    for i in range(n):
        s = _state(f"{tag}-{i}", [f"{tag}-{i}-a", f"{tag}-{i}-b"])
        s.trace.list_id = f"{tag}-{i}"
        store.record_list(s)
        store.record_event(s.trace.list_id, "like" if i % 2 else "dislike")
    store.close()


def test_concurrent_threads_and_processes(feedback_location: str) -> None:
    path = feedback_location
    FeedbackStore(path)
    n = 25
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, f"p{j}", n)) for j in range(3)]
    threads = [threading.Thread(target=_writer, args=(path, f"t{j}", n)) for j in range(4)]
    for p in procs:
        p.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    got = FeedbackStore(path).lists()
    ids = [sl.list_id for sl in got]
    assert len(ids) == len(set(ids)) == 7 * n
    assert all(len(sl.rewards) == 1 for sl in got)
    assert set(ids) == {f"{tag}-{i}" for tag in [f"p{j}" for j in range(3)] + [f"t{j}" for j in range(4)] for i in range(n)}


def _crash_inside_transaction(path: str, ready: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    store = FeedbackStore(path)
    with store.transaction():
        s = _state("half", ["x", "y"])
        s.trace.list_id = "half-written"
        store.record_list(s)
        store.record_event("half-written", "copy")
        ready.set()
        os.kill(os.getpid(), signal.SIGKILL)


def test_crash_mid_write_leaves_no_partial_list(feedback_location: str) -> None:
    path = feedback_location
    store = FeedbackStore(path)
    keep = _state("kept", ["k"])
    store.record_list(keep)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_crash_inside_transaction, args=(path, ready))
    p.start()
    p.join(60)
    assert ready.is_set() and p.exitcode == -signal.SIGKILL
    fresh = FeedbackStore(path)
    assert fresh.count() == {"lists": 1, "events": 0}
    with pytest.raises(UnknownListError):
        fresh.get("half-written")
    # the database is still writable after the crash
    fresh.record_event(keep.trace.list_id, "like")
    assert fresh.count()["events"] == 1


def test_pipeline_feedback_via_record_stage(tmp_path: Path) -> None:
    db = tmp_path / "fb.sqlite"

    class Fixed:
        name = "fixed"

        def run(self, states):
            for s in states:
                s.passages = [Passage(id="p1", text="one"), Passage(id="p2", text="two")]
            return states

        async def arun(self, states):
            return self.run(states)

        def to_config(self):
            return {"type": "fixed"}

    pipe = Pipeline([Fixed(), RecordFeedback(store=str(db))])
    state = pipe.run("question?")
    assert pipe.feedback(state.trace.list_id, "copy") == 1.0
    shown = FeedbackStore(db).get(state.trace.list_id)
    assert [it["id"] for it in shown.items] == ["p1", "p2"] and shown.rewards == [1.0]
    with pytest.raises(UnknownListError):
        pipe.feedback("missing", "copy")
    with pytest.raises(ConfigError, match="record_feedback"):
        Pipeline([Fixed()]).feedback(state.trace.list_id, "copy")


def test_position_effects_find_the_position_that_matters(tmp_path: Path) -> None:
    import numpy as np

    store = FeedbackStore(tmp_path / "fb.sqlite")
    rng = np.random.default_rng(0)
    with store.transaction():
        for i in range(200):
            q = rng.normal(size=4)
            s = ContextState(query=f"q{i}", passages=[Passage(id=f"{i}-{j}", text="t", scores={"r": float(q[j])}) for j in range(4)])
            store.record_list(s)
            z = (q - q.mean()) / q.std()
            store.record_event(s.trace.list_id, float(2.0 * z[3] + 0.2 * z[0] + rng.normal(scale=0.1)))
    w = store.position_effects()
    assert len(w) == 4 and int(np.argmax(w)) == 3 and w[3] - max(w[:3]) > 1.5  # relative effects
