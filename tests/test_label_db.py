"""lit_rlhf.label storage and answers: idempotent submits, leases that expire, no task twice, one row per (task,
labeler), answers checked against their task."""

from __future__ import annotations

import sqlite3

import pytest

from lit_rlhf.label import answers, db
from tests.label_helpers import add_labelers, make_project


@pytest.fixture
def project(tmp_path):
    path = make_project(tmp_path, n_rank=3, n_demo=0, overlap=0.0)
    ids = {}
    tokens = add_labelers(path, "ann", "bob")
    conn = db.connect(path)
    for token_hash, labeler_id, name in db.labeler_tokens(conn):
        assert token_hash == db.hash_token(tokens[name])
        ids[name] = labeler_id
    yield conn, ids
    conn.close()


def payload(k=4):
    return {"ranking": [0, 1, 2, 3], "likert": [4] * k, "flags": [{}] * k, "notes": [""] * k}


def test_the_file_is_wal_with_a_busy_timeout(project):
    conn, _ = project
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10000
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_retried_submit_is_stored_once(project):
    conn, ids = project
    task = db.lease_next(conn, ids["ann"])
    first = db.submit(conn, ids["ann"], task.id, "key-00000001", "ranking", payload())
    again = db.submit(conn, ids["ann"], task.id, "key-00000001", "ranking", payload())
    assert first == (first[0], True) and again == (first[0], False)
    assert conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 1
    # A second answer to the same task under a new key is a conflict, not a second row.
    with pytest.raises(db.Conflict, match="already answered"):
        db.submit(conn, ids["ann"], task.id, "key-00000002", "ranking", payload())
    # Another labeler cannot replay ann's key.
    with pytest.raises(db.Conflict, match="someone else"):
        db.submit(conn, ids["bob"], task.id, "key-00000001", "ranking", payload())


def test_the_unique_constraint_holds_below_the_code(project):
    conn, ids = project
    task = db.lease_next(conn, ids["ann"])
    db.submit(conn, ids["ann"], task.id, "key-00000001", "ranking", payload())
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO answers (task_id, labeler_id, idempotency_key, kind, payload, submitted_at) "
            "VALUES (?, ?, 'other-key', 'ranking', '{}', 0)",
            (task.id, ids["ann"]),
        )


def test_a_lease_expires_and_the_task_returns_to_the_pool(project):
    conn, ids = project
    t0 = 1000.0
    held = [db.lease_next(conn, ids["ann"], lease_seconds=60, now=t0 + i).id for i in range(1)]
    # ann's fetch again gives her the same task (her live lease first), bob gets another one
    assert db.lease_next(conn, ids["ann"], lease_seconds=60, now=t0 + 1).id == held[0]
    assert db.lease_next(conn, ids["bob"], lease_seconds=60, now=t0 + 2).id != held[0]
    # a submit after expiry is refused; after expiry bob can be handed ann's task
    with pytest.raises(db.Conflict, match="expired"):
        db.submit(conn, ids["ann"], held[0], "key-00000001", "ranking", payload(), now=t0 + 61)
    conn.execute("DELETE FROM leases WHERE labeler_id = ?", (ids["bob"],))
    assert db.lease_next(conn, ids["bob"], lease_seconds=60, now=t0 + 61).id == held[0]


def test_a_labeler_never_gets_the_same_task_twice(project):
    conn, ids = project
    seen = []
    while (task := db.lease_next(conn, ids["ann"])) is not None:
        seen.append(task.id)
        kind, body = ("skip", {"reason": "unclear"}) if len(seen) == 2 else ("ranking", payload())
        db.submit(conn, ids["ann"], task.id, f"key-ann-{task.id:04d}", kind, body)
    assert sorted(seen) == [1, 2, 3] and len(set(seen)) == 3
    assert db.progress(conn, ids["ann"]) == {"done": 3, "assigned": 3}
    # one replica each: ann's tasks are done, so bob has none left; an overlap task would go to him too
    assert db.lease_next(conn, ids["bob"]) is None
    conn.execute("UPDATE tasks SET replicas = 2 WHERE id = 2")
    assert db.lease_next(conn, ids["bob"]).id == 2


def test_the_display_order_is_fixed_per_labeler_and_task_and_differs_between_them(project):
    conn, ids = project
    tasks = db.all_tasks(conn)
    orders = {(name, t): tuple(db.display_order(conn, tasks[t], ids[name])) for name in ids for t in tasks}
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders.values())
    assert orders == {(n, t): tuple(db.display_order(conn, tasks[t], ids[n])) for n in ids for t in tasks}
    assert len(set(orders.values())) > 1


def test_a_ranking_answer_is_mapped_back_to_stored_indices():
    # shown position 0 is stored completion 2, 1 is 0, 2 is 3, 3 is 1
    order = [2, 0, 3, 1]
    body = {
        "ranking": [1, [0, 3], 2],
        "ratings": [{"likert": s, "flags": {"hallucination": s == 7}} for s in (7, 6, 5, 4)],
    }
    stored = answers.ranking_answer(body, order)
    assert stored["ranking"] == [0, [1, 2], 3]  # shown [0, 3] is stored [2, 1]; a tie group is sorted
    assert stored["likert"] == [6, 4, 7, 5]  # stored i gets the score of the shown output holding it
    assert stored["flags"][2]["hallucination"] and not stored["flags"][0]["hallucination"]
    assert set(stored["flags"][0]) == set(answers.FLAGS)


@pytest.mark.parametrize(
    "ranking, problem",
    [
        ([0, 1, 2], "positions \\[3\\] have no rank"),
        ([0, 1, 1, 2, 3], "positions \\[1\\] appear more than once"),
        ([0, 1, 2, 3, 4], "positions \\[4\\] are not among"),
        ([[0, 1, 2, 3]], "at least one pair"),
        ([0, "1", 2, 3], "integer positions"),
        ([0, [], 1, 2, 3], "non-empty lists"),
    ],
)
def test_a_ranking_that_is_not_a_permutation_is_refused(ranking, problem):
    body = {"ranking": ranking, "ratings": [{"likert": 4}] * 4}
    with pytest.raises(answers.BadAnswer, match=problem):
        answers.ranking_answer(body, [0, 1, 2, 3])


@pytest.mark.parametrize("score", [0, 8, 3.5, True, None, "5"])
def test_a_likert_score_out_of_range_is_refused(score):
    body = {"ranking": [0, 1], "ratings": [{"likert": 4}, {"likert": score}]}
    with pytest.raises(answers.BadAnswer, match="likert must be an integer 1..7"):
        answers.ranking_answer(body, [0, 1])
