"""The labeling project's storage: one SQLite file, a handful of functions, explicit transactions.

SQLite is the embedded default a real user keeps: one file, copied to back up, no server. The connection runs in
WAL mode (readers never block the writer), with a busy timeout (a second writer waits instead of failing) and
``synchronous=FULL`` (an acknowledged answer survives a power cut, not only a killed process). Every write is one
``BEGIN IMMEDIATE`` transaction: it takes the write lock at its start, so two requests never both read "free" and
both write.

Tables::

    meta(key, value)                       the project's settings and its secret (the seed of the output order)
    tasks(id, kind, prompt, display, completions, source, replicas)
                                           kind 'demonstration' | 'ranking'; replicas: how many labelers get it
    labelers(id, name, token_hash, revoked, created_at)
    leases(task_id, labeler_id, expires_at)  UNIQUE(task_id, labeler_id): a task handed to a labeler, until expiry
    answers(id, task_id, labeler_id, idempotency_key UNIQUE, kind, payload, started_at, submitted_at)
                                           UNIQUE(task_id, labeler_id): one answer (or skip) per task and labeler

A labeler never gets a task they answered or skipped (the unique row), and a task goes to at most ``replicas``
labelers at once (answers plus live leases). A lease that expires returns the task to the pool.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('demonstration', 'ranking')),
    prompt TEXT NOT NULL,        -- JSON: the prompt as the source record had it (exported as is)
    display TEXT NOT NULL,       -- JSON: the prompt's messages [{"role", "content"}], what the page shows
    completions TEXT,            -- JSON list of K strings (ranking tasks), in stored order
    source TEXT NOT NULL,        -- JSON: where the task came from (file:line; policy path and seed)
    replicas INTEGER NOT NULL CHECK (replicas >= 1)
);
CREATE TABLE IF NOT EXISTS labelers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    labeler_id INTEGER NOT NULL REFERENCES labelers(id),
    leased_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    UNIQUE (task_id, labeler_id)
);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    labeler_id INTEGER NOT NULL REFERENCES labelers(id),
    idempotency_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('demonstration', 'ranking', 'skip')),
    payload TEXT NOT NULL,       -- JSON, in stored completion order
    started_at REAL,
    submitted_at REAL NOT NULL,
    UNIQUE (task_id, labeler_id)
);
"""

LEASE_SECONDS = 30 * 60
"""How long a fetched task stays reserved for its labeler before it returns to the pool."""


class Conflict(Exception):
    """A request that cannot be applied to the current state (HTTP 409): a stale lease, an answered task."""


class NotFound(Exception):
    """No such task for this labeler (HTTP 404)."""


BUSY_TIMEOUT = 10.0
"""Seconds a write waits for another connection's write to finish before failing with ``database is locked``."""


