"""Run several ``lit-rlhf`` commands one after another in the processes torchrun started (not a test module).

``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/shipped_configs_driver.py JOBS.json``:
each rank runs every job's argument list through :func:`lit_rlhf.cli.main` in order, in the job's working
directory. The process group Lightning opens for the first job stays up for the next (it is destroyed at exit),
so the interpreter, torch and transformers start once for all jobs instead of twice per job. Rank 0 appends one
JSON line per finished job to ``JOBS.json.results``: the job's name, ``ok`` and the error's last line. The first
failure stops the run: the other rank may be waiting in a collective for it.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path


def main(jobs_file: str) -> int:
    from lit_rlhf.cli import main as cli_main

    jobs = json.loads(Path(jobs_file).read_text())
    rank = int(os.environ.get("RANK", "0"))
    results = Path(jobs_file + ".results")
    for job in jobs:
        os.chdir(job["cwd"])
        error = None
        try:
            cli_main(job["args"])
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                error = f"exit {exit_.code}"
        except Exception:  # noqa: BLE001 - reported to the test, which fails on it
            error = traceback.format_exc()[-3000:]
        finally:
            if "wandb" in sys.modules:  # each job opens its own (offline) run
                import wandb

                if wandb.run is not None:
                    wandb.finish()
        if rank == 0:
            with open(results, "a", encoding="utf-8") as f:
                f.write(json.dumps({"name": job["name"], "ok": error is None, "error": error}) + "\n")
        if error is not None:
            print(f"[rank {rank}] {job['name']} failed: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
