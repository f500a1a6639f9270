"""The feedback store: which exact ordered list was shown for a query, and what happened next.

An embedded SQLite database by default (stdlib ``sqlite3``, WAL journal, ``busy_timeout``); a
PostgreSQL server when several service replicas share what users taught the ranker (pass a
``postgresql://`` URL instead of a path: see :mod:`ctxkit.rankers.feedback_postgres`). Both hold
the same two tables:

* ``lists``: ``list_id`` (from ``state.trace.list_id``), the query, the ordered items shown (ids,
  texts, every stage's scores, metadata) as JSON, and ``created_at``;
* ``events``: ``list_id``, the event name (``copy``, ``like``, ``dislike``, ``regenerate``,
  ``reward``...), the numeric reward it maps to, and ``created_at``.

Every write is one transaction: a crash mid-write leaves nothing partial, and several threads
or processes can write at once (each thread gets its own connection; writers queue on the lock).
The SQL is written once, with ``?`` placeholders; a backend only says how to connect, how to begin
a write transaction and how its column types are spelled.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError
from ..types import ContextState, Passage

__all__ = ["DEFAULT_LABELS", "FeedbackStore", "ShownList", "UnknownEventError", "UnknownListError"]

DEFAULT_LABELS: dict[str, float] = {"copy": 1.0, "like": 1.0, "dislike": -1.0, "regenerate": -1.0}

# The one schema of every backend; {serial} and {real} are the backend's spelling of an
# auto-incrementing integer key and a double-precision number.
SCHEMA_TEMPLATE = """
CREATE TABLE IF NOT EXISTS lists (
    list_id    TEXT PRIMARY KEY,
    query      TEXT NOT NULL,
    items      TEXT NOT NULL,
    source     TEXT NOT NULL DEFAULT 'user',
    created_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    event_id   {serial},
    list_id    TEXT NOT NULL REFERENCES lists(list_id),
    event      TEXT NOT NULL,
    reward     {real} NOT NULL,
    created_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS events_list ON events(list_id);
"""
_SCHEMA = SCHEMA_TEMPLATE.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT", real="REAL")


def is_postgres_url(location: object) -> bool:
    """True when ``location`` is a PostgreSQL connection URL (``postgresql://`` or ``postgres://``)."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


class UnknownListError(InputError):
    """Feedback names a list id that was never recorded."""


class UnknownEventError(InputError):
    """Feedback names an event that the label mapping does not know."""


@dataclass
class ShownList:
    """One recorded list with its feedback.

    Attributes:
        list_id: The list's id (``state.trace.list_id`` when it was shown).
        query: The query it answered.
        items: The items in the order shown: dicts with ``id``, ``text``, ``scores``, ``metadata``.
        rewards: Rewards of the events attached to it, oldest first.
        source: ``"user"`` or ``"llm"`` (LLM-preference labels) or any caller tag.
        last_event_id: Highest event id attached (for incremental training).
    """

    list_id: str
    query: str
    items: list[dict[str, Any]]
    rewards: list[float] = field(default_factory=list)
    source: str = "user"
    last_event_id: int = 0

    @property
    def reward(self) -> float:
        """Mean reward of the list's events (0.0 without events)."""
        return sum(self.rewards) / len(self.rewards) if self.rewards else 0.0

    def passages(self) -> list[Passage]:
        """The items as :class:`Passage` objects (with their recorded scores)."""
        return [
            Passage(id=it["id"], text=it.get("text", ""), doc_id=it.get("doc_id"),
                    metadata=dict(it.get("metadata") or {}), scores=dict(it.get("scores") or {}))
            for it in self.items
        ]


def _item(p: Passage) -> dict[str, Any]:
    return {"id": p.id, "text": p.text, "doc_id": p.doc_id, "scores": dict(p.scores), "metadata": p.metadata}


class FeedbackStore:
    """Shown lists and feedback events in a SQLite file (or a PostgreSQL database).

    ``FeedbackStore("postgresql://user@host:5432/db")`` returns a
    :class:`~ctxkit.rankers.feedback_postgres.PostgresFeedbackStore` with the same interface and
    schema (needs ``pip install "ctxkit[postgres]"``), so every setting that names a store
    (``record_feedback``'s ``store``, ``feedback_ranker``'s ``store``) accepts a URL too.

    Args:
        path: Database file (created with its folder), or a PostgreSQL URL. ``":memory:"`` is
            refused: feedback must survive the process.
        labels: Event name -> reward. Defaults to copy/like = +1, dislike/regenerate = -1.
            Numeric rewards (``record_event(list_id, 0.3)``) are always accepted as they are.
        timeout: Seconds a writer waits for the database lock before failing.

    Example:
        >>> store = FeedbackStore("feedback.sqlite")
        >>> store.record_list(state)            # the list the user saw
        >>> store.record_event(state.trace.list_id, "copy")
    """

    #: The statement that opens a write transaction (SQLite takes the write lock at once).
    _begin_sql = "BEGIN IMMEDIATE"

    def __new__(cls, path: str | os.PathLike[str] = "ctxkit_feedback.sqlite", *args: Any, **kwargs: Any) -> Any:
        if cls is FeedbackStore and is_postgres_url(path):
            from .feedback_postgres import PostgresFeedbackStore

            return super().__new__(PostgresFeedbackStore)
        return super().__new__(cls)

    def __init__(
        self, path: str | os.PathLike[str] = "ctxkit_feedback.sqlite", *,
        labels: Mapping[str, float] | None = None, timeout: float = 30.0,
    ) -> None:
        if str(path) == ":memory:":
            raise ConfigError("FeedbackStore needs a file path (an in-memory store would lose feedback)")
        self.path: Path | None = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._setup(labels, timeout)

    def _setup(self, labels: Mapping[str, float] | None, timeout: float) -> None:
        labels = dict(DEFAULT_LABELS if labels is None else labels)
        for name, value in labels.items():
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"FeedbackStore: label {name!r} must map to a finite number, got {value!r}")
        self.labels = {k.lower(): float(v) for k, v in labels.items()}
        self.timeout = float(timeout)
        self._local = threading.local()
        self._open: list[Any] = []  # every connection opened (closed together by close_all)
        self._open_lock = threading.Lock()
        self._generation = 0  # bumped by close_all: threads then reconnect on next use
        self._con  # noqa: B018 - creates the database and the schema now

    # -- connections and transactions -------------------------------------------------------------
    def _connect(self) -> Any:
        assert self.path is not None
        # check_same_thread=False only so that close_all() may close it; each thread uses its own.
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")
        con.execute("PRAGMA foreign_keys = ON")
        con.executescript(_SCHEMA)
        return con

    def _sql(self, sql: str) -> str:
        """The backend's spelling of ``sql`` (written with ``?`` placeholders)."""
        return sql

    def _execute(self, con: Any, sql: str, args: Sequence[Any] = ()) -> Any:
        return con.execute(self._sql(sql), tuple(args))

    @property
    def _con(self) -> Any:
        local = self._local
        con = getattr(local, "con", None)
        if con is None or getattr(local, "pid", None) != os.getpid() or getattr(local, "gen", None) != self._generation:
            con = self._connect()
            local.con, local.pid, local.depth, local.gen = con, os.getpid(), 0, self._generation
            with self._open_lock:
                self._open.append(con)
        return con

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: everything recorded inside commits together or not at all.

        Nested uses join the outer transaction.
        """
        con = self._con
        if self._local.depth:
            self._local.depth += 1
            try:
                yield con
            finally:
                self._local.depth -= 1
            return
        con.execute(self._begin_sql)
        self._local.depth = 1
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        else:
            con.execute("COMMIT")
        finally:
            self._local.depth = 0

    def close(self) -> None:
        """Close this thread's connection."""
        con = getattr(self._local, "con", None)
        if con is not None:
            with self._open_lock:
                if con in self._open:
                    self._open.remove(con)
            con.close()
            self._local.con = None

    def close_all(self) -> None:
        """Close every connection this store opened, in any thread (e.g. at service shutdown).

        Call it when no other thread is inside a transaction; a thread that uses the store again
        afterwards opens a fresh connection.
        """
        with self._open_lock:
            cons, self._open = self._open, []
            self._generation += 1
        for con in cons:
            with contextlib.suppress(Exception):
                con.close()
        self._local.con = None

    # -- writing ---------------------------------------------------------------------------------
    def record_list(self, state: ContextState, *, source: str = "user", passages: Sequence[Passage] | None = None) -> str:
        """Record the exact ordered list shown for ``state`` under ``state.trace.list_id``.

        Recording the same list again is a no-op; recording different items under an existing
        id raises :class:`~ctxkit.errors.InputError`.

        Args:
            state: The state whose passages (in order) were shown.
            source: Tag of who produced the feedback (``"user"``, ``"llm"``...).
            passages: The items shown, when not ``state.passages``.

        Returns:
            The list id.
        """
        if not isinstance(state, ContextState):
            raise InputError(f"record_list expects a ContextState, got {type(state).__name__}")
        items = [_item(p) for p in (state.passages if passages is None else passages)]
        payload = json.dumps(items, default=str, ensure_ascii=False)
        list_id = state.trace.list_id
        with self.transaction() as con:
            # ON CONFLICT: two writers racing on one id never fail on the key, the second compares.
            cur = self._execute(
                con,
                "INSERT INTO lists(list_id, query, items, source, created_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (list_id) DO NOTHING",
                (list_id, state.query, payload, source, time.time()),
            )
            if cur.rowcount == 0:
                row = self._execute(con, "SELECT items FROM lists WHERE list_id = ?", (list_id,)).fetchone()
                if row is not None and row[0] != payload:
                    raise InputError(
                        f"list id {list_id!r} is already recorded with other items; a new list needs "
                        "a new id (a fresh ContextState gets one)"
                    )
        return list_id

    def record_lists(self, states: Sequence[ContextState], *, source: str = "user") -> list[str]:
        """Record several lists in one transaction."""
        with self.transaction():
            return [self.record_list(s, source=source) for s in states]

    def to_reward(self, event: str | float) -> tuple[str, float]:
        """Map an event name or a numeric reward to ``(event_name, reward)``."""
        if isinstance(event, bool):
            raise UnknownEventError("a boolean is not a feedback event; use 'like'/'dislike' or a number")
        if isinstance(event, int | float):
            if not math.isfinite(event):
                raise InputError(f"a numeric reward must be finite, got {event!r}")
            return "reward", float(event)
        if isinstance(event, str):
            name = event.strip().lower()
            if name in self.labels:
                return name, self.labels[name]
            try:
                value = float(name)
            except ValueError:
                raise UnknownEventError(
                    f"unknown feedback event {event!r}; known events: {', '.join(sorted(self.labels))} "
                    "(or pass a numeric reward; add names with FeedbackStore(labels=...))"
                ) from None
            return self.to_reward(value)
        raise UnknownEventError(f"a feedback event must be a name or a number, got {type(event).__name__}")

    def record_event(self, list_id: str, event: str | float) -> float:
        """Attach an event (name or numeric reward) to a recorded list.

        Returns:
            The reward stored.

        Raises:
            UnknownListError: ``list_id`` was never recorded.
            UnknownEventError: the event name is not in the label mapping.
        """
        name, reward = self.to_reward(event)
        if not isinstance(list_id, str):
            raise UnknownListError(f"a list id is a string, got {type(list_id).__name__}")
        with self.transaction() as con:
            if self._execute(con, "SELECT 1 FROM lists WHERE list_id = ?", (list_id,)).fetchone() is None:
                raise UnknownListError(
                    f"unknown list id {list_id!r}: record the shown list first "
                    "(FeedbackStore.record_list(state), or a pipeline with a record_feedback stage)"
                )
            self._execute(
                con,
                "INSERT INTO events(list_id, event, reward, created_at) VALUES (?, ?, ?, ?)",
                (list_id, name, reward, time.time()),
            )
        return reward

    # -- reading ---------------------------------------------------------------------------------
    def count(self) -> dict[str, int]:
        """Numbers of recorded lists and events."""
        con = self._con
        return {
            "lists": int(self._execute(con, "SELECT COUNT(*) FROM lists").fetchone()[0]),
            "events": int(self._execute(con, "SELECT COUNT(*) FROM events").fetchone()[0]),
        }

    def last_event_id(self) -> int:
        """Highest event id so far (0 when empty)."""
        return int(self._execute(self._con, "SELECT COALESCE(MAX(event_id), 0) FROM events").fetchone()[0])

    def get(self, list_id: str) -> ShownList:
        """One recorded list with its events."""
        out = self.lists(list_ids=[list_id], with_events_only=False)
        if not out:
            raise UnknownListError(f"unknown list id {list_id!r}")
        return out[0]

    def lists(
        self, *, since_event_id: int = 0, with_events_only: bool = True,
        list_ids: Sequence[str] | None = None, source: str | None = None,
    ) -> list[ShownList]:
        """Recorded lists with their rewards, oldest first.

        Args:
            since_event_id: Only lists that received an event with a larger id (incremental
                training); their reward still uses all of their events.
            with_events_only: Skip lists without feedback.
            list_ids: Only these ids.
            source: Only lists recorded with this source tag.
        """
        if list_ids is not None and not list_ids:
            return []
        con = self._con
        sql = "SELECT list_id, query, items, source FROM lists"
        cond, args = [], []
        if list_ids is not None:
            cond.append(f"list_id IN ({','.join('?' * len(list_ids))})")
            args.extend(list_ids)
        if source is not None:
            cond.append("source = ?")
            args.append(source)
        if since_event_id or with_events_only:
            cond.append("list_id IN (SELECT list_id FROM events WHERE event_id > ?)")
            args.append(since_event_id)
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        sql += " ORDER BY created_at, list_id"
        rows = self._execute(con, sql, args).fetchall()
        events: dict[str, list[tuple[int, float]]] = {}
        for lid, eid, reward in self._execute(con, "SELECT list_id, event_id, reward FROM events ORDER BY event_id").fetchall():
            events.setdefault(lid, []).append((int(eid), float(reward)))
        out = []
        for lid, query, items, src in rows:
            ev = events.get(lid, [])
            out.append(ShownList(lid, query, json.loads(items), [r for _, r in ev], src,
                                 max((e for e, _ in ev), default=0)))
        return out

    def position_effects(self, max_positions: int = 20, score_key: str | None = None, ridge: float = 1.0) -> list[float]:
        """How much the quality of the item at each position drives the list's reward.

        Fits ``reward ~ b + sum_p w_p * q(item at p)`` by ridge least squares, where ``q`` is the
        item's last recorded score (or ``score_key``) standardised within its list. A large ``w_p``
        means the user (or the LLM) relies on position ``p``: put good items there. Item scores
        are standardised within a list, so only differences between the ``w_p`` are meaningful.

        Returns:
            ``w_p`` for positions ``0..n-1`` (``n`` = the longest list seen, at most
            ``max_positions``); empty without feedback.
        """
        import numpy as np

        data = self.lists()
        if not data:
            return []
        n = min(max_positions, max(len(d.items) for d in data))
        X = np.zeros((len(data), n + 1))
        y = np.zeros(len(data))
        for i, d in enumerate(data):
            vals = []
            for it in d.items[:n]:
                sc = it.get("scores") or {}
                v = sc.get(score_key) if score_key else (list(sc.values())[-1] if sc else 0.0)
                vals.append(float(v if v is not None else 0.0))
            v = np.asarray(vals)
            if len(v) > 1 and v.std() > 0:
                v = (v - v.mean()) / v.std()
            else:
                v = np.zeros_like(v)
            X[i, : len(v)] = v
            X[i, n] = 1.0
            y[i] = d.reward
        reg = ridge * np.eye(n + 1)
        reg[n, n] = 0.0
        w = np.linalg.solve(X.T @ X + reg, X.T @ y)
        return [float(x) for x in w[:n]]

    def __repr__(self) -> str:
        return f"FeedbackStore({str(self.path)!r})"
