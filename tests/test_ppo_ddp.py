"""PPO on two CPU processes (DDP and FSDP2) trains as one process on the same global batch.

Both runs see the same global batch of 8 prompts (1 x 8 or 2 x 4, one seeded permutation dealt in strides) and
sample each response from its own seeded stream, so the responses are identical; rollout statistics and
advantage whitening are reduced over both ranks, and each minibatch's loss is divided by the global token count
(``PPOModule.minibatch_normaliser``), so one optimizer step sees the same gradient. What differs is float rounding:
each rank left-pads its prompts to its own longest, micro-batches hold other episodes, and reductions add in
another order. All four models run in float64 (``dtype``), and the tolerances are the bounds of tests/test_ddp.py
on what that order can change. The rollout statistics are Python floats that Lightning logs as float32, so they
agree to within float32's rounding too: 2 units in the last place (two float64 values closer than one round to
float32 values at most one apart).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import reverse_records, write_jsonl
from tests.test_ppo_module import build_dirs
from tests.tolerances import assert_weights_close, loss_tolerance, n_weights, weight_tolerance

ROLLOUT_STATS = ["ppo/score_mean", "ppo/score_std", "ppo/kl", "ppo/entropy", "ppo/response_length",
                 "ppo/eos_rate", "ppo/reward_mean", "ppo/explained_variance"]  # fmt: skip
LR = 1e-3  # the configs' learning rate (no warmup)
FLOAT32_LOGGED = 2.0**-22  # relative: 2 float32 units in the last place, Lightning's rounding of a logged float


def _first_row(root) -> dict[str, float]:
    (path,) = list(root.rglob("metrics.csv"))
    rows = [r for r in csv.DictReader(open(path)) if r.get("ppo/score_mean")]
    return {k: float(rows[0][k]) for k in ROLLOUT_STATS}


@pytest.fixture(scope="module")
def ppo_setup(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("ppo_ddp")
    sft, rm = build_dirs(root / "models", tokenizer_dir)
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": r["prompt"]} for r in reverse_records(32, seed=4)])
    corpus = write_jsonl(root / "corpus.jsonl", [{"text": f"{r['prompt']} is {r['completion']}."}
                                                 for r in reverse_records(64, seed=2)])  # fmt: skip
    return sft, rm, prompts, corpus


CASES = {  # name: (strategy, PPO options)
    "ddp": ("ddp", {}),
    "fsdp2": ("fsdp2", {}),
    # the shared value head, frozen models replicated, EMA export and PPO-ptx (two forwards before one backward)
    "fsdp2-shared-ptx-ema": (
        "fsdp2",
        {
            "value_model": "shared",
            "shard_frozen": False,
            "ema_decay": 0.5,
            "ptx_coef": 0.5,
            "ptx_examples_per_episode": 1.0,
            "max_grad_norm": 0.05,
        },
    ),  # fmt: skip
}


def ppo_config(path, setup, **options) -> str:
    sft, rm, prompts, corpus = setup
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "limit_train_batches": 1, "log_every_n_steps": 1,
                    "limit_val_batches": 0, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                    "enable_checkpointing": False},
        "model": {"class_path": "lit_rlhf.ppo.module.PPOModule",
                  "init_args": {"model_name_or_path": str(sft), "reward_model_path": str(rm), "max_new_tokens": 6,
                                "ppo_epochs": 2, "learning_rate": LR, "warmup": 0,
                                "log_samples_every_n_iterations": 0, **options}},
        "data": {"class_path": "lit_rlhf.data.prompts.PromptDataModule",
                 "init_args": {"train_files": str(prompts), "val_files": str(prompts), "seed": 0,
                               "pretraining_files": str(corpus)}},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def run_ppo(config: str, root, devices: int, batch_size: int, strategy: str = "auto", *flags: str) -> None:
    """One minibatch per rollout of ``batch_size`` prompts per process, two micro-batches; CSV metrics in root."""
    cmd = [
        sys.executable, "-m", "lit_rlhf.cli", "fit", "-c", config,
        f"--trainer.devices={devices}", f"--trainer.strategy={strategy}",
        f"--data.batch_size={batch_size}", f"--model.minibatch_size={batch_size}",
        f"--model.micro_batch_size={batch_size // 2}", f"--trainer.default_root_dir={root}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={root}", *flags,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_train_as_one_process(tmp_path, ppo_setup, case):
    strategy, options = CASES[case]
    sft = ppo_setup[0]
    config = ppo_config(tmp_path / "ppo.yaml", ppo_setup, dtype="float64", **options)
    run_ppo(config, tmp_path / "one", 1, 8)
    run_ppo(config, tmp_path / "two", 2, 4, strategy)
    one, two = _first_row(tmp_path / "one"), _first_row(tmp_path / "two")
    # statistics of the rollout, before any step: float64 round-off only, then float32 logging
    assert two == pytest.approx(one, rel=FLOAT32_LOGGED, abs=loss_tolerance(steps=0, lr=LR, n_params=0))  # 1.1e-10
    assert one["ppo/response_length"] > 1  # a real rollout, not an empty one
    w1 = load_file(tmp_path / "one" / "hf" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "hf" / "model.safetensors")
    w0 = load_file(sft / "model.safetensors")
    assert set(w1) == set(w2) == set(w0), "one Hugging Face directory with the policy's weights, nothing else"
    assert max(float((w1[k] - w0[k].double()).abs().max()) for k in w0) > 1e-3, "the policy trained"
    # 1 iteration = ppo_epochs (2) x 1 minibatch = 2 AdamW steps; an EMA export is a mean of such weights
    assert_weights_close(w2, w1, atol=weight_tolerance(steps=2, lr=LR))  # 5.8e-6


@pytest.mark.slow
def test_fsdp2_checkpoint_resumes_as_an_unbroken_run(tmp_path, ppo_setup):
    """Two FSDP2 processes: 1 iteration, a sharded checkpoint, 1 more iteration resumed from it, against 2 unbroken
    iterations (same processes): the same rollout statistics and exported weights, EMA included. The same processes
    add in the same order, so the runs should agree exactly; the float64 bounds of tests/test_ddp.py allow for order."""
    config = ppo_config(tmp_path / "ppo.yaml", ppo_setup, ema_decay=0.5, dtype="float64")
    fsdp2 = (2, 4, "fsdp2", "--trainer.enable_checkpointing=true")  # one iteration an epoch (limit_train_batches=1)
    run_ppo(config, tmp_path / "unbroken", *fsdp2, "--trainer.max_epochs=2")
    run_ppo(config, tmp_path / "first", *fsdp2, "--trainer.max_epochs=1")
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"  # the stable place --ckpt_path=last reads
    assert checkpoint.is_dir() and len(list(checkpoint.glob("*.distcp"))) == 2, "one shard per process"
    run_ppo(config, tmp_path / "resumed", *fsdp2, "--trainer.max_epochs=2", f"--ckpt_path={checkpoint}")

    def rows(root):
        (path,) = list(root.rglob("metrics.csv"))
        return [{k: float(r[k]) for k in ROLLOUT_STATS} for r in csv.DictReader(open(path)) if r.get("ppo/score_mean")]

    unbroken, resumed = rows(tmp_path / "unbroken"), rows(tmp_path / "resumed")
    assert len(unbroken) == 2 and len(resumed) == 1
    w_unbroken = load_file(tmp_path / "unbroken" / "hf" / "model.safetensors")
    w_resumed = load_file(tmp_path / "resumed" / "hf" / "model.safetensors")
    # iteration 2's rollout follows 2 AdamW steps of the policy and of its value model (as large: 2 x its weights)
    stats_tol = loss_tolerance(steps=2, lr=LR, n_params=2 * n_weights(w_unbroken))  # 2.5e-8
    assert resumed[0] == pytest.approx(unbroken[1], rel=FLOAT32_LOGGED, abs=stats_tol)
    assert_weights_close(w_resumed, w_unbroken, atol=weight_tolerance(steps=4, lr=LR))  # 2 iterations: 1.2e-5


@pytest.mark.slow
def test_fsdp2_with_bf16_lora_and_checkpointing_trains_the_adapters(tmp_path, ppo_setup):
    """PPO-ptx under FSDP2 with bf16-mixed, LoRA (the reference is the policy without adapters) and gradient
    checkpointing, frozen reward model replicated in bf16: it runs, changes only what LoRA can change, and exports one
    plain Hugging Face directory with the adapters merged."""
    from transformers import AutoModelForCausalLM

    sft = ppo_setup[0]
    config = ppo_config(tmp_path / "ppo.yaml", ppo_setup, lora={"r": 4}, gradient_checkpointing=True,
                        shard_frozen=False, frozen_dtype="bfloat16", ptx_coef=0.5, ptx_examples_per_episode=1.0)  # fmt: skip
    run_ppo(config, tmp_path / "run", 2, 4, "fsdp2", "--trainer.precision=bf16-mixed")
    stats = _first_row(tmp_path / "run")
    assert all(v == v for v in stats.values()) and stats["ppo/response_length"] > 1
    w0 = load_file(sft / "model.safetensors")
    w = load_file(tmp_path / "run" / "hf" / "model.safetensors")
    assert set(w) == set(w0) and not any("lora" in n for n in w), "adapters merged into plain weights"
    changed = {n for n in w0 if not torch.equal(w[n], w0[n])}
    assert changed and all(k in n for n in changed for k in ("h.",)), changed  # only the blocks' weights
    assert not any(k in n for n in changed for k in ("ln_", "wte", "wpe", "bias")), changed  # not what LoRA skips
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf")
