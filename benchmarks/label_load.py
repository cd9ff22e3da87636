"""Load and fault test of ``lit-rlhf label serve``: simulated labelers over HTTP, then the server killed mid-run.

    python benchmarks/label_load.py --json runs/label_load.json                  # 50 labelers, 2 x 30 s
    python benchmarks/label_load.py --labelers 4 --seconds 3 --tasks 200         # smoke

A project of ``--tasks`` ranking tasks (K = 4..9 outputs, 10% overlap tasks for two labelers) and
``--demonstrations`` demonstration tasks is created in a temporary directory, ``--labelers`` labelers are added, and
the server runs as its own process (``python -m lit_rlhf label serve``, the ``lit-rlhf`` entry point) on a free
loopback port. Each simulated labeler is a thread with its own ``http.client`` connections, looping without think
time: ``GET /api/next``, an answer built from what the page would show (a random ranking of the shown outputs, a tie
now and then, a Likert score and flags per output; a demonstration's text; a skip now and then), ``POST`` with a fresh
idempotency key, and with ``--retry-prob`` the same submit again (same key) 1-3 times, as a browser does after a lost
reply. Every acknowledged submit (HTTP 200) is recorded with what was sent.

Phases (each on a fresh project):

* ``steady``: ``--seconds`` of load.
* ``kill``: the same load; at ``--kill-after`` seconds (default: half way) the server gets SIGKILL (no cleanup: the
  process dies between any two instructions, a transaction possibly open). Clients treat a refused or broken
  connection (and a 503) as "retry later" and resend the same request (a submit with the same key). After ``--down``
  seconds the server is started again on the same file and port, and the load goes on until it has served as long
  as in ``steady``.

Checks, read from the SQLite file with a read-only connection after the server stopped: every acknowledged submit
is stored exactly once (by its key, with the task, labeler and answer that were sent, under the answer id its replies
gave); no key stored twice; at most one row per (task, labeler); no task with more answers than its replicas;
``PRAGMA integrity_check`` is ``ok``. A submit stored whose reply never arrived (the kill) is counted, not an error.

Not a test: the figures depend on the machine and its load (the clients and the server share its cores). Prints the
command that produced them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONNECTION_ERRORS = (OSError, http.client.HTTPException)
"""A refused, reset or half-answered connection (the server is down or died mid-reply): retry later."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labelers", type=int, default=50, help="simulated labelers, one thread each")
    p.add_argument("--tasks", type=int, default=2000, help="ranking tasks (K = 4..9 outputs)")
    p.add_argument("--demonstrations", type=int, default=100, help="demonstration tasks")
    p.add_argument("--overlap", type=float, default=0.1, help="share of ranking tasks for two labelers")
    p.add_argument("--seconds", type=float, default=30.0, help="load per phase")
    p.add_argument("--max-requests", type=int, default=None, help="stop starting new tasks after this many requests")
    p.add_argument("--phases", default="steady,kill", help="which phases, in order: steady, kill")
    p.add_argument("--kill-after", type=float, default=None, help="SIGKILL the server this long into 'kill' (half)")
    p.add_argument("--down", type=float, default=1.0, help="seconds between the kill and the restart")
    p.add_argument("--retry-prob", type=float, default=0.2, help="chance a submit is sent again, same key, 1-3 times")
    p.add_argument("--skip-prob", type=float, default=0.05, help="chance a task is skipped")
    p.add_argument("--tie-prob", type=float, default=0.2, help="chance a ranking holds a tie")
    p.add_argument("--grace", type=float, default=60.0, help="after the end, how long an unanswered submit is retried")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument(
        "--workdir", type=Path, default=None, help="keep the projects and server logs here (default: a temp dir)"
    )
    return p.parse_args(argv)


# --------------------------------------------------------------------------- the project and the server


