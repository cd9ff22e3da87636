"""The labeling server: the standard library's ``ThreadingHTTPServer`` over the project's SQLite file.

No new dependency, on purpose: one process, one file, zero install; a labeling team of tens of people sends a few
requests a minute each, which a thread per request serves with room to spare (``benchmarks/label_load.py``).

Routes (the JSON API; the page is one client of it, a script can be another; see docs/labeling.md)::

    GET  /                         the page (static/index.html)        no token: the token lives in the URL fragment
    GET  /static/label.js          its script
    GET  /api/me                   {"labeler", "progress", "flags", "likert"}
    GET  /api/next                 {"task": {...} | null, "progress"}: the current task, leased to you
    POST /api/tasks/<id>/answer    a ranking {"idempotency_key", "ranking", "ratings"} or a demonstration
                                   {"idempotency_key", "completion"}; 200 {"stored", "answer_id"}
    POST /api/tasks/<id>/skip      {"idempotency_key", "reason"}

Every ``/api`` request carries ``Authorization: Bearer <token>``; an unknown or revoked token gets 401 and nothing
else. Each handler validates, does one transaction and answers JSON. A file still locked by another process after
the busy timeout gets 503 with ``Retry-After`` (a submit is then retried with the same key); any other failure 500.
Tokens are never logged (the log line is the method, the path and the status; the token is in a header, and in the
page's link only after ``#``, which browsers never send).
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import re
import sqlite3
import sys
import threading
from contextlib import closing
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from lit_rlhf.label import answers, db

log = logging.getLogger(__name__)

ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"/"), "page"),
    ("GET", re.compile(r"/static/label\.js"), "script"),
    ("GET", re.compile(r"/api/me"), "me"),
    ("GET", re.compile(r"/api/next"), "next_task"),
    ("POST", re.compile(r"/api/tasks/(\d{1,12})/answer"), "answer"),
    ("POST", re.compile(r"/api/tasks/(\d{1,12})/skip"), "skip"),
]
MAX_BODY = 256 * 1024
"""Largest POST body, bytes (a long demonstration is ~10 KB)."""
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class LabelServer(ThreadingHTTPServer):
    """One project file served; ``allowed_hosts`` are the Host headers accepted (DNS rebinding)."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    """Connections the kernel holds while the server is busy (``listen`` backlog). socketserver's 5 made Linux drop
    the rest of a burst, and their clients resent the connection 1, 3, 7 s later (benchmarks/label_load.py)."""
    busy_timeout = db.BUSY_TIMEOUT
    """Seconds a request waits for another process's write (``lit-rlhf label labeler add``) before its 503."""

    def __init__(
        self, db_path: str | Path, host: str, port: int, lease_seconds: float, allowed_hosts: tuple[str, ...] = ()
    ) -> None:
        self.db_path = Path(db_path)
        db.connect(self.db_path).close()  # fails now, not on the first request, when the file is missing
        self.lease_seconds = lease_seconds
        # One writer at a time in this process: the request threads queue on a lock that wakes the next one as soon
        # as it is free. Left to SQLite's busy handler (it polls, sleeping up to 100 ms between tries), 50 writers
        # at once let some wait past the busy timeout and fail (benchmarks/label_load.py).
        self.write_lock = threading.Lock()
        super().__init__((host, port), LabelHandler)
        self.port = self.server_address[1]
        names = set(LOOPBACK) | {host} | set(allowed_hosts)
        self.allowed_hosts = {f"{n}:{self.port}" for n in names} | {f"[{n}]:{self.port}" for n in names if ":" in n}

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}/"


