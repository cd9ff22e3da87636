"""Checkpoints where a resume finds them: ``<default_root_dir>/checkpoints/last.ckpt``, mid-epoch every N steps, and
``--ckpt_path=last`` resuming it for every stage. A run killed with SIGKILL mid-epoch and resumed ends with the weights
of an unbroken run. Also: a validation interval longer than the epoch validates at epoch end instead of stopping."""

from __future__ import annotations

import os
import subprocess
import sys

import lightning as L
import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import TINY_GPT2, reverse_records, write_jsonl
from tests.tolerances import assert_weights_close, weight_tolerance


class KillAtStep(L.Callback):
    """SIGKILL this process at the end of the optimizer step ``step``: no cleanup, no final checkpoint, as a crash."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), 9)


def stage_config(tmp_path, stage: str, tokenizer_dir) -> dict:
    """A float64 config of ``stage`` (8 optimizer steps, one epoch holds more) on files written here."""
    records = reverse_records(96, seed=3)
    common = {"dtype": "float64", "learning_rate": 1e-3, "warmup": 0, "dropout": 0.0}  # masks are not in checkpoints
    if stage in ("ppo", "rloo"):
        from tests.test_ppo_module import build_dirs

        sft, rm = build_dirs(tmp_path / "models", tokenizer_dir)
        files = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in records])
        model = {
            "class_path": "lit_rlhf.ppo.module.PPOModule",
            "init_args": {
                "model_name_or_path": str(sft),
                "reward_model_path": str(rm),
                "max_new_tokens": 6,
                "minibatch_size": 4,
                "micro_batch_size": 2,
                "ppo_epochs": 1,
                "kl_target": 1.0,
                "log_samples_every_n_iterations": 0,
                **{k: v for k, v in common.items() if k != "dropout"},  # PPO's dropout is always 0
            },
        }  # one optimizer step an iteration
        if stage == "rloo":  # 4 prompts x 2 samples, no value model; KL in the reward, so the rollout's log-probs kept
            # no_eos_score=None: the random policy never stops, and k equal penalties would give it no gradient at all
            model["init_args"].update(
                advantage_estimator="rloo", samples_per_prompt=2, minibatch_size=8, no_eos_score=None
            )
        data = {
            "class_path": "lit_rlhf.data.prompts.PromptDataModule",
            "init_args": {"train_files": str(files), "batch_size": 4},
        }
    else:  # SFT, the RM or DPO: a scratch GPT-2 on the demonstrations or on 3-way rankings of them
        scratch = {"model_name_or_path": "scratch:gpt2", "tokenizer_name_or_path": str(tokenizer_dir),
                   "model_config": TINY_GPT2, **common}  # fmt: skip
        if stage == "sft":
            rows, module, options, datamodule = records, "sft.SFTModule", {"num_sample_prompts": 0}, "SFTDataModule"
        else:
            rows = [{"prompt": r["prompt"], "completions": ["zz", r["completion"], r["completion"][:-1]],
                     "ranking": [1, 2, 0]} for r in records]  # fmt: skip
            module, options, datamodule = "reward.RewardModule", {"normalize": False}, "PreferenceDataModule"
            if stage.startswith("dpo"):  # the frozen reference is never checkpointed: loaded again on resume
                module, options = "dpo.DPOModule", {"precompute_reference": stage == "dpo_precomputed"}
        files = write_jsonl(tmp_path / f"{stage}.jsonl", rows)
        model = {"class_path": f"lit_rlhf.{module}", "init_args": {**scratch, **options}}
        data = {"class_path": f"lit_rlhf.data.modules.{datamodule}",
                "init_args": {"train_files": str(files), "val_files": str(files), "batch_size": 4}}  # fmt: skip
    steps = {"limit_train_batches": 8, "max_epochs": 1} if stage in ("ppo", "rloo") else {"max_steps": 8}
    trainer = {"accelerator": "cpu", **steps, "limit_val_batches": 0, "num_sanity_val_steps": 0,
               "enable_progress_bar": False, "logger": False, "checkpoint_every_n_steps": 2}  # fmt: skip
    return {"seed_everything": 0, "trainer": trainer, "model": model, "data": data}


def run_cli(config: dict, root, *flags: str, expect_kill: bool = False) -> None:
    path = root.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "lit_rlhf.cli", "fit", "-c", str(path), f"--trainer.default_root_dir={root}", *flags]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    if expect_kill:
        assert proc.returncode == -9, proc.stderr[-3000:]
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "rm", "ppo", "rloo", "dpo", "dpo_precomputed"])
def test_a_run_killed_mid_epoch_resumes_from_last_to_the_weights_of_an_unbroken_run(tmp_path, tokenizer_dir, stage):
    config = stage_config(tmp_path, stage, tokenizer_dir)
    run_cli(config, tmp_path / "unbroken")
    killed = {**config, "trainer": {**config["trainer"], "callbacks": [
        {"class_path": "tests.test_resume.KillAtStep", "init_args": {"step": 5}}]}}  # fmt: skip
    run_cli(killed, tmp_path / "resumed", expect_kill=True)
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert last.is_file(), "the mid-epoch checkpoint of step 4 is at a stable place"
    assert not (tmp_path / "resumed" / "hf").exists(), "a killed run exports nothing"
    if stage.startswith("dpo"):
        import torch

        saved = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
        assert not [k for k in saved if k.startswith("ref_model.")], "the reference is not in the checkpoint"
    run_cli(config, tmp_path / "resumed", "--ckpt_path=last")
    # Same process count and batches in the same order, so the runs add in the same order; the float64 bound of
    # tests/tolerances.py (8 steps at lr 1e-3) is far under what a restarted epoch or optimiser would change (~lr).
    unbroken = load_file(tmp_path / "unbroken" / "hf" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "hf" / "model.safetensors")
    assert_weights_close(resumed, unbroken, weight_tolerance(8, 1e-3))
    # and the resume mattered: a run of only the last 4 steps from scratch ends elsewhere
    short_steps = {"limit_train_batches": 4} if stage in ("ppo", "rloo") else {"max_steps": 4}
    run_cli({**config, "trainer": {**config["trainer"], **short_steps}}, tmp_path / "short")
    short = load_file(tmp_path / "short" / "hf" / "model.safetensors")
    assert max(float((short[k] - unbroken[k]).abs().max()) for k in unbroken) > 1e-4


def test_checkpoints_land_in_the_root_and_last_is_found(tmp_path, tokenizer_dir):
    config = stage_config(tmp_path, "sft", tokenizer_dir)
    config["trainer"]["max_steps"] = 4
    run_cli(config, tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert "last.ckpt" in names and any(n.startswith("epoch=0-step=4") for n in names), names


def test_a_validation_interval_longer_than_the_epoch_validates_at_its_end(tmp_path, tokenizer_dir, caplog):
    from lit_rlhf.data.modules import SFTDataModule
    from lit_rlhf.sft import SFTModule

    files = write_jsonl(tmp_path / "sft.jsonl", reverse_records(16, seed=1))
    data = SFTDataModule(train_files=str(files), val_files=str(files), tokenizer_name_or_path=str(tokenizer_dir),
                         batch_size=8)  # fmt: skip
    module = SFTModule(model_name_or_path="scratch:gpt2", tokenizer_name_or_path=str(tokenizer_dir),
                       model_config=TINY_GPT2, num_sample_prompts=0)  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        val_check_interval=600,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data)  # 2 batches an epoch: Lightning alone stops with a ValueError
    assert "val/loss" in trainer.callback_metrics, "validated at the end of the epoch"
    assert "longer than an epoch" in caplog.text