def make_project(root: Path, args: argparse.Namespace) -> tuple[Path, dict[str, str]]:
    """A project file of ranking and demonstration tasks, and ``{labeler name: token}``."""
    from lit_rlhf.label import db
    from lit_rlhf.label.project import create_project

    rng = random.Random(args.seed)
    root.mkdir(parents=True)
    completions, prompts = root / "completions.jsonl", root / "prompts.jsonl"
    with open(completions, "w") as f:
        for i in range(args.tasks):
            k = rng.randint(4, 9)
            texts = [
                f"Output {j} to question {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(5, 40))) for j in range(k)
            ]
            f.write(json.dumps({"prompt": f"Question {i}: what is {rng.choice(WORDS)}?", "completions": texts}) + "\n")
    with open(prompts, "w") as f:
        for i in range(args.demonstrations):
            f.write(json.dumps({"prompt": f"Write a short note about {rng.choice(WORDS)} ({i})."}) + "\n")
    path = root / "project.db"
    create_project(path, str(prompts) if args.demonstrations else None, str(completions), overlap=args.overlap)
    conn = db.connect(path)
    try:
        tokens = {f"labeler{i:02d}": db.add_labeler(conn, f"labeler{i:02d}") for i in range(args.labelers)}
    finally:
        conn.close()
    return path, tokens


