"""DDP and FSDP2 on CPU: two processes train exactly as one process on the same global batch (SFT and RM).

The loss is normalised by the tokens (SFT) or prompts (RM) of the global batch, so in exact arithmetic the two runs
are the same; they differ only in the order sums are added. Both run in float64 (``--model.dtype=float64``), and
every tolerance is the bound below on what that order can change, never a value one machine printed.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import TINY_GPT2, reverse_records, write_jsonl
from tests.tolerances import (
    assert_reward_models_close,
    assert_weights_close,
    loss_tolerance,
    n_weights,
    weight_tolerance,
)


def _losses(metrics_dir) -> list[float]:
    (path,) = list(metrics_dir.rglob("metrics.csv"))
    rows = list(csv.DictReader(open(path)))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_match_one_process(tmp_path, tokenizer_dir, strategy):
    train = write_jsonl(tmp_path / "train.jsonl", reverse_records(64, seed=3))
    steps, lr = 4, 1e-3
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_steps": steps, "log_every_n_steps": 1, "num_sanity_val_steps": 0,
                    "limit_val_batches": 0, "enable_progress_bar": False, "enable_checkpointing": False},
        "model": {"class_path": "lit_rlhf.sft.SFTModule",
                  "init_args": {"model_name_or_path": "scratch:gpt2", "tokenizer_name_or_path": str(tokenizer_dir),
                                "model_config": TINY_GPT2, "dropout": 0.0, "learning_rate": lr, "warmup": 0,
                                "num_sample_prompts": 0, "dtype": "float64"}},
        "data": {"class_path": "lit_rlhf.data.modules.SFTDataModule",
                 "init_args": {"train_files": str(train), "val_files": str(train)}},
    }  # fmt: skip
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(name: str, devices: int, batch_size: int, strategy: str = "auto") -> None:
        root = tmp_path / name
        cmd = [
            sys.executable, "-m", "lit_rlhf.cli", "fit", "-c", str(config),
            f"--trainer.devices={devices}", f"--trainer.strategy={strategy}",
            f"--data.batch_size={batch_size}", f"--trainer.default_root_dir={root}",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={root}",
        ]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    run("one", devices=1, batch_size=8)
    run("two", devices=2, batch_size=4, strategy=strategy)
    w1 = load_file(tmp_path / "one" / "hf" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "hf" / "model.safetensors")
    assert_weights_close(w2, w1, atol=weight_tolerance(steps, lr))  # 1.2e-5
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == steps
    assert two == pytest.approx(one, rel=0, abs=loss_tolerance(steps, lr, n_weights(w1)))  # 2.5e-8, logged in float64
    assert one[-1] < one[0], "it trained"


def _ranking_file(tmp_path, seed: int):
    """32 prompts, each with three completions ranked: a truncated answer, the answer, then 'zz'."""
    records = []
    for r in reverse_records(32, seed=seed):
        answer = r["completion"]
        records.append({"prompt": r["prompt"], "completions": ["zz", answer, answer[:-1]], "ranking": [1, 2, 0]})
    return write_jsonl(tmp_path / "rank.jsonl", records)


def _fit_one_and_two(tmp_path, model: dict, train, strategy: str, steps: int) -> None:
    """Fit ``model`` on the rankings in one process (8 prompts a step) and in two (4 each) under ``strategy``, into
    ``tmp_path/one`` and ``tmp_path/two``."""
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_steps": steps, "num_sanity_val_steps": 0, "limit_val_batches": 0,
                    "enable_progress_bar": False, "enable_checkpointing": False, "logger": False},
        "model": model,
        "data": {"class_path": "lit_rlhf.data.modules.PreferenceDataModule",
                 "init_args": {"train_files": str(train), "val_files": str(train)}},
    }  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, devices, batch_size, strat in [("one", 1, 8, "auto"), ("two", 2, 4, strategy)]:
        cmd = [sys.executable, "-m", "lit_rlhf.cli", "fit", "-c", str(config), f"--trainer.devices={devices}",
               f"--trainer.strategy={strat}", f"--data.batch_size={batch_size}",
               f"--trainer.default_root_dir={tmp_path / name}"]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_reward_model_two_processes_match_one_process(tmp_path, tokenizer_dir, strategy):
    steps, lr = 3, 1e-3
    model = {"class_path": "lit_rlhf.reward.RewardModule",
             "init_args": {"model_name_or_path": "scratch:gpt2", "tokenizer_name_or_path": str(tokenizer_dir),
                           "model_config": TINY_GPT2, "dropout": 0.0, "learning_rate": lr, "dtype": "float64",
                           "reference_files": str(write_jsonl(tmp_path / "ref.jsonl", reverse_records(8)))}}  # fmt: skip
    _fit_one_and_two(tmp_path, model, _ranking_file(tmp_path, seed=5), strategy, steps)
    w1 = load_file(tmp_path / "one" / "hf" / "model.safetensors")
    tol = weight_tolerance(steps, lr)  # 8.7e-6
    # The ranking loss sees only score differences within a prompt, so the final LayerNorm's bias, read only by the
    # head w, has gradient 0: it drifts by round-off (up to tol) and moves the mean reference score by at most
    # |w|_1 * tol; every other weight moves it as it would a loss.
    mean_tol = float(w1["score.weight"].abs().sum()) * tol + loss_tolerance(steps, lr, n_weights(w1))
    assert_reward_models_close(tmp_path / "one" / "hf", tmp_path / "two" / "hf", dict.fromkeys(w1, tol), mean_tol)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_dpo_two_processes_match_one_process(tmp_path, tokenizer_dir, strategy):
    # DPO's loss is a mean over the batch's prompts, as the RM's: two processes of 4 prompts average their
    # gradients into those of one process of 8. The reference (a frozen copy, sharded too under FSDP2) is read live.
    steps, lr = 3, 1e-3
    model = {"class_path": "lit_rlhf.dpo.DPOModule",
             "init_args": {"model_name_or_path": "scratch:gpt2", "tokenizer_name_or_path": str(tokenizer_dir),
                           "model_config": TINY_GPT2, "learning_rate": lr, "warmup": 0, "dtype": "float64"}}  # fmt: skip
    _fit_one_and_two(tmp_path, model, _ranking_file(tmp_path, seed=7), strategy, steps)
    w1 = load_file(tmp_path / "one" / "hf" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "hf" / "model.safetensors")
    assert_weights_close(w2, w1, atol=weight_tolerance(steps, lr))
