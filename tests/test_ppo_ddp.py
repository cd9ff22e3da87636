"""DDP on CPU: two processes produce the first PPO iteration's rollout statistics of one process.

Both runs see the same global batch of 8 prompts (1 x 8 or 2 x 4, one seeded permutation dealt in strides) and
sample each response from its own seeded stream, so the responses are identical; the statistics are reduced over
both ranks. What differs is float rounding from the prompts' left padding (each rank pads to its own longest
prompt) and reduction order: tolerance 1e-4 absolute on every first-iteration statistic.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import reverse_records, write_jsonl
from tests.test_ppo_module import build_dirs

ROLLOUT_STATS = ["ppo/score_mean", "ppo/score_std", "ppo/kl", "ppo/entropy", "ppo/response_length",
                 "ppo/eos_rate", "ppo/reward_mean", "ppo/explained_variance"]  # fmt: skip


def _first_row(root) -> dict[str, float]:
    (path,) = list(root.rglob("metrics.csv"))
    rows = [r for r in csv.DictReader(open(path)) if r.get("ppo/score_mean")]
    return {k: float(rows[0][k]) for k in ROLLOUT_STATS}


def test_two_ddp_processes_match_one_process(tmp_path, tokenizer_dir):
    sft, rm = build_dirs(tmp_path / "models", tokenizer_dir)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in reverse_records(32, seed=4)])
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "limit_train_batches": 1, "log_every_n_steps": 1,
                    "limit_val_batches": 0, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                    "enable_checkpointing": False},
        "model": {"class_path": "lit_rlhf.ppo.module.PPOModule",
                  "init_args": {"model_name_or_path": str(sft), "reward_model_path": str(rm), "max_new_tokens": 6,
                                "minibatch_size": 4, "micro_batch_size": 2, "ppo_epochs": 1,
                                "log_samples_every_n_iterations": 0}},
        "data": {"class_path": "lit_rlhf.data.prompts.PromptDataModule",
                 "init_args": {"train_files": str(prompts), "val_files": str(prompts), "seed": 0}},
    }  # fmt: skip
    config = tmp_path / "ppo.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(name: str, devices: int, batch_size: int) -> dict[str, float]:
        root = tmp_path / name
        cmd = [
            sys.executable, "-m", "lit_rlhf.cli", "fit", "-c", str(config),
            f"--trainer.devices={devices}", f"--trainer.strategy={'ddp' if devices > 1 else 'auto'}",
            f"--data.batch_size={batch_size}", f"--trainer.default_root_dir={root}",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={root}",
        ]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return _first_row(root)

    one = run("one", devices=1, batch_size=8)
    two = run("two", devices=2, batch_size=4)
    assert two == pytest.approx(one, abs=1e-4)
    assert one["ppo/response_length"] > 1  # a real rollout, not an empty one
