"""Weights & Biases logging that never waits on a network it does not have."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lightning import LightningModule
from lightning.pytorch.loggers import WandbLogger as _WandbLogger

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

    Offline runs are written under ``<save_dir>/wandb/offline-run-*``; upload them later with ``wandb sync``.

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
        Path(save_dir).mkdir(parents=True, exist_ok=True)
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


def log_table(module: LightningModule, key: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Log a table to W&B when the logger is W&B; otherwise write it to the Python log."""
    for logger in module.loggers:
        if isinstance(logger, _WandbLogger):
            logger.log_text(key=key, columns=columns, data=rows)
            return
    for row in rows:
        log.info("%s %s", key, " | ".join(str(c) for c in row))
