"""``lit-rlhf label``: collect demonstrations and K-wise rankings from people, in a local web app.

    lit-rlhf label create project.db --prompts prompts.jsonl                   # demonstration tasks
    lit-rlhf label create project.db --prompts p.jsonl --policy runs/sft/hf   # ranking tasks, K samples each
    lit-rlhf label labeler add project.db alice bob                           # prints each labeler's link
    lit-rlhf label serve project.db                                           # http://127.0.0.1:8000/
    lit-rlhf label export project.db out/                                     # SFT and RM/DPO record files
    lit-rlhf label agreement project.db                                       # inter-labeler agreement

Train on the export as on any record file: ``--data.train_files out/demonstrations.jsonl`` (SFT);
``--data.train_files out/rankings.jsonl --data.ties=drop`` (RM, DPO: tied completions form no pair, as InstructGPT
dropped ties). See docs/labeling.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
from pathlib import Path
from typing import NoReturn

PROG = "lit-rlhf label"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (``lit-rlhf label: error: ...``) and exits 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog=PROG, description=__doc__, formatter_class=formatter)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{create,labeler,serve,export,agreement,status}", parser_class=_Parser
    )

    create = commands.add_parser(
        "create",
        help="create a project file with its tasks",
        description=(
            "Create a labeling project (one SQLite file) from prompt records (any PPO-prompt format: prompt, messages, "
            "or the prompt of an SFT or preference record). Without --policy every prompt is a demonstration task; with "
            "it, the first --demonstrations prompts are and the rest are ranking tasks of K samples of the policy "
            "(seeded: sample j of prompt i from sample_seed(seed, i, j)). --completions adds ranking tasks from "
            "{prompt, completions} records."
        ),
        formatter_class=formatter,
    )
    create.add_argument("db", type=Path, help="the project file to create (refused when it exists)")
    create.add_argument("--prompts", help="prompt record file (jsonl/json/parquet/csv or a glob)")
    create.add_argument("--completions", help="{prompt, completions} records: ranking tasks with these K outputs")
    create.add_argument("--policy", help="policy directory (an SFT export) to sample ranking tasks from --prompts")
    create.add_argument(
        "--demonstrations",
        type=int,
        default=None,
        help="how many prompts become demonstration tasks (default: all without --policy, 0 with)",
    )
    create.add_argument(
        "--k", type=int, default=4, help="completions per ranking task from --policy (InstructGPT: 4..9)"
    )
    create.add_argument("--seed", type=int, default=0, help="seeds the sampling and the choice of overlap tasks")
    create.add_argument(
        "--overlap",
        type=float,
        default=0.1,
        help="share of ranking tasks given to several labelers, for agreement (default 0.1)",
    )
    create.add_argument("--overlap_labelers", type=int, default=2, help="labelers per overlap task (default 2)")
    create.add_argument("--max_prompts", type=int, default=None, help="read only this many records of each file")
    create.add_argument("--max_new_tokens", type=int, default=64, help="longest sampled completion, tokens")
    create.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    create.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass")
    create.add_argument("--device", default="cpu", help="where the policy samples (cpu, cuda)")

    labeler = commands.add_parser("labeler", help="add or revoke labelers", description="Add or revoke labelers.")
    actions = labeler.add_subparsers(dest="action", required=True, parser_class=_Parser)
    add = actions.add_parser(
        "add",
        help="add labelers and print each one's link",
        description="Add labelers; prints one line per labeler: name, token, personal link. "
        "The token is shown once (the file keeps only its hash).",
    )
    add.add_argument("db", type=Path, help="the project file")
    add.add_argument("names", nargs="+", help="labeler names")
    add.add_argument("--url", default="http://127.0.0.1:8000/", help="where the server will be (for the links)")
    revoke = actions.add_parser(
        "revoke",
        help="revoke a labeler's token (their answers stay)",
        description="Revoke a labeler's token: their requests get 401; their answers stay.",
    )
    revoke.add_argument("db", type=Path, help="the project file")
    revoke.add_argument("name", help="the labeler")

    serve = commands.add_parser(
        "serve",
        help="serve the labeling page",
        description=(
            "Serve the labeling page and its JSON API on 127.0.0.1 (this machine only). --host 0.0.0.0 serves other "
            "machines too, with a warning: it is plain HTTP."
        ),
        formatter_class=formatter,
    )
    serve.add_argument("db", type=Path, help="the project file")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    serve.add_argument(
        "--lease_minutes",
        type=float,
        default=30.0,
        help="an open task returns to the pool this long after its labeler fetched it",
    )
    serve.add_argument(
        "--allowed_host",
        action="append",
        default=[],
        help="a host name labelers reach the server by (checked against the Host header); repeatable",
    )

    export = commands.add_parser(
        "export",
        help="write the answers as SFT and RM/DPO record files",
        description=(
            "Write demonstrations.jsonl ({prompt, completion}: SFT), rankings.jsonl ({prompt, completions, ranking}, "
            "ties as nested lists: RM and DPO with --data.ties=drop) and skipped.jsonl into OUT. Reads the project "
            "file only."
        ),
        formatter_class=formatter,
    )
    export.add_argument("db", type=Path, help="the project file")
    export.add_argument("out", type=Path, help="output directory")

    agree = commands.add_parser(
        "agreement",
        help="inter-labeler agreement on the overlap tasks",
        description=(
            "Pairwise agreement over shared strictly ordered pairs (ties left out, their share shown), Kendall tau-b "
            "per shared prompt, per labeler and overall, with a 95%% bootstrap interval over prompts."
        ),
        formatter_class=formatter,
    )
    agree.add_argument("db", type=Path, help="the project file")
    agree.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    agree.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples of the prompts")
    agree.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")

    status = commands.add_parser(
        "status",
        help="tasks, answers and labelers of a project",
        description="Print the counts of tasks, answers and labelers (JSON).",
    )
    status.add_argument("db", type=Path, help="the project file")
    return parser


def run(args: argparse.Namespace) -> None:
    from lit_rlhf.label import db

    if args.command == "create":
        from lit_rlhf.label.project import create_project

        sampling = {
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "device": args.device,
        }
        made = create_project(
            args.db,
            args.prompts,
            args.completions,
            args.policy,
            args.demonstrations,
            args.k,
            args.seed,
            args.overlap,
            args.overlap_labelers,
            args.max_prompts,
            sampling,
        )
        print(
            f"created {args.db}: {made['demonstration']} demonstration and {made['ranking']} ranking tasks "
            f"({made['overlap']} of them overlap tasks for agreement)"
        )
    elif args.command == "labeler":
        conn = db.connect(args.db)
        try:
            if args.action == "add":
                base = args.url if args.url.endswith("/") else args.url + "/"
                for name in args.names:
                    token = db.add_labeler(conn, name)
                    print(f"{name}\t{token}\t{base}#token={token}")
            else:
                db.revoke_labeler(conn, args.name)
                print(f"revoked {args.name}")
        finally:
            conn.close()
    elif args.command == "serve":
        from lit_rlhf.label.server import serve

        if not args.db.exists():
            raise FileNotFoundError(f"{args.db}: no labeling project here (create one with `lit-rlhf label create`)")
        serve(args.db, args.host, args.port, args.lease_minutes * 60, tuple(args.allowed_host))
    elif args.command == "export":
        from lit_rlhf.label.export import export_project

        written = export_project(args.db, args.out)
        print(", ".join(f"{n} {stem}" for stem, n in written.items()) + f" written to {args.out}/")
    elif args.command == "agreement":
        from lit_rlhf.label.agreement import agreement, as_json, project_rankings, table

        rows = agreement(project_rankings(args.db), args.n_boot, args.seed)
        print(table(rows))
        if args.json is not None:
            args.json.write_text(json.dumps(as_json(rows), indent=2) + "\n")
    elif args.command == "status":
        conn = db.connect(args.db, readonly=True)
        try:
            print(json.dumps(db.counts(conn), indent=2))
        finally:
            conn.close()


def main(argv: list[str] | None = None) -> None:
    """Run ``lit-rlhf label`` on ``argv``; a problem a person can fix prints one line and exits 2."""
    from lit_rlhf.data.records import DataError

    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (DataError, ValueError, FileNotFoundError, FileExistsError, sqlite3.DatabaseError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
