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


FINE_TUNING = ("model_name_or_path tokenizer_name_or_path allow_other_tokenizer model_config export_dir learning_rate weight_decay betas warmup "
               "min_lr_ratio dropout dtype gradient_checkpointing lora lora.help trust_remote_code")  # fmt: skip
RECORDS = "train_files val_files tokenizer_name_or_path val_split max_length template on_bad_record batch_size "
RECORDS += "num_workers seed allow_dropping_most"
STAGE_FLAGS = {  # (--model.help or --data.help, class): every flag its --help must show, each with a description
    ("model", "SFTModule"): f"{FINE_TUNING} num_sample_prompts sample_max_new_tokens",
    ("model", "RewardModule"): f"{FINE_TUNING} normalize normalize_std reference_files max_references",
    ("model", "DPOModule"): f"{FINE_TUNING} beta loss_type label_smoothing reference_model_path precompute_reference",
    ("model", "PPOModule"): (
        "model_name_or_path reward_model_path value_model_path value_model reward_fn tokenizer_name_or_path "
        "allow_other_tokenizer export_dir export_every_n_iterations "
        "minibatch_size micro_batch_size forward_batch_size ppo_epochs trim_padding max_new_tokens temperature top_k "
        "top_p no_eos_score kl_coef kl_target kl_horizon kl_estimator whiten_rewards gamma lam clip_range "
        "clip_range_value vf_coef ptx_coef ptx_examples_per_episode learning_rate value_learning_rate weight_decay "
        "betas warmup lr_schedule min_lr_ratio max_grad_norm ema_decay dtype frozen_dtype shard_frozen "
        "gradient_checkpointing lora lora.help trust_remote_code rollout_seed log_samples_every_n_iterations "
        "num_logged_samples advantage_estimator samples_per_prompt kl_in_loss loss_aggregation"
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


# -- the world: section, the shipped configs' embedded default -------------------------------------------------------

SMALL_WORLD = {"n_train": 40, "n_val": 8, "n_heldout": 8, "n_corpus": 40, "vocab_size": 300, "n_ppo_prompts": 8,
               "n_comparison_prompts": 4, "n_comparison_val_prompts": 4}  # fmt: skip


def _world_config(tmp_path: Path) -> Path:
    """An SFT config, as the shipped ones: its data come from a (small) world unless --data.train_files is given."""
    world = tmp_path / "world"
    defaults = {
        "model": {"init_args": {"tokenizer_name_or_path": str(world / "tokenizer")}},
        "data": {
            "init_args": {
                "train_files": str(world / "sft" / "train.jsonl"),
                "val_files": str(world / "sft" / "val.jsonl"),
                "batch_size": 2,  # the config file's 4 wins
            }
        },
        "trainer": {
            "callbacks": [
                {
                    "class_path": "lit_rlhf.callbacks.ExactMatchCallback",
                    "init_args": {"files": str(world / "eval" / "heldout.jsonl"), "max_examples": 4},
                }
            ]
        },
    }
    cfg = yaml.safe_load(_config(tmp_path, Path("unused")).read_text())
    del cfg["model"]["init_args"]["tokenizer_name_or_path"]
    del cfg["data"]["init_args"]["train_files"]
    cfg["world"] = {"dir": str(world), "seed": 3, "build": SMALL_WORLD, "defaults": defaults}
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _callback_files(cli) -> list[str]:
    from lit_rlhf.callbacks import ExactMatchCallback

    return [c.files for c in cli.trainer.callbacks if isinstance(c, ExactMatchCallback)]


def test_world_section_builds_the_world_and_names_its_files_under_the_config_and_flags(tmp_path):
    from lit_rlhf.cli import build_cli

    cfg, world = _world_config(tmp_path), tmp_path / "world"
    own_val = write_jsonl(tmp_path / "own_val.jsonl", reverse_records(4))
    cli = build_cli(["-c", str(cfg), "--data.val_files", str(own_val)], run=False)
    params = yaml.safe_load((world / "world.json").read_text())["params"]
    assert params["seed"] == 3 and params["n_train"] == SMALL_WORLD["n_train"]  # seed and build reach build_world
    dm = cli.datamodule
    assert dm.train_files == str(world / "sft" / "train.jsonl")  # a world default
    assert dm.val_files == str(own_val)  # the command line wins over the world's default
    assert dm.batch_size == 4  # so does the config file
    assert dm.tokenizer_name_or_path == str(world / "tokenizer")  # the model's, linked into the data module
    assert _callback_files(cli) == [str(world / "eval" / "heldout.jsonl")]
    assert not (world / "rm").exists()  # rankings only when asked for
    cli = build_cli(["-c", str(cfg), "--world.rankings", "true"], run=False)
    assert (world / "rm" / "train.jsonl").is_file() and (world / "rm" / "val.jsonl").is_file()


def test_own_data_take_nothing_from_the_world(tmp_path, tokenizer_dir):
    from lit_rlhf.cli import build_cli

    cfg, world = _world_config(tmp_path), tmp_path / "world"
    printed = yaml.safe_load(run_cli(["fit", "-c", str(cfg), "--print_config"]))
    assert printed["world"]["dir"] == str(world) and not world.exists()  # printed, re-runnable, nothing built
    train = write_jsonl(tmp_path / "own.jsonl", reverse_records(16))
    args = ["-c", str(cfg), "--data.train_files", str(train), "--model.tokenizer_name_or_path", str(tokenizer_dir)]
    cli = build_cli(args, run=False)
    assert not world.exists()
    # Validation never comes from anywhere the user did not name: split off their own file.
    assert cli.datamodule.val_files is None and cli.datamodule.batch_size == 4
    assert cli.datamodule.tokenizer_name_or_path == str(tokenizer_dir)
    assert _callback_files(cli) == []


def test_no_world_and_no_files_names_the_flag(tmp_path, tokenizer_dir):
    cfg = _world_config(tmp_path)
    # a tokenizer given: without one, the scratch model's missing tokenizer is named first (test_errors)
    with pytest.raises((ValueError, SystemExit)) as err:
        with contextlib.redirect_stderr(io.StringIO()) as stderr:
            main(["fit", "-c", str(cfg), "--world", "null", f"--model.tokenizer_name_or_path={tokenizer_dir}"])
    text = str(err.value) + (stderr.getvalue() if err.type is SystemExit else "")
    assert "--data.train_files" in text
    assert not (tmp_path / "world").exists()


def test_processes_started_together_build_the_world_once(tmp_path, monkeypatch):
    """torchrun and SLURM start every rank at once, each parsing the same config: one builds, the others wait."""
    import threading

    import lit_rlhf.cli as cli_module
    from lit_rlhf.world import WorldFiles

    world = cli_module.WorldSection(dir=str(tmp_path / "world"), seed=3, build=SMALL_WORLD)
    complete_before: list[bool] = []
    build = cli_module.build_world

    def recording_build(out_dir, **kwargs):
        complete_before.append(WorldFiles.at(out_dir).is_complete())
        return build(out_dir, **kwargs)

    monkeypatch.setattr(cli_module, "build_world", recording_build)
    ranks = [threading.Thread(target=cli_module.prepare_world, args=(world,)) for _ in range(2)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join()
    assert sorted(complete_before) == [False, True]  # without the lock both would find no world and build it
    assert WorldFiles.at(world.dir).is_complete()


def test_unknown_world_parameter_names_the_flag(tmp_path, capsys):
    cfg = _world_config(tmp_path)
    with pytest.raises((ValueError, SystemExit)) as err:
        main(["fit", "-c", str(cfg), "--world.build", "{n_trian: 5}"])
    text = str(err.value) + capsys.readouterr().err
    assert "--world.build" in text and "n_trian" in text and "n_train" in text
    assert not (tmp_path / "world").exists()


def test_printed_config_of_a_world_config_trains_through_c(tmp_path):
    # --print_config writes `train_files: null` (and null tokenizer and callbacks) for what the world fills in; the
    # printed file must read the world again, not stop on "give --data.train_files".
    from lit_rlhf.callbacks import ExactMatchCallback

    cfg, world = _world_config(tmp_path), tmp_path / "world"
    printed_text = run_cli(["fit", "-c", str(cfg), "--print_config"])
    printed = yaml.safe_load(printed_text)
    assert printed["data"]["init_args"]["train_files"] is None and printed["trainer"]["callbacks"] is None
    path = tmp_path / "printed.yaml"
    path.write_text(printed_text)
    out = run_cli(["fit", "-c", str(path), "--trainer.max_steps=1", "--model.export_dir", str(tmp_path / "out")])
    assert read_export_metadata(tmp_path / "out")["global_step"] == 1
    assert "held-out exact match" in out  # the world's callback is back too

    # Only what is None takes the world's value: a file the user names stays theirs.
    from jsonargparse import dict_to_namespace

    from lit_rlhf.cli import world_fill_config

    printed["data"]["init_args"]["val_files"] = "mine.jsonl"
    fill = world_fill_config(printed["world"]["defaults"], dict_to_namespace(printed))
    assert fill["data"]["init_args"] == {"train_files": str(world / "sft" / "train.jsonl")}  # not val_files, batch_size
    assert fill["model"] == {"init_args": {"tokenizer_name_or_path": str(world / "tokenizer")}}
    assert [c["class_path"] for c in fill["trainer"]["callbacks"]] == [
        ExactMatchCallback.__module__ + ".ExactMatchCallback"
    ]
