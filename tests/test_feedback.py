"""Feedback store: real SQLite files, concurrent threads and processes, crash mid-transaction."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest

from ctxkit import ConfigError, ContextState, InputError, Passage, Pipeline
from ctxkit.rankers import FeedbackStore, RecordFeedback, UnknownEventError, UnknownListError


def _state(q: str, ids: list[str]) -> ContextState:
    return ContextState(query=q, passages=[Passage(id=i, text=f"text {i}", scores={"bm25": float(n)}) for n, i in enumerate(ids)])


def test_record_list_and_events_roundtrip(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite")
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


def test_bad_events_are_rejected_and_leave_nothing(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite")
    lid = store.record_list(_state("q", ["a"]))
    with pytest.raises(UnknownListError, match="record the shown list first"):
        store.record_event("nope", "like")
    with pytest.raises(UnknownEventError, match="known events: copy, dislike, like, regenerate"):
        store.record_event(lid, "thumbs_sideways")
    with pytest.raises(InputError):
        store.record_event(lid, float("nan"))
    with pytest.raises(InputError):
        store.record_event(lid, True)  # type: ignore[arg-type]
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


def test_concurrent_threads_and_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "fb.sqlite")
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
    con = sqlite3.connect(path)
    ids = [r[0] for r in con.execute("SELECT list_id FROM lists")]
    assert len(ids) == len(set(ids)) == 7 * n
    ev = con.execute("SELECT list_id, COUNT(*) FROM events GROUP BY list_id").fetchall()
    assert len(ev) == 7 * n and all(c == 1 for _, c in ev)
    assert set(ids) == {f"{tag}-{i}" for tag in [f"p{j}" for j in range(3)] + [f"t{j}" for j in range(4)] for i in range(n)}


def _crash_inside_transaction(path: str, ready: "mp.synchronize.Event") -> None:  # type: ignore[name-defined]
    store = FeedbackStore(path)
    with store.transaction():
        s = _state("half", ["x", "y"])
        s.trace.list_id = "half-written"
        store.record_list(s)
        store.record_event("half-written", "copy")
        ready.set()
        os.kill(os.getpid(), signal.SIGKILL)


def test_crash_mid_write_leaves_no_partial_list(tmp_path: Path) -> None:
    path = str(tmp_path / "fb.sqlite")
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