def connect(path: str | Path, readonly: bool = False, busy_timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """A connection to the project file: WAL, a ``busy_timeout`` (seconds), foreign keys on, ``synchronous=FULL``.

    ``readonly`` opens the file with ``mode=ro`` (export and agreement only read it); the file must exist.
    """
    path = Path(path)
    if readonly or not path.exists():
        if not path.exists():
            raise FileNotFoundError(f"{path}: no labeling project here (create one with `lit-rlhf label create`)")
    uri = f"file:{path.resolve()}?mode=ro" if readonly else f"file:{path.resolve()}"
    conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
    return conn


def create(path: str | Path, settings: dict[str, Any]) -> sqlite3.Connection:
    """A new, empty project file at ``path`` (refused when one exists), with ``settings`` and a fresh secret."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: already exists; choose another project file or delete this one")
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.close()
    conn = connect(path)
    conn.executescript(SCHEMA)
    with transaction(conn):
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("settings", json.dumps(settings)), ("secret", secrets.token_hex(16))],
        )
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; ``ROLLBACK`` on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def settings(conn: sqlite3.Connection) -> dict[str, Any]:
    return json.loads(conn.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()[0])


# --------------------------------------------------------------------------- tasks


def add_tasks(conn: sqlite3.Connection, tasks: list[dict[str, Any]]) -> None:
    """Insert tasks ``{"kind", "prompt", "display", "completions" (ranking), "source", "replicas"}`` in one
    transaction."""
    with transaction(conn):
        conn.executemany(
            "INSERT INTO tasks (kind, prompt, display, completions, source, replicas) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    t["kind"],
                    json.dumps(t["prompt"]),
                    json.dumps(t["display"]),
                    json.dumps(t["completions"]) if t.get("completions") is not None else None,
                    json.dumps(t["source"]),
                    int(t.get("replicas", 1)),
                )
                for t in tasks
            ],
        )


@dataclass(frozen=True)
class Task:
    id: int
    kind: str
    prompt: Any
    display: list[dict[str, str]]
    completions: list[str] | None
    source: dict[str, Any]
    replicas: int

    @classmethod
    def of(cls, row: sqlite3.Row) -> Task:
        return cls(
            row["id"],
            row["kind"],
            json.loads(row["prompt"]),
            json.loads(row["display"]),
            json.loads(row["completions"]) if row["completions"] is not None else None,
            json.loads(row["source"]),
            row["replicas"],
        )


def all_tasks(conn: sqlite3.Connection) -> dict[int, Task]:
    return {row["id"]: Task.of(row) for row in conn.execute("SELECT * FROM tasks ORDER BY id")}


def display_order(conn: sqlite3.Connection, task: Task, labeler_id: int) -> list[int]:
    """The order in which ``labeler_id`` sees ``task``'s outputs: ``order[shown_position] = stored index``.

    A permutation fixed by the project's secret, the labeler and the task: random per labeler and task, the same on
    every fetch (a reload shows the same board), and unknowable from the page.
    """
    secret = conn.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()[0]
    order = list(range(len(task.completions or [])))
    random.Random(hashlib.sha256(f"{secret}:{labeler_id}:{task.id}".encode()).hexdigest()).shuffle(order)
    return order


# --------------------------------------------------------------------------- labelers


def hash_token(token: str) -> str:
    """Tokens are stored as SHA-256 hashes: a copied project file does not hand out working links."""
    return hashlib.sha256(token.encode()).hexdigest()


def add_labeler(conn: sqlite3.Connection, name: str) -> str:
    """Add labeler ``name`` and return their new random token (shown once; only its hash is stored)."""
    token = secrets.token_urlsafe(24)
    with transaction(conn):
        if conn.execute("SELECT 1 FROM labelers WHERE name = ?", (name,)).fetchone():
            raise ValueError(
                f"labeler {name!r} already exists; pick another name (or revoke and re-add under a new one)"
            )
        conn.execute(
            "INSERT INTO labelers (name, token_hash, created_at) VALUES (?, ?, ?)",
            (name, hash_token(token), time.time()),
        )
    return token


def revoke_labeler(conn: sqlite3.Connection, name: str) -> None:
    """Revoke ``name``'s token (their answers stay) and release their leases."""
    with transaction(conn):
        row = conn.execute("SELECT id FROM labelers WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise ValueError(f"no labeler named {name!r}; `lit-rlhf label status` lists them")
        conn.execute("UPDATE labelers SET revoked = 1 WHERE id = ?", (row["id"],))
        conn.execute("DELETE FROM leases WHERE labeler_id = ?", (row["id"],))


def labeler_tokens(conn: sqlite3.Connection) -> list[tuple[str, int, str]]:
    """``(token_hash, labeler_id, name)`` of every labeler not revoked (the server checks tokens against these)."""
    return [(r["token_hash"], r["id"], r["name"]) for r in conn.execute("SELECT * FROM labelers WHERE revoked = 0")]


def labeler_names(conn: sqlite3.Connection) -> dict[int, str]:
    return {r["id"]: r["name"] for r in conn.execute("SELECT id, name FROM labelers")}


# --------------------------------------------------------------------------- leases and answers


def progress(conn: sqlite3.Connection, labeler_id: int, now: float | None = None) -> dict[str, int]:
    """``done``: tasks this labeler answered or skipped; ``assigned``: done plus the tasks still open to them."""
    done = conn.execute("SELECT COUNT(*) FROM answers WHERE labeler_id = ?", (labeler_id,)).fetchone()[0]
    return {"done": done, "assigned": done + len(_open_tasks(conn, labeler_id, time.time() if now is None else now))}


def _open_tasks(conn: sqlite3.Connection, labeler_id: int, now: float) -> list[int]:
    """Tasks ``labeler_id`` may be handed now: not answered by them, and fewer than ``replicas`` answers plus live
    leases of others; their own live lease first."""
    rows = conn.execute(
        """
        SELECT t.id,
               EXISTS (SELECT 1 FROM leases l WHERE l.task_id = t.id AND l.labeler_id = :me AND l.expires_at > :now)
                   AS mine
        FROM tasks t
        WHERE NOT EXISTS (SELECT 1 FROM answers a WHERE a.task_id = t.id AND a.labeler_id = :me)
          AND ((SELECT COUNT(*) FROM answers a WHERE a.task_id = t.id)
               + (SELECT COUNT(*) FROM leases l WHERE l.task_id = t.id AND l.labeler_id != :me
                  AND l.expires_at > :now)) < t.replicas
        ORDER BY mine DESC, t.replicas DESC, t.id
        """,
        {"me": labeler_id, "now": now},
    ).fetchall()
    return [r["id"] for r in rows]


def lease_next(
    conn: sqlite3.Connection, labeler_id: int, lease_seconds: float = LEASE_SECONDS, now: float | None = None
) -> Task | None:
    """The labeler's current task (their live lease) or the next open one, leased to them; None when none is left.

    Overlap tasks (``replicas`` > 1) come first, so agreement is measured early. The lease is renewed on each fetch.
    """
    now = time.time() if now is None else now
    with transaction(conn):
        open_ids = _open_tasks(conn, labeler_id, now)
        if not open_ids:
            return None
        task_id = open_ids[0]
        conn.execute(
            """INSERT INTO leases (task_id, labeler_id, leased_at, expires_at) VALUES (?, ?, ?, ?)
               ON CONFLICT (task_id, labeler_id) DO UPDATE SET expires_at = excluded.expires_at,
               leased_at = CASE WHEN leases.expires_at > ? THEN leases.leased_at ELSE excluded.leased_at END""",
            (task_id, labeler_id, now, now + lease_seconds, now),
        )
        return Task.of(conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone())


def leased_task(conn: sqlite3.Connection, labeler_id: int, task_id: int, now: float | None = None) -> Task:
    """``task_id`` when ``labeler_id`` holds a live lease on it; NotFound for an unknown task or one never handed to
    this labeler, Conflict for an expired lease."""
    now = time.time() if now is None else now
    lease = conn.execute(
        "SELECT expires_at FROM leases WHERE task_id = ? AND labeler_id = ?", (task_id, labeler_id)
    ).fetchone()
    if lease is None:
        raise NotFound(f"task {task_id} is not one of your tasks")
    if lease["expires_at"] <= now:
        raise Conflict(f"your lease on task {task_id} expired; fetch the next task")
    return Task.of(conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone())


def stored_answer(conn: sqlite3.Connection, idempotency_key: str, labeler_id: int) -> sqlite3.Row | None:
    row = conn.execute("SELECT * FROM answers WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
    if row is not None and row["labeler_id"] != labeler_id:
        raise Conflict("this idempotency key was used by someone else; send a fresh random key")
    return row


def submit(
    conn: sqlite3.Connection,
    labeler_id: int,
    task_id: int,
    idempotency_key: str,
    kind: str,
    payload: dict[str, Any],
    now: float | None = None,
) -> tuple[int, bool]:
    """Store one answer (or skip) in one transaction; returns ``(answer_id, created)``.

    A retry with the same ``idempotency_key`` returns the stored answer's id and ``created=False``, storing nothing.
    Otherwise the labeler must hold a live lease on the task (NotFound / Conflict), and must not have answered it
    (Conflict). ``payload`` has been validated against the task by the caller.
    """
    now = time.time() if now is None else now
    with transaction(conn):
        previous = stored_answer(conn, idempotency_key, labeler_id)
        if previous is not None:
            if previous["task_id"] != task_id:
                raise Conflict("this idempotency key was used for another task; send a fresh random key")
            return previous["id"], False
        if conn.execute("SELECT 1 FROM answers WHERE task_id = ? AND labeler_id = ?", (task_id, labeler_id)).fetchone():
            raise Conflict(f"task {task_id} is already answered")
        leased_task(conn, labeler_id, task_id, now)
        started = conn.execute(
            "SELECT leased_at FROM leases WHERE task_id = ? AND labeler_id = ?", (task_id, labeler_id)
        ).fetchone()["leased_at"]
        cursor = conn.execute(
            "INSERT INTO answers (task_id, labeler_id, idempotency_key, kind, payload, started_at, submitted_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (task_id, labeler_id, idempotency_key, kind, json.dumps(payload), started, now),
        )
        conn.execute("DELETE FROM leases WHERE task_id = ? AND labeler_id = ?", (task_id, labeler_id))
        return cursor.lastrowid, True


def answers(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every answer and skip, in submission order."""
    return conn.execute("SELECT * FROM answers ORDER BY id").fetchall()


def counts(conn: sqlite3.Connection) -> dict[str, Any]:
    """What ``lit-rlhf label status`` prints."""
    one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
    return {
        "tasks": {r[0]: r[1] for r in conn.execute("SELECT kind, COUNT(*) FROM tasks GROUP BY kind")},
        "overlap_tasks": one("SELECT COUNT(*) FROM tasks WHERE replicas > 1"),
        "answers": {r[0]: r[1] for r in conn.execute("SELECT kind, COUNT(*) FROM answers GROUP BY kind")},
        "labelers": [
            {
                "name": r["name"],
                "revoked": bool(r["revoked"]),
                "answered": conn.execute("SELECT COUNT(*) FROM answers WHERE labeler_id = ?", (r["id"],)).fetchone()[0],
            }
            for r in conn.execute("SELECT * FROM labelers ORDER BY id")
        ],
        "live_leases": one(f"SELECT COUNT(*) FROM leases WHERE expires_at > {time.time()}"),
    }
