"""The labeling server over real HTTP on loopback: the API's happy path, and every bad input a clear 4xx that
changes nothing."""

from __future__ import annotations

import logging
import re
import select
import socket
import subprocess
import sys
import time

import pytest

from lit_rlhf.label import db
from lit_rlhf.label.server import MAX_BODY, make_server
from tests.conftest import REPO
from tests.label_helpers import add_labelers, answer_table, call, make_project, ranking_body, running


@pytest.fixture
def served(tmp_path):
    path = make_project(tmp_path, n_rank=3, n_demo=1)
    tokens = add_labelers(path, "ann", "bob")
    with running(path) as server:
        yield server, path, tokens


def test_a_labeler_fetches_answers_and_retries_through_the_api(served):
    server, path, tokens = served
    status, me = call(server, "GET", "/api/me", tokens["ann"])
    assert status == 200 and me["labeler"] == "ann" and me["progress"] == {"done": 0, "assigned": 4}
    assert len(me["flags"]) == 11 and me["likert"] == [1, 7]
    done = 0
    while True:
        status, data = call(server, "GET", "/api/next", tokens["ann"])
        assert status == 200
        task = data["task"]
        if task is None:
            break
        assert set(task) <= {"id", "kind", "prompt", "outputs"}  # nothing about the policy or the sample
        if task["kind"] == "ranking":
            assert sorted(task["outputs"]) == [f"answer {task['id'] - 2}.{j}" for j in range(4)]
            body = ranking_body(4, [0, [1, 2], 3])
        else:
            body = {"idempotency_key": "demo-key-1", "completion": "A demonstration."}
        status, stored = call(server, "POST", f"/api/tasks/{task['id']}/answer", tokens["ann"], body)
        assert status == 200 and stored["stored"] is True
        # the same submit again (a retry after a lost reply): acknowledged, stored once
        status, again = call(server, "POST", f"/api/tasks/{task['id']}/answer", tokens["ann"], body)
        assert status == 200 and again["stored"] is False and again["answer_id"] == stored["answer_id"]
        done += 1
    assert done == 4 and len(answer_table(path)) == 4
    assert call(server, "GET", "/api/me", tokens["ann"])[1]["progress"] == {"done": 4, "assigned": 4}


def test_a_skip_is_stored_with_its_reason(served):
    server, path, tokens = served
    task = call(server, "GET", "/api/next", tokens["ann"])[1]["task"]
    assert call(server, "POST", f"/api/tasks/{task['id']}/skip", tokens["ann"], {"idempotency_key": "k" * 8})[0] == 422
    status, _ = call(
        server,
        "POST",
        f"/api/tasks/{task['id']}/skip",
        tokens["ann"],
        {"idempotency_key": "k" * 8, "reason": "the task is unclear"},
    )
    assert status == 200
    (row,) = answer_table(path)
    assert "the task is unclear" in row[5] and row[4] == "skip"


def _ranking_task(server, token):
    while True:
        task = call(server, "GET", "/api/next", token)[1]["task"]
        if task["kind"] == "ranking":
            return task
        call(
            server,
            "POST",
            f"/api/tasks/{task['id']}/answer",
            token,
            {"idempotency_key": "demo-key-2", "completion": "x"},
        )


@pytest.mark.parametrize(
    "body, status, says",
    [
        (dict(ranking=[0, 1, 2]), 422, "positions [3] have no rank"),
        (dict(ranking=[0, 1, 1, 2, 3]), 422, "appear more than once"),
        (dict(ranking=[0, 1, 2, 7]), 422, "positions [7] are not among"),
        (dict(ranking=[[0, 1, 2, 3]]), 422, "at least one pair"),
        (dict(likert=9), 422, "likert must be an integer 1..7"),
        (dict(likert=0), 422, "likert must be an integer 1..7"),
        (dict(idempotency_key="short"), 422, "idempotency_key"),
        (dict(ratings=[]), 422, "ratings must be a list of 4"),
    ],
)
def test_a_bad_answer_gets_a_clear_4xx_and_changes_nothing(served, body, status, says):
    server, path, tokens = served
    task = _ranking_task(server, tokens["ann"])
    before = answer_table(path)
    sent = ranking_body(4, body.get("ranking"), body.get("likert", 4))
    sent.update({k: v for k, v in body.items() if k not in ("ranking", "likert")})
    got, data = call(server, "POST", f"/api/tasks/{task['id']}/answer", tokens["ann"], sent)
    assert (got, says in data["error"]) == (status, True), data
    assert answer_table(path) == before


