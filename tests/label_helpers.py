"""What the label tests share: a small project, a server on a free loopback port, a JSON client."""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lit_rlhf.label import db
from lit_rlhf.label.project import create_project
from lit_rlhf.label.server import LabelServer, make_server
from tests.conftest import write_jsonl


def completions_records(n: int, k: int = 4) -> list[dict[str, Any]]:
    return [{"prompt": f"Question {i}?", "completions": [f"answer {i}.{j}" for j in range(k)]} for i in range(n)]


def make_project(tmp_path: Path, n_rank: int = 4, n_demo: int = 2, k: int = 4, overlap: float = 0.0) -> Path:
    """A project of ``n_demo`` demonstration and ``n_rank`` ranking tasks (K = ``k``)."""
    path = tmp_path / "project.db"
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Write about {i}."} for i in range(n_demo)])
    completions = write_jsonl(tmp_path / "completions.jsonl", completions_records(n_rank, k))
    create_project(path, str(prompts) if n_demo else None, str(completions), overlap=overlap)
    return path


def add_labelers(path: Path, *names: str) -> dict[str, str]:
    conn = db.connect(path)
    try:
        return {name: db.add_labeler(conn, name) for name in names}
    finally:
        conn.close()


@contextmanager
def running(path: Path, **kwargs: Any) -> Iterator[LabelServer]:
    server = make_server(path, port=0, **kwargs)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def call(
    server: LabelServer,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request; returns the status and the decoded JSON body (None when it is not JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    sent = {"Host": f"127.0.0.1:{server.port}"}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if body is not None or raw is not None:
        raw = json.dumps(body).encode() if raw is None else raw
        sent["Content-Type"] = "application/json"
    sent.update(headers or {})
    try:
        conn.request(method, path, body=raw, headers=sent)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, None


def ranking_body(k: int, ranking: list | None = None, likert: int = 4) -> dict[str, Any]:
    return {
        "idempotency_key": str(uuid.uuid4()),
        "ranking": list(range(k)) if ranking is None else ranking,
        "ratings": [{"likert": likert, "flags": {}, "notes": ""} for _ in range(k)],
    }


def answer_table(path: Path) -> list[tuple]:
    """Every stored answer row, for checking that a refused request changed nothing."""
    conn = db.connect(path, readonly=True)
    try:
        return [tuple(r) for r in conn.execute("SELECT * FROM answers ORDER BY id")]
    finally:
        conn.close()