class LabelHandler(BaseHTTPRequestHandler):
    server: LabelServer
    server_version = "lit-rlhf-label"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # The request line holds no token (it travels in a header); headers are never logged.
        log.info("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------------ plumbing

    def _dispatch(self, method: str) -> None:
        try:
            self._check_host()
            path = self.path.split("?", 1)[0]
            for route_method, pattern, name in ROUTES:
                match = pattern.fullmatch(path)
                if match and route_method == method:
                    getattr(self, name)(*match.groups())
                    return
            if any(p.fullmatch(path) for _, p, _ in ROUTES):
                raise HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed on {path}")
            raise HTTPError(HTTPStatus.NOT_FOUND, f"no route {path}")
        except HTTPError as e:
            self._json(e.status, {"error": str(e)})
        except answers.BadAnswer as e:
            self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(e)})
        except db.NotFound as e:
            self._json(HTTPStatus.NOT_FOUND, {"error": str(e)})
        except db.Conflict as e:
            self._json(HTTPStatus.CONFLICT, {"error": str(e)})
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                self._failed()
                return
            log.warning("%s %s: the project file is busy (%s); answered 503", self.command, self.path, e)
            self._json(
                HTTPStatus.SERVICE_UNAVAILABLE,
                {"error": "the project file is busy; retry in a moment (a submit with the same idempotency_key)"},
                {"Retry-After": "1"},
            )
        except ConnectionError:  # the client went away mid-reply: nobody to answer
            self.close_connection = True
        except Exception:
            self._failed()

    def _failed(self) -> None:
        # Answered, not a dropped connection (which a client cannot tell from a network error); the traceback is
        # logged, the reply says nothing of it.
        log.exception("%s %s failed", self.command, self.path)
        self.close_connection = True
        self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error; see the server's log"})

    def _check_host(self) -> None:
        host = self.headers.get("Host", "")
        if host not in self.server.allowed_hosts:
            raise HTTPError(HTTPStatus.MISDIRECTED_REQUEST, "unexpected Host header")

    def _labeler(self, conn: sqlite3.Connection) -> int:
        header = self.headers.get("Authorization", "")
        given = db.hash_token(header[7:]) if header.startswith("Bearer ") else ""
        found = None
        for token_hash, labeler_id, _ in db.labeler_tokens(conn):  # every hash compared: no early exit
            if hmac.compare_digest(token_hash.encode(), given.encode()):
                found = labeler_id
        if found is None:
            raise HTTPError(HTTPStatus.UNAUTHORIZED, "unauthorized")
        return found

    def _body(self) -> dict[str, Any]:
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            raise HTTPError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "the body must be JSON (Content-Type: application/json)")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise HTTPError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required") from None
        if length > MAX_BODY or length < 0:
            self.close_connection = True  # the unread body is not drained
            raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is larger than {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPError(HTTPStatus.BAD_REQUEST, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HTTPError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return body

    def _send(self, status: HTTPStatus, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self' "
            "'unsafe-inline'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        )
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: HTTPStatus, value: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(value).encode(), "application/json", headers)

    def _connect(self) -> closing[sqlite3.Connection]:
        return closing(db.connect(self.server.db_path, busy_timeout=self.server.busy_timeout))

    # ------------------------------------------------------------------ handlers

    def page(self) -> None:
        self._send(HTTPStatus.OK, _static("index.html"), "text/html; charset=utf-8")

    def script(self) -> None:
        self._send(HTTPStatus.OK, _static("label.js"), "text/javascript; charset=utf-8")

    def me(self) -> None:
        with self._connect() as conn:
            labeler_id = self._labeler(conn)
            self._json(
                HTTPStatus.OK,
                {
                    "labeler": db.labeler_names(conn)[labeler_id],
                    "progress": db.progress(conn, labeler_id),
                    "flags": answers.FLAGS,
                    "likert": [answers.LIKERT_MIN, answers.LIKERT_MAX],
                },
            )

    def next_task(self) -> None:
        with self._connect() as conn:
            labeler_id = self._labeler(conn)
            with self.server.write_lock:
                task = db.lease_next(conn, labeler_id, self.server.lease_seconds)
            shown = None
            if task is not None:
                shown = {"id": task.id, "kind": task.kind, "prompt": task.display}
                if task.kind == "ranking":
                    shown["outputs"] = [task.completions[i] for i in db.display_order(conn, task, labeler_id)]
            self._json(HTTPStatus.OK, {"task": shown, "progress": db.progress(conn, labeler_id)})

    def answer(self, task_id: str) -> None:
        self._store(int(task_id), skip=False)

    def skip(self, task_id: str) -> None:
        self._store(int(task_id), skip=True)

    def _store(self, task_id: int, skip: bool) -> None:
        with self._connect() as conn:
            labeler_id = self._labeler(conn)
            body = self._body()
            key = answers.idempotency_key(body)
            previous = db.stored_answer(conn, key, labeler_id)
            if previous is None:  # a retry is answered from what was stored, whatever the task's state now
                task = db.leased_task(conn, labeler_id, task_id)
                if skip:
                    kind, payload = "skip", answers.skip_answer(body)
                elif task.kind == "ranking":
                    kind, payload = "ranking", answers.ranking_answer(body, db.display_order(conn, task, labeler_id))
                else:
                    kind, payload = "demonstration", answers.demonstration_answer(body)
            else:
                kind, payload = previous["kind"], json.loads(previous["payload"])
            with self.server.write_lock:
                answer_id, created = db.submit(conn, labeler_id, task_id, key, kind, payload)
            self._json(
                HTTPStatus.OK,
                {"stored": created, "answer_id": answer_id, "progress": db.progress(conn, labeler_id)},
            )


def _static(name: str) -> bytes:
    return resources.files("lit_rlhf.label").joinpath("static", name).read_bytes()


def make_server(
    db_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    lease_seconds: float = db.LEASE_SECONDS,
    allowed_hosts: tuple[str, ...] = (),
) -> LabelServer:
    """The server, bound but not yet serving (``port=0`` picks a free port: ``server.port``)."""
    return LabelServer(db_path, host, port, lease_seconds, allowed_hosts)


def serve(
    db_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    lease_seconds: float = db.LEASE_SECONDS,
    allowed_hosts: tuple[str, ...] = (),
) -> None:
    """Serve ``db_path`` until interrupted; a host other than loopback prints a warning first."""
    if host not in LOOPBACK:
        print(
            f"lit-rlhf label: warning: serving on {host}, reachable from other machines; anyone with a labeler's "
            "link can label as them. Plain HTTP: put it behind TLS (a reverse proxy) off a trusted network.",
            file=sys.stderr,
        )
    try:
        server = make_server(db_path, host, port, lease_seconds, allowed_hosts)
    except FileNotFoundError:
        raise
    except OSError as e:  # a port in use, a privileged port, an unknown host: one line for a person (exit 2)
        fix = "stop what holds it or pick another --port (0 picks a free one)"
        raise ValueError(
            f"cannot serve on {host}:{port}: {e.strerror or e}; "
            + (fix if e.errno == errno.EADDRINUSE else "check --host and --port")
        ) from None
    print(f"serving {db_path} at {server.url} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