def test_bad_bodies_tasks_tokens_and_hosts_get_4xx_and_change_nothing(served, tmp_path):
    server, path, tokens = served
    task = _ranking_task(server, tokens["ann"])
    url = f"/api/tasks/{task['id']}/answer"
    before = answer_table(path)
    cases = {
        "malformed JSON": call(server, "POST", url, tokens["ann"], raw=b"{not json"),
        "not an object": call(server, "POST", url, tokens["ann"], raw=b"[1, 2]"),
        "oversized": call(server, "POST", url, tokens["ann"], raw=b" " * (MAX_BODY + 1)),
        "not JSON": call(server, "POST", url, tokens["ann"], raw=b"{}", headers={"Content-Type": "text/plain"}),
        "unknown task": call(server, "POST", "/api/tasks/999/answer", tokens["ann"], ranking_body(4)),
        "another labeler's task": call(server, "POST", url, tokens["bob"], ranking_body(4)),
        "bad token": call(server, "POST", url, "not-a-token", ranking_body(4)),
        "no token": call(server, "GET", "/api/next"),
        "bad Host": call(server, "GET", "/api/next", tokens["ann"], headers={"Host": "evil.example:80"}),
        "no route": call(server, "GET", "/api/secrets", tokens["ann"]),
        "wrong method": call(server, "GET", url, tokens["ann"]),
    }
    statuses = {name: status for name, (status, _) in cases.items()}
    assert statuses == {
        "malformed JSON": 400,
        "not an object": 400,
        "oversized": 413,
        "not JSON": 415,
        "unknown task": 404,
        "another labeler's task": 404,
        "bad token": 401,
        "no token": 401,
        "bad Host": 421,
        "no route": 404,
        "wrong method": 405,
    }
    assert cases["bad token"][1] == {"error": "unauthorized"}  # nothing else
    assert all(isinstance(body.get("error"), str) for _, body in cases.values())
    assert answer_table(path) == before


def test_a_stale_lease_and_a_revoked_token(tmp_path):
    path = make_project(tmp_path, n_rank=2, n_demo=0)
    tokens = add_labelers(path, "ann")
    with running(path, lease_seconds=0.2) as server:
        task = call(server, "GET", "/api/next", tokens["ann"])[1]["task"]
        time.sleep(0.3)
        status, data = call(server, "POST", f"/api/tasks/{task['id']}/answer", tokens["ann"], ranking_body(4))
        assert status == 409 and "expired" in data["error"]
        conn = db.connect(path)
        db.revoke_labeler(conn, "ann")
        conn.close()
        assert call(server, "GET", "/api/me", tokens["ann"]) == (401, {"error": "unauthorized"})
    assert answer_table(path) == []


def test_tokens_are_never_logged(served, caplog):
    server, _, tokens = served
    with caplog.at_level(logging.INFO, logger="lit_rlhf.label.server"):
        call(server, "GET", "/api/next", tokens["ann"])
        call(server, "GET", "/api/next", "wrong-token-123")
    assert "GET /api/next" in caplog.text
    assert tokens["ann"] not in caplog.text and "wrong-token-123" not in caplog.text


def test_the_page_and_script_are_served_with_a_strict_policy(served):
    import http.client

    server, _, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/", headers={"Host": f"localhost:{server.port}"})
    response = conn.getresponse()
    html = response.read().decode()
    assert response.status == 200 and '<script src="/static/label.js">' in html
    assert "script-src 'self'" in response.getheader("Content-Security-Policy")
    conn.request("GET", "/static/label.js", headers={"Host": f"127.0.0.1:{server.port}"})
    script = conn.getresponse().read().decode()
    conn.close()
    assert "textContent" in script and "innerHTML =" not in script and "insertAdjacentHTML" not in script


