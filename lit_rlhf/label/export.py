"""Export a project's answers in the record formats every stage reads as they are (DESIGN.md, record formats).

Written into ``out_dir`` (atomically: each file is complete or absent)::

    demonstrations.jsonl  {"prompt", "completion"} + labeler, task_id, started_at, submitted_at      -> SFT
    rankings.jsonl        {"prompt", "completions", "ranking"} + likert, flags, notes, labeler,      -> RM, DPO
                          task_id, started_at, submitted_at (+ policy, seed when sampled)
    skipped.jsonl         {"task_id", "kind", "prompt", "labeler", "reason", "submitted_at"}

``ranking`` holds completion indices best first, a tie group as a nested list (``[0, [1, 2], 3]``). The RM and DPO
data refuse a record with ties unless told what a tie means: ``--data.ties=drop`` keeps such a record and forms no
pair between tied completions, as InstructGPT trained its RM (ties dropped). A task ranked by several labelers gives
one record per labeler. The extra keys are carried and ignored by training. The project file is opened read-only.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lit_rlhf.label import db


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def export_records(conn: Any) -> dict[str, list[dict[str, Any]]]:
    """The records of every answer, by file name stem: ``demonstrations``, ``rankings``, ``skipped``."""
    tasks, names = db.all_tasks(conn), db.labeler_names(conn)
    out: dict[str, list[dict[str, Any]]] = {"demonstrations": [], "rankings": [], "skipped": []}
    for row in db.answers(conn):
        task, payload = tasks[row["task_id"]], json.loads(row["payload"])
        who = {
            "labeler": names[row["labeler_id"]],
            "task_id": task.id,
            "started_at": _iso(row["started_at"]),
            "submitted_at": _iso(row["submitted_at"]),
        }
        if row["kind"] == "skip":
            out["skipped"].append(
                {"task_id": task.id, "kind": task.kind, "prompt": task.prompt, **who, "reason": payload["reason"]}
            )
        elif row["kind"] == "demonstration":
            out["demonstrations"].append({"prompt": task.prompt, "completion": payload["completion"], **who})
        else:
            sampled = {k: task.source[k] for k in ("policy", "seed") if k in task.source}
            out["rankings"].append(
                {"prompt": task.prompt, "completions": task.completions, **payload, **who, **sampled}
            )
    return out


def export_project(db_path: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Write the three files into ``out_dir``; returns how many records each holds."""
    conn = db.connect(db_path, readonly=True)
    try:
        records = export_records(conn)
    finally:
        conn.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stem, rows in records.items():
        path = out / f"{stem}.jsonl"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        tmp.replace(path)
    return {stem: len(rows) for stem, rows in records.items()}
