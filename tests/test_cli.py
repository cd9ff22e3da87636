"""The `lit-rlhf` CLI: a stage runs from YAML, --print_config round-trips, --help explains, shipped configs parse."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest
import yaml

from lit_rlhf.cli import main
from lit_rlhf.models import read_export_metadata
from tests.conftest import REPO, TINY_GPT2, reverse_records, run_cli, write_jsonl


def _config(tmp_path: Path, tokenizer_dir: Path, logger=False) -> Path:
    train = write_jsonl(tmp_path / "train.jsonl", reverse_records(32))
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(tmp_path / "run"),
            "max_steps": 3,
            "enable_progress_bar": False,
            "num_sanity_val_steps": 0,
        },
        "model": {
            "class_path": "lit_rlhf.sft.SFTModule",
            "init_args": {
                "model_name_or_path": "scratch:gpt2",
                "tokenizer_name_or_path": str(tokenizer_dir),
                "model_config": TINY_GPT2,
                "num_sample_prompts": 1,
            },
        },
        "data": {
            "class_path": "lit_rlhf.data.modules.SFTDataModule",
            "init_args": {"train_files": str(train), "batch_size": 4, "val_split": 0.25},
        },
    }
    if logger is not None:
        cfg["trainer"]["logger"] = logger
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_fit_from_yaml_exports_and_print_config_round_trips(tmp_path, tokenizer_dir):
    cfg = _config(tmp_path, tokenizer_dir)
    printed = run_cli(["fit", "-c", str(cfg), "--print_config"])
    parsed = yaml.safe_load(printed)
    assert parsed["model"]["init_args"]["model_name_or_path"] == "scratch:gpt2"
    # the tokenizer is given once, on the model, and linked into the data module
    assert parsed["data"]["init_args"].get("tokenizer_name_or_path") in (None, str(tokenizer_dir))
    round_trip = tmp_path / "printed.yaml"
    round_trip.write_text(printed)
    run_cli(["fit", "-c", str(round_trip), "--model.export_dir", str(tmp_path / "exported")])
    meta = read_export_metadata(tmp_path / "exported")
    assert meta is not None and meta["stage"] == "sft" and meta["global_step"] == 3


def test_help_explains_the_options():
    text = run_cli(["fit", "--model.help", "SFTModule"])
    assert "--model.model_name_or_path" in text and "scratch:gpt2" in text
    assert "--model.export_dir" in text and "default_root_dir" in text
    text = run_cli(["fit", "--data.help", "SFTDataModule"])
    assert "--data.train_files" in text and "--data.val_files" in text and "left_truncate" in text
    assert "lit-rlhf" in run_cli(["--help"])


FINE_TUNING = ("model_name_or_path tokenizer_name_or_path model_config export_dir learning_rate weight_decay betas warmup "
               "min_lr_ratio dropout dtype gradient_checkpointing lora lora.help trust_remote_code")  # fmt: skip
RECORDS = (
    "train_files val_files tokenizer_name_or_path world_dir val_split max_length template on_bad_record batch_size "
)
RECORDS += "num_workers seed"
STAGE_FLAGS = {  # (--model.help or --data.help, class): every flag its --help must show, each with a description
    ("model", "SFTModule"): f"{FINE_TUNING} num_sample_prompts sample_max_new_tokens",
    ("model", "RewardModule"): f"{FINE_TUNING} normalize normalize_std reference_files max_references",
    ("model", "PPOModule"): (
        "model_name_or_path reward_model_path value_model_path value_model reward_fn tokenizer_name_or_path export_dir "
        "minibatch_size micro_batch_size forward_batch_size ppo_epochs trim_padding max_new_tokens temperature top_k "
        "top_p no_eos_score kl_coef kl_target kl_horizon kl_estimator whiten_rewards gamma lam clip_range "
        "clip_range_value vf_coef ptx_coef ptx_examples_per_episode learning_rate value_learning_rate weight_decay "
        "betas warmup lr_schedule min_lr_ratio max_grad_norm ema_decay dtype frozen_dtype shard_frozen "
        "gradient_checkpointing lora lora.help trust_remote_code rollout_seed log_samples_every_n_iterations "
        "num_logged_samples"
    ),
    ("data", "SFTDataModule"): f"{RECORDS} truncation packing group_by_length plain_text",
    ("data", "PreferenceDataModule"): f"{RECORDS} truncation ties group_by_length",
    ("data", "PromptDataModule"): f"{RECORDS} pretraining_files max_pretraining_length",
}


@pytest.mark.parametrize(("group", "name"), list(STAGE_FLAGS))
def test_each_stage_help_lists_every_option_with_its_description(group, name):
    # Shared options are declared once (FineTuningModule, RecordDataModule) and reach the stages through
    # super().__init__(**kwargs): this is what proves --help still shows them all, each explained.
    text = run_cli(["fit", f"--{group}.help", name])
    entries: dict[str, str] = {}
    flag = None
    for line in text.splitlines():
        match = re.match(rf"^  --{group}\.([a-z_.]+)(\s.*)?$", line)
        if match:  # an option: its description follows on this line (after two spaces) or on indented lines
            flag = match[1]
            entries[flag] = (match[2] or "").split("  ", 1)[1] if "  " in (match[2] or "").strip(" ") else ""
        elif flag is not None and line.startswith(" " * 10):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    assert set(entries) == set(STAGE_FLAGS[group, name].split())
    for flag, description in entries.items():
        words = description.split("(type:")[0].strip()
        assert flag.endswith(".help") or words, f"--{group}.{flag} has no description in {name}'s --help"


def test_bad_data_option_names_the_flag(tmp_path, tokenizer_dir):
    cfg = _config(tmp_path, tokenizer_dir)
    with pytest.raises((ValueError, SystemExit)) as err:
        with contextlib.redirect_stderr(io.StringIO()) as stderr:
            main(["fit", "-c", str(cfg), "--data.batch_size", "0"])
    text = str(err.value) + (stderr.getvalue() if err.type is SystemExit else "")
    assert "--data.batch_size must be >= 1" in text


def test_default_logger_is_wandb_offline_without_a_key(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = _config(tmp_path, tokenizer_dir, logger=None)  # the CLI's default logger
    run_cli(["fit", "-c", str(cfg)])
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"no offline W&B run under {tmp_path / 'run'}: {os.listdir(tmp_path / 'run')}"
    assert list(runs[0].glob("*.wandb")), "the run directory holds the offline log"


def test_logger_swaps_to_csv(tmp_path, tokenizer_dir):
    cfg = _config(tmp_path, tokenizer_dir)
    run_cli(["fit", "-c", str(cfg), "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
          "--trainer.logger.save_dir", str(tmp_path / "csv"), "--trainer.log_every_n_steps", "1"])  # fmt: skip
    metrics = list((tmp_path / "csv").rglob("metrics.csv"))
    assert metrics and "train/loss" in metrics[0].read_text()


@pytest.mark.parametrize("config", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")))
def test_shipped_configs_parse(config, monkeypatch):
    from lit_rlhf.cli import LitRLHFCLI

    monkeypatch.chdir(REPO)
    folder = Path(config).parts[1]  # configs/<stage or subcommand>/<size>.yaml
    subcommand = folder if folder in LitRLHFCLI.MODEL_FREE_SUBCOMMANDS else "fit"
    printed = yaml.safe_load(run_cli([subcommand, "-c", config, "--print_config"]))
    if subcommand == "fit":
        assert printed["model"]["class_path"].startswith("lit_rlhf.")
        assert printed["data"]["class_path"].startswith("lit_rlhf.")
    else:
        assert "model" not in printed and "trainer" in printed


def test_model_directory_without_a_separate_tokenizer_option(tmp_path, tokenizer):
    """The tokenizer option defaults to the model directory and is linked into the data module; Lightning merges
    both modules' hparams, so the data module must not save a second, different value of it."""
    from lit_rlhf.models import export_pretrained, load_model

    model_dir = export_pretrained(load_model("scratch:gpt2", tokenizer, model_config=TINY_GPT2), tokenizer,
                                  tmp_path / "base")  # fmt: skip
    cfg = yaml.safe_load(_config(tmp_path, Path("unused")).read_text())
    cfg["model"]["init_args"] = {"model_name_or_path": str(model_dir), "num_sample_prompts": 0}
    # hparams are merged when a logger records them
    cfg["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(tmp_path)},
    }
    (tmp_path / "dir.yaml").write_text(yaml.safe_dump(cfg))
    run_cli(["fit", "-c", str(tmp_path / "dir.yaml"), "--model.export_dir", str(tmp_path / "out")])
    assert read_export_metadata(tmp_path / "out")["stage"] == "sft"
