"""Every shipped stage config, as a user runs it: its ``--print_config`` output trains two steps through ``-c`` under
``ddp`` and under ``fsdp2`` on two CPU processes, the config's own callbacks included, and exports.

The other multi-process tests use configs of their own; these are the files the README hands out. Each config runs
as shipped, in a scratch working directory so its ``runs/...`` paths land there, in the order the configs name each
other's exports (``runs/sft-tiny/hf`` feeds the reward model, DPO and PPO). Only the length changes (two steps or
two RL iterations), and the world's exact-match callback reads 16 held-out tasks instead of 300, edited inside the
printed file's ``world:`` section, where the callback lives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SHARED_DATA, run_cli

TWO_STEPS = ["--trainer.max_steps=2"]
TWO_ITERATIONS = ["--trainer.limit_train_batches=2"]  # one step is one RL iteration
HH_TRAIN = "hh_rlhf_helpful_base_test_tail_1854.jsonl"
HH_VAL = "hh_rlhf_helpful_base_test_500.jsonl"

# (config, the length flags, the export it writes) in the order the configs read each other's exports
SHIPPED = [
    ("configs/pretrain/tiny.yaml", TWO_STEPS, "runs/pretrain-tiny/hf"),
    ("configs/sft/tiny.yaml", TWO_STEPS, "runs/sft-tiny/hf"),
    ("configs/rm/tiny.yaml", TWO_STEPS, "runs/rm-tiny/hf"),
    ("configs/dpo/tiny.yaml", TWO_STEPS, "runs/dpo-tiny/hf"),
    ("configs/ppo/tiny.yaml", TWO_ITERATIONS, "runs/ppo-tiny/hf"),
    ("configs/ppo_ptx/tiny.yaml", TWO_ITERATIONS, "runs/ppo-ptx-tiny/hf"),
    ("configs/rloo/tiny.yaml", TWO_ITERATIONS, "runs/rloo-tiny/hf"),
    ("configs/grpo/tiny.yaml", TWO_ITERATIONS, "runs/grpo-tiny/hf"),
    ("configs/rm/hh_rlhf_tiny.yaml", TWO_STEPS, "runs/rm-hh-tiny/hf"),
]


def test_every_shipped_fit_config_is_listed():
    """A new stage config joins SHIPPED (or this test says which one was forgotten)."""
    subcommand_folders = {"pipeline", "evaluate", "overoptimization"}  # not `fit` configs
    shipped = {str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")}
    fit_configs = {c for c in shipped if Path(c).parts[1] not in subcommand_folders}
    assert fit_configs == {config for config, _, _ in SHIPPED}


def _shrink_callbacks(node) -> None:
    """Every ExactMatchCallback under ``node`` reads 16 held-out tasks."""
    if isinstance(node, dict):
        if str(node.get("class_path", "")).endswith("ExactMatchCallback"):
            node["init_args"]["max_examples"] = 16
        for value in node.values():
            _shrink_callbacks(value)
    elif isinstance(node, list):
        for value in node:
            _shrink_callbacks(value)


def _printed_configs(tmp_path, monkeypatch) -> list[tuple[str, Path, list[str], str]]:
    """Each shipped config's --print_config output, written to a file: (config, printed file, flags, export)."""
    monkeypatch.chdir(tmp_path)
    out = []
    for config, length, export in SHIPPED:
        extra = []
        if config.endswith("hh_rlhf_tiny.yaml"):
            if not (SHARED_DATA / HH_TRAIN).exists():
                continue  # a user's clone has no ../shared: the other configs still run
            # the config names ../shared relative to the repository root; the scratch directory is elsewhere
            extra = [f"--data.train_files={SHARED_DATA / HH_TRAIN}", f"--data.val_files={SHARED_DATA / HH_VAL}"]
        printed = yaml.safe_load(run_cli(["fit", "-c", str(REPO / config), "--print_config"]))
        _shrink_callbacks(printed.get("world"))
        path = tmp_path / "printed" / (config.replace("/", "_"))
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(printed, sort_keys=False))
        out.append((config, path, length + extra, export))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_shipped_configs_train_and_export_on_two_processes(tmp_path, monkeypatch, strategy):
    printed = _printed_configs(tmp_path, monkeypatch)
    work = tmp_path / strategy
    work.mkdir()
    jobs = [
        {
            "name": config,
            "cwd": str(work),
            "args": ["fit", "-c", str(path), "--trainer.accelerator=cpu", "--trainer.devices=2",
                     f"--trainer.strategy={strategy}", "--trainer.enable_progress_bar=false", *flags],
        }  # fmt: skip
        for config, path, flags, _ in printed
    ]
    jobs_file = tmp_path / f"jobs-{strategy}.json"
    jobs_file.write_text(json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "shipped_configs_driver.py"), str(jobs_file)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=work)
    results_file = Path(str(jobs_file) + ".results")
    results = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    failed = [r for r in results if not r["ok"]]
    assert proc.returncode == 0 and not failed, (failed, proc.stderr[-4000:])
    assert [r["name"] for r in results] == [config for config, *_ in printed]

    from transformers import AutoModelForCausalLM

    from lit_rlhf.models import read_export_metadata

    for config, _, _, export in printed:
        meta = read_export_metadata(work / export)
        assert meta is not None, f"{config}: no finished export in {export}"
        assert (work / export / "model.safetensors").is_file() and (work / export / "config.json").is_file()
    # the policies load in plain transformers, as the next user of the export does
    for export in ("runs/sft-tiny/hf", "runs/ppo-tiny/hf", "runs/grpo-tiny/hf"):
        assert AutoModelForCausalLM.from_pretrained(work / export).config.n_layer == 4
    assert "held-out exact match" in proc.stdout + proc.stderr  # SFT's callback ran, on sharded weights too