def test_serve_on_a_port_in_use_says_so_in_one_line_and_exits_2(tmp_path, capsys):
    from lit_rlhf.cli import main

    path = make_project(tmp_path, n_rank=1, n_demo=0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            main(["label", "serve", str(path), "--port", str(port)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        f"lit-rlhf label: error: cannot serve on 127.0.0.1:{port}: Address already in use; stop what holds it or "
        "pick another --port (0 picks a free one)\n"
    )


@pytest.mark.skipif(sys.platform != "linux", reason="Linux drops a connection whose listen queue is full")
def test_a_burst_of_connections_waits_in_the_listen_queue_instead_of_being_dropped(tmp_path):
    # socketserver listens with a queue of 5: with the server busy, the kernel dropped the 7th connection of a burst
    # and its client resent the SYN 1, 3, 7 s later (benchmarks/label_load.py: p99 7.5 s with 50 labelers). Here
    # nobody accepts at all, so exactly the queue's worth of handshakes completes (Linux: backlog + 1) and stays.
    path = make_project(tmp_path, n_rank=1, n_demo=0)
    server = make_server(path, port=0)  # bound and listening, not serving
    clients = [socket.socket() for _ in range(50)]
    try:
        for client in clients:
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", server.port))
        time.sleep(0.5)  # loopback handshakes take microseconds; a dropped SYN is resent only after 1 s
        _, writable, _ = select.select([], clients, [], 0)
        connected = [c for c in writable if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0]
        assert len(connected) == len(clients)
    finally:
        for client in clients:
            client.close()
        server.server_close()


def test_a_file_locked_by_another_process_gets_503_and_the_retry_is_stored_once(served, caplog):
    server, path, tokens = served
    server.busy_timeout = 0.2  # instead of 10 s
    task = _ranking_task(server, tokens["ann"])
    body = ranking_body(4)
    before = answer_table(path)
    other = db.connect(path)  # another process holding the write lock (e.g. `lit-rlhf label labeler add`)
    other.execute("BEGIN IMMEDIATE")
    try:
        with caplog.at_level(logging.WARNING, logger="lit_rlhf.label.server"):
            got = call(server, "POST", f"/api/tasks/{task['id']}/answer", tokens["ann"], body)
            fetched = call(server, "GET", "/api/next", tokens["bob"])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert got[0] == fetched[0] == 503 and "retry" in got[1]["error"] and "busy" in caplog.text
    assert answer_table(path) == before
    status, stored = call(server, "POST", f"/api/tasks/{task['id']}/answer", tokens["ann"], body)
    assert status == 200 and stored["stored"] is True
    assert call(server, "POST", f"/api/tasks/{task['id']}/answer", tokens["ann"], body)[1]["stored"] is False
    assert len(answer_table(path)) == len(before) + 1


def test_an_unexpected_failure_is_answered_500_and_logged(served, monkeypatch, caplog):
    server, _, tokens = served

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(db, "progress", broken)
    with caplog.at_level(logging.ERROR, logger="lit_rlhf.label.server"):
        status, data = call(server, "GET", "/api/me", tokens["ann"])
    assert (status, data) == (500, {"error": "internal error; see the server's log"})
    assert "RuntimeError: a bug" in caplog.text


def test_the_server_writes_under_its_own_lock(served, monkeypatch):
    # Its threads queue on LabelServer.write_lock, not in SQLite's polling busy handler (a waiter there can starve
    # past the busy timeout: benchmarks/label_load.py saw `database is locked` with 50 labelers).
    server, _, tokens = served
    held = []

    def spied(real):
        def spy(*args, **kwargs):
            held.append((real.__name__, server.write_lock.locked()))
            return real(*args, **kwargs)

        return spy

    for name in ("lease_next", "submit"):
        monkeypatch.setattr(db, name, spied(getattr(db, name)))
    task = _ranking_task(server, tokens["ann"])
    assert call(server, "POST", f"/api/tasks/{task['id']}/answer", tokens["ann"], ranking_body(4))[0] == 200
    assert {name for name, _ in held} == {"lease_next", "submit"} and all(locked for _, locked in held)


def test_lit_rlhf_label_starts_without_importing_lightning_or_torch():
    # A labeling server killed mid-run restarts in a fraction of a second (benchmarks/label_load.py), not after the
    # ~10 s that importing Lightning and torch takes: the entry point hands `label` off before either is imported.
    script = re.search(r'^lit-rlhf = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert script and script.group(1) == "lit_rlhf.__main__:main"
    code = (
        "import sys\nfrom lit_rlhf.__main__ import main\ntry:\n    main(['label', 'serve', '--help'])\n"
        "except SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert "--port" in done.stdout and done.stdout.strip().endswith("[]"), done.stdout
