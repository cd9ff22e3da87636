"""A run's log keeps what matters: Lightning's known-benign messages are silenced where they arise
(:mod:`lit_rlhf.quiet`), every other warning still shows, and sample tables without W&B go to a file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import yaml
from torch import nn

from lit_rlhf.models import freeze
from lit_rlhf.quiet import unfrozen_eval_modules
from tests.conftest import REPO, reverse_records, write_jsonl
from tests.test_resume import stage_config

BENIGN = (
    "💡 Tip",  # Lightning's advice to install its logging and model products
    "in eval mode at the start of training",  # PPO's frozen reference and reward model
    "Using ModelCheckpoint with manual optimization",  # PPO checkpoints after its iteration by design
    "No seed found",  # the pipeline seeds every stage
)


def lit_rlhf(args: list[str], cwd=REPO) -> str:
    """``lit-rlhf ARGS`` in a fresh process, as a user runs it: its stdout and stderr together."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "lit_rlhf.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_a_ppo_run_logs_no_benign_message_but_keeps_the_dropped_record_warning(tmp_path, tokenizer_dir):
    config = stage_config(tmp_path, "ppo", tokenizer_dir)
    prompts = [{"prompt": r["prompt"]} for r in reverse_records(40, seed=3)]
    files = write_jsonl(tmp_path / "prompts_with_a_bad_one.jsonl", [*prompts[:20], {"answer": "no prompt"}, *prompts])
    config["data"]["init_args"] |= {"train_files": str(files), "on_bad_record": "skip"}
    config["model"]["init_args"]["log_samples_every_n_iterations"] = 1
    config["trainer"] |= {"limit_train_batches": 2}  # checkpoint_every_n_steps: 2 (the manual-optimisation note)
    path = tmp_path / "ppo.yaml"
    path.write_text(yaml.safe_dump(config))
    out = lit_rlhf(["fit", "-c", str(path), f"--trainer.default_root_dir={tmp_path / 'run'}"])
    for message in BENIGN:
        assert message not in out, message
    assert "skipped 1 bad training record(s)" in out  # a warning a user must see still shows
    # The samples (model text, many lines) went to a file, one line in the log saying where.
    samples = tmp_path / "run" / "samples" / "ppo_samples.jsonl"
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 2 * 4 and set(rows[0]) == {"iteration", "prompt", "response", "score"}
    assert f"ppo/samples: 4 rows appended to {samples}" in out
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_the_pipeline_command_prints_no_seed_message(tmp_path):
    sft = write_jsonl(tmp_path / "sft.jsonl", reverse_records(30))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say {i}"} for i in range(30)])
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": f"Q{i}", "chosen": "a", "rejected": "b"} for i in range(8)]
    )
    flags = ["--data.sft_files", str(sft), "--data.preference_files", str(pairs), "--data.prompt_files", str(prompts)]
    out = lit_rlhf(["pipeline", "-c", "configs/pipeline/own_data.yaml", "--runs_dir", str(tmp_path), *flags,
                    "--until", "data"])  # fmt: skip
    assert "the data split" in out and "No seed found" not in out and "💡" not in out


def test_only_frozen_models_are_left_out_of_the_eval_mode_check():
    model = nn.ModuleDict({"policy": nn.Linear(2, 2), "reference": freeze(nn.Sequential(nn.Linear(2, 2)))})
    assert unfrozen_eval_modules(model) == []
    model["policy"].eval()  # eval mode that nobody froze: still named
    assert unfrozen_eval_modules(model) == ["policy"]


def test_a_module_left_in_eval_mode_by_mistake_still_gets_lightnings_warning(tmp_path):
    import lightning as L
    import torch

    from lit_rlhf.trainer import Trainer

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer, self.reference = nn.Linear(2, 1), freeze(nn.Linear(2, 1))
            self.layer.eval()  # the mistake

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.layer.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(2, 2)), batch_size=2)
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Module(), data)
    messages = [str(w.message) for w in caught if "in eval mode" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("Found 1 module(s) in eval mode"), messages
    assert "layer" in messages[0] and "reference" not in messages[0]


@pytest.mark.parametrize("frozen", [True, False])
def test_freeze_marks_the_model(frozen):
    model = nn.Linear(1, 1)
    if frozen:
        freeze(model)
    assert getattr(model, "_lit_rlhf_frozen", False) is frozen
