"""Weights & Biases logging that never waits on a network it does not have."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from lightning import LightningModule
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)


def wandb_has_credentials() -> bool:
    """True when an API key is configured (``WANDB_API_KEY`` or a ``wandb login`` entry in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class WandbLogger(_WandbLogger):
    """Lightning's WandbLogger, offline unless W&B credentials are configured.

    Offline runs are written under ``<save_dir>/wandb/offline-run-*``; upload them later with ``wandb sync``. A run
    that fails before its first training step leaves nothing: the directories are made when the run starts (Lightning
    starts it just before the DataModule's ``setup``), and a failure before ``training_started`` deletes what this
    logger made (:meth:`discard`).

    Args:
        project: W&B project.
        name: Display name of the run.
        save_dir: Where W&B writes its files; the CLI sets it to ``--trainer.default_root_dir`` when unset.
        offline: True or False forces the mode; None (default) is offline unless an API key is configured or
            ``WANDB_MODE`` says otherwise.
        log_model: Upload checkpoints as W&B artifacts (``True``, ``"all"``) or not.
        group: W&B group, e.g. the pipeline run a stage belongs to.
        tags: W&B tags.
    """

    def __init__(
        self,
        project: str = "lit-rlhf",
        name: str | None = None,
        save_dir: str | None = None,
        offline: bool | None = None,
        log_model: bool | str = False,
        group: str | None = None,
        tags: list[str] | None = None,
    ) -> None:
        if offline is None:
            mode = os.environ.get("WANDB_MODE")
            offline = mode in ("offline", "dryrun") or (mode != "online" and not wandb_has_credentials())
        save_dir = save_dir or "."
        os.environ.setdefault("WANDB_SILENT", "true")
        super().__init__(
            project=project,
            name=name,
            save_dir=save_dir,
            offline=offline,
            log_model=log_model,
            group=group,
            tags=tags,
        )
        # Set when training is about to start (StageModule.on_train_start) or metrics are logged: from then on a
        # failed run keeps its directory.
        self.training_started = False
        self._made: Path | None = None  # the outermost directory this logger created, if any
        self._owns_run = False

    @property
    def experiment(self) -> Any:
        if self._experiment is None and rank_zero_only.rank == 0:
            import wandb

            self._made = _make_dirs(Path(self.save_dir) / "wandb")  # wandb writes to a temp dir when it is missing
            self._owns_run = wandb.run is None  # otherwise Lightning reuses the run in progress, not ours to delete
        return super().experiment

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.training_started = True
        super().log_metrics(metrics, step)

    def finalize(self, status: str) -> None:
        if status == "failed" and not self.training_started:
            self.discard()
            return
        super().finalize(status)

    @rank_zero_only
    def discard(self) -> None:
        """Finish the run and delete what this logger wrote: the run's directory, and any directory it made."""
        run, self._experiment = self._experiment, None
        if run is None or not self._owns_run:
            return
        wandb_dir = Path(self.save_dir) / "wandb"
        run_dir = Path(run.dir).parent  # <save_dir>/wandb/offline-run-*/files -> offline-run-*
        run.finish(exit_code=1)
        if self._made is not None:
            shutil.rmtree(self._made, ignore_errors=True)
        elif run_dir.parent.resolve() == wandb_dir.resolve():  # earlier runs share wandb/: delete only this one
            shutil.rmtree(run_dir, ignore_errors=True)
            for link in wandb_dir.iterdir():  # latest-run, debug.log, debug-internal.log pointed into the run
                if link.is_symlink() and not link.exists():
                    link.unlink()


def _make_dirs(path: Path) -> Path | None:
    """``mkdir -p path``; the outermost directory it created, or None when ``path`` existed."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    return missing[-1] if missing else None


def samples_file(root: str | Path, key: str) -> Path:
    """Where :func:`log_table` appends a table without W&B: ``<root>/samples/<key, / as _>.jsonl``."""
    return Path(root) / "samples" / (key.replace("/", "_") + ".jsonl")


def log_table(module: LightningModule, key: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Log a table to W&B when the logger is W&B; otherwise append its rows to a JSONL file under the run's root
    (:func:`samples_file`) and log one line saying where: model text is many lines, and 10 samples printed as they
    are buried the run's warnings under a hundred lines of dialogue."""
    for logger in module.loggers:
        if isinstance(logger, _WandbLogger):
            logger.log_text(key=key, columns=columns, data=rows)
            return
    if not module.trainer.is_global_zero:
        return
    path = samples_file(module.trainer.default_root_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(dict(zip(columns, row, strict=True)), ensure_ascii=False, default=str) + "\n")
    log.info("%s: %d rows appended to %s", key, len(rows), path)