WORDS = "the a cat dog sun moon tree bird fish star red blue cold warm fast slow big small river stone".split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m lit_rlhf label serve DB --port PORT`` as a child process; its log goes to ``log``."""

    def __init__(self, db_path: Path, port: int, log: Path) -> None:
        self.db_path, self.port, self.log = db_path, port, log
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> float:
        """Start it and wait until it answers; returns the seconds that took."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "lit_rlhf", "label", "serve", str(self.db_path), "--port", str(self.port)]
        t0 = time.perf_counter()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=ROOT)
        while time.perf_counter() - t0 < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}; see {self.log}")
            try:
                status, _ = request(self.port, "GET", "/", timeout=2.0)
                if status == 200:
                    return time.perf_counter() - t0
            except CONNECTION_ERRORS:
                time.sleep(0.05)
        raise RuntimeError(f"the server did not answer within {timeout} s; see {self.log}")

    def kill(self) -> None:
        """SIGKILL: no handler runs, no connection is closed cleanly."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """Ctrl-C, as a person stops it."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def request(
    port: int, method: str, path: str, token: str | None = None, body: Any = None, timeout: float = 60.0
) -> tuple[int, Any]:
    """One request on a new connection (the server speaks HTTP/1.0: one request per connection)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Host": f"127.0.0.1:{port}"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, None


# --------------------------------------------------------------------------- the simulated labelers


@dataclass
class Record:
    """What the clients saw, shared by all of them (one lock)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter = field(default_factory=Counter)
    connection_errors: Counter = field(default_factory=Counter)
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)
    """idempotency key -> {"answer_id", "task_id", "labeler", "sent"} of every submit answered 200."""
    created: Counter = field(default_factory=Counter)
    """idempotency key -> how many of its replies said ``stored: true`` (must be at most 1)."""
    answer_id_changed: int = 0
    resends: int = 0
    unanswered_submits: int = 0
    """Submits still without a reply when the grace period ended (not acknowledged: not checked)."""

    def seen(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.latency[route].append(seconds)
            self.statuses[f"{route} {status}"] += 1

    def ack(self, key: str, reply: dict[str, Any], task_id: int, labeler: str, sent: dict[str, Any]) -> None:
        with self.lock:
            self.created[key] += bool(reply["stored"])
            first = self.acked.setdefault(
                key, {"answer_id": reply["answer_id"], "task_id": task_id, "labeler": labeler, "sent": sent}
            )
            self.answer_id_changed += first["answer_id"] != reply["answer_id"]


class SimulatedLabeler(threading.Thread):
    def __init__(self, name: str, token: str, port: int, record: Record, args: argparse.Namespace, seed: str) -> None:
        super().__init__(name=name, daemon=True)
        self.token, self.port, self.record, self.args = token, port, record, args
        self.rng = random.Random(seed)
        self.stop_at = self.give_up_at = 0.0

    def send(self, method: str, path: str, route: str, body: Any = None) -> tuple[int, Any] | None:
        """The request's reply, resent after every connection error and 503 until ``give_up_at``; None then."""
        while True:
            with self.record.lock:
                self.record.requests += 1
            t0 = time.perf_counter()
            try:
                status, data = request(self.port, method, path, self.token, body)
            except CONNECTION_ERRORS as error:
                with self.record.lock:
                    self.record.connection_errors[f"{route} {type(error).__name__}"] += 1
                if time.perf_counter() > self.give_up_at:
                    return None
                time.sleep(0.1 + 0.2 * self.rng.random())  # retry later, not all at once
                continue
            self.record.seen(route, status, time.perf_counter() - t0)
            if status == 503 and time.perf_counter() < self.give_up_at:  # busy: Retry-After 1 s
                time.sleep(1.0 + 0.2 * self.rng.random())
                continue
            return status, data

    def over_budget(self) -> bool:
        limit = self.args.max_requests
        return time.perf_counter() > self.stop_at or (limit is not None and self.record.requests >= limit)

    def run(self) -> None:
        while not self.over_budget():
            reply = self.send("GET", "/api/next", "GET /api/next")
            if reply is None:
                return
            status, data = reply
            if status != 200:
                time.sleep(0.1)
                continue
            task = data["task"]
            if task is None:
                return  # nothing left for this labeler
            route, body, sent = self.answer(task)
            n_sends = 1 + (self.rng.randint(1, 3) if self.rng.random() < self.args.retry_prob else 0)
            for i in range(n_sends):
                reply = self.send("POST", f"/api/tasks/{task['id']}/{route}", f"POST {route}", body)
                if reply is None:
                    with self.record.lock:
                        self.record.unanswered_submits += 1
                    return
                status, data = reply
                if status != 200:
                    break
                self.record.ack(body["idempotency_key"], data, task["id"], self.name, sent)
                with self.record.lock:
                    self.record.resends += i > 0

    def answer(self, task: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """``(route, body, sent)``: ``sent`` is the answer in the outputs' own text, to check the stored one by."""
        rng, key = self.rng, str(uuid.UUID(int=self.rng.getrandbits(128)))
        if rng.random() < self.args.skip_prob:
            return "skip", {"idempotency_key": key, "reason": "the task is unclear"}, {"reason": "the task is unclear"}
        if task["kind"] == "demonstration":
            text = f"A demonstration by {self.name} for task {task['id']}."
            return "answer", {"idempotency_key": key, "completion": text}, {"completion": text}
        outputs = task["outputs"]
        order = list(range(len(outputs)))
        rng.shuffle(order)
        groups: list[list[int]] = [[i] for i in order]
        if rng.random() < self.args.tie_prob:  # two neighbours tied
            at = rng.randrange(len(groups) - 1)
            groups[at : at + 2] = [groups[at] + groups[at + 1]]
        ratings = [
            {"likert": rng.randint(1, 7), "flags": {"hallucination": rng.random() < 0.1}, "notes": ""} for _ in outputs
        ]
        body = {
            "idempotency_key": key,
            "ranking": [g if len(g) > 1 else g[0] for g in groups],
            "ratings": ratings,
        }
        sent = {
            "ranking": [sorted(outputs[i] for i in g) for g in groups],
            "likert": {outputs[i]: r["likert"] for i, r in enumerate(ratings)},
        }
        return "answer", body, sent


# --------------------------------------------------------------------------- a phase


def run_phase(name: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    path, tokens = make_project(root / name, args)
    server = Server(path, free_port(), root / name / "server.log")
    record = Record()
    figures: dict[str, Any] = {"phase": name, "start_s": server.start()}
    clients = [
        SimulatedLabeler(n, t, server.port, record, args, seed=f"{args.seed}:{name}:{i}")
        for i, (n, t) in enumerate(tokens.items())
    ]
    t0 = time.perf_counter()
    for c in clients:
        c.stop_at, c.give_up_at = t0 + args.seconds, t0 + args.seconds + args.grace
        c.start()
    if name == "kill":
        kill_after = args.seconds / 2 if args.kill_after is None else args.kill_after
        time.sleep(max(0.0, t0 + kill_after - time.perf_counter()))
        with record.lock:
            acked_before_kill = len(record.acked)
        server.kill()
        killed_at = time.perf_counter()
        time.sleep(args.down)
        figures["restart_s"] = server.start()
        figures["down_s"] = time.perf_counter() - killed_at
        figures["killed_at_s"] = killed_at - t0
        figures["acked_before_kill"] = acked_before_kill
        for c in clients:  # the same serving time as the steady phase: the end moves by the time it was down
            c.stop_at += figures["down_s"]
            c.give_up_at += figures["down_s"]
    for c in clients:
        c.join()
    elapsed = time.perf_counter() - t0
    server.stop()
    figures.update(summarise(record, elapsed, elapsed - figures.get("down_s", 0.0)))
    figures["server_exceptions"] = server_exceptions(server.log)
    figures["checks"] = check_store(path, record)
    return figures


def server_exceptions(log: Path) -> dict[str, int]:
    """Exceptions no handler turned into a reply, by the last line of their traceback in the server's log (request
    log lines of other threads may interleave with a traceback; the last line is the one naming the exception)."""
    found: Counter = Counter()
    for line in log.read_text(errors="replace").splitlines():
        if EXCEPTION_LINE.match(line):
            found[line[:120]] += 1
    return dict(found)


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Warning)(: .*)?$")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 1])."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def summarise(record: Record, elapsed: float, serving: float) -> dict[str, Any]:
    """Counts and latencies; ``requests_s`` is answered requests per second of ``serving`` (the server up)."""
    answered = sum(len(v) for v in record.latency.values())
    return {
        "seconds": elapsed,
        "serving_s": serving,
        "requests": record.requests,
        "answered_requests": answered,
        "requests_s": answered / serving,
        "routes": {
            route: {"n": len(v), "p50_ms": 1000 * percentile(v, 0.5), "p99_ms": 1000 * percentile(v, 0.99)}
            for route, v in sorted(record.latency.items())
        },
        "statuses": dict(sorted(record.statuses.items())),
        "connection_errors": dict(sorted(record.connection_errors.items())),
        "acknowledged": len(record.acked),
        "resends": record.resends,
        "unanswered_submits": record.unanswered_submits,
    }


def check_store(path: Path, record: Record) -> dict[str, Any]:
    """The stored answers against every acknowledged submit, read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        integrity = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        completions = {r["id"]: json.loads(r["completions"] or "null") for r in conn.execute("SELECT * FROM tasks")}
        names = {r["id"]: r["name"] for r in conn.execute("SELECT id, name FROM labelers")}
        rows = conn.execute("SELECT * FROM answers").fetchall()
        per_pair = conn.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM answers GROUP BY task_id, labeler_id HAVING COUNT(*) > 1)"
        ).fetchone()[0]
        over = conn.execute(
            "SELECT COUNT(*) FROM tasks t WHERE (SELECT COUNT(*) FROM answers a WHERE a.task_id = t.id) > t.replicas"
        ).fetchone()[0]
    finally:
        conn.close()
    by_key: dict[str, list[sqlite3.Row]] = defaultdict(list)
    for row in rows:
        by_key[row["idempotency_key"]].append(row)
    lost = [k for k in record.acked if k not in by_key]
    wrong = [k for k, ack in record.acked.items() if k in by_key and not _same(by_key[k][0], ack, names, completions)]
    return {
        "stored": len(rows),
        "lost": len(lost),
        "keys_stored_twice": sum(len(v) > 1 for v in by_key.values()),
        "created_twice": sum(n > 1 for n in record.created.values()),
        "answer_id_changed": record.answer_id_changed,
        "stored_not_as_sent": len(wrong),
        "rows_per_task_labeler_over_1": per_pair,
        "tasks_over_replicas": over,
        "stored_without_ack": sum(k not in record.acked for k in by_key),
        # stored, the reply lost (the kill), acknowledged by a resend of the same key: what idempotency is for
        "acked_only_on_resend": sum(record.created[k] == 0 for k in record.acked),
        "integrity_check": "; ".join(integrity),
    }


def _same(row: sqlite3.Row, ack: dict[str, Any], names: dict[int, str], completions: dict[int, Any]) -> bool:
    if (row["id"], row["task_id"], names[row["labeler_id"]]) != (ack["answer_id"], ack["task_id"], ack["labeler"]):
        return False
    payload, sent = json.loads(row["payload"]), ack["sent"]
    if row["kind"] != "ranking":
        return payload == sent
    texts = completions[row["task_id"]]
    ranking = [sorted(texts[i] for i in (g if isinstance(g, list) else [g])) for g in payload["ranking"]]
    return ranking == sent["ranking"] and dict(zip(texts, payload["likert"], strict=True)) == sent["likert"]


# --------------------------------------------------------------------------- report


def report(phases: list[dict[str, Any]]) -> str:
    lines = [
        f"{'phase':<7} {'serving s':>9} {'answered':>8} {'req/s':>6} {'acked':>6} {'resent':>6} "
        f"{'conn err':>8} {'down s':>6} {'start s':>7}"
    ]
    for f in phases:
        down = f"{f['down_s']:.1f}" if "down_s" in f else "-"
        start = f"{f['restart_s']:.1f}" if "restart_s" in f else f"{f['start_s']:.1f}"
        lines.append(
            f"{f['phase']:<7} {f['serving_s']:>9.1f} {f['answered_requests']:>8} {f['requests_s']:>6.1f} "
            f"{f['acknowledged']:>6} {f['resends']:>6} {sum(f['connection_errors'].values()):>8} {down:>6} {start:>7}"
        )
    lines += ["", f"{'phase':<7} {'route':<16} {'n':>6} {'p50 ms':>7} {'p99 ms':>7}"]
    for f in phases:
        for route, r in f["routes"].items():
            lines.append(f"{f['phase']:<7} {route:<16} {r['n']:>6} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f}")
    lines += ["", f"{'phase':<7} {'status or connection error':<40} {'count':>6}"]
    for f in phases:
        for what, n in {**f["statuses"], **f["connection_errors"]}.items():
            lines.append(f"{f['phase']:<7} {what:<40} {n:>6}")
    for f in phases:
        for what, n in f["server_exceptions"].items():
            lines.append(f"{f['phase']:<7} server: {what[:80]:<80} {n:>6}")
    lines += [
        "",
        f"{'phase':<7} {'lost':>5} {'dup':>5} {'changed':>7} {'stored':>6} {'no ack':>6} {'ack on resend':>13} "
        f"{'integrity':>9}",
    ]
    for f in phases:
        c = f["checks"]
        dup = c["keys_stored_twice"] + c["created_twice"] + c["rows_per_task_labeler_over_1"]
        changed = c["answer_id_changed"] + c["stored_not_as_sent"] + c["tasks_over_replicas"]
        lines.append(
            f"{f['phase']:<7} {c['lost']:>5} {dup:>5} {changed:>7} {c['stored']:>6} {c['stored_without_ack']:>6} "
            f"{c['acked_only_on_resend']:>13} {c['integrity_check']:>9}"
        )
    return "\n".join(lines)


def failures(phases: list[dict[str, Any]]) -> list[str]:
    """What went wrong: a lost, duplicated or altered answer, a damaged file, a 5xx."""
    out = []
    for f in phases:
        c = f["checks"]
        for name in (
            "lost",
            "keys_stored_twice",
            "created_twice",
            "answer_id_changed",
            "stored_not_as_sent",
            "rows_per_task_labeler_over_1",
            "tasks_over_replicas",
        ):
            if c[name]:
                out.append(f"{f['phase']}: {name} = {c[name]}")
        if c["integrity_check"] != "ok":
            out.append(f"{f['phase']}: integrity_check = {c['integrity_check']}")
        out += [f"{f['phase']}: {n} x {s}" for s, n in f["statuses"].items() if s.split()[-1].startswith("5")]
        out += [f"{f['phase']}: {n} x server exception {e}" for e, n in f["server_exceptions"].items()]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [p for p in args.phases.split(",") if p]
    if not names or set(names) - {"steady", "kill"}:
        print(f"label_load.py: error: --phases {args.phases!r}: give steady, kill or both", file=sys.stderr)
        return 2
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["label_load.py", *argv])
    print(f"# {command}")
    load_before = os.getloadavg()[0]
    print(f"# {os.cpu_count()} CPUs, load average {load_before:.2f} before the run", flush=True)
    if args.workdir is not None:
        phases = [run_phase(name, args.workdir, args) for name in names]
    else:
        with tempfile.TemporaryDirectory(prefix="label_load-") as tmp:
            phases = [run_phase(name, Path(tmp), args) for name in names]
    print(report(phases))
    print(f"# load average {os.getloadavg()[0]:.2f} after the run")
    problems = failures(phases)
    print("\n" + ("\n".join(f"FAILED {p}" for p in problems) if problems else "all checks passed"))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "command": command,
            "cpus": os.cpu_count(),
            "load_average": [load_before, os.getloadavg()[0]],
            "phases": phases,
            "failures": problems,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
