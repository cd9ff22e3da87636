"""Errors for people: bad data, options and paths stop `lit-rlhf` with one short message and exit code 2, before
training, leaving no logger directory; --debug (or LIT_RLHF_DEBUG=1) brings the traceback back."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import wandb
import yaml
from lightning.pytorch.callbacks import Callback

from lit_rlhf.cli import main
from lit_rlhf.data.modules import PreferenceDataModule, SFTDataModule
from lit_rlhf.data.records import DataError
from lit_rlhf.models import load_model, load_tokenizer, missing_local_path
from tests.conftest import REPO, TINY_GPT2, reverse_records, write_jsonl


def _config(tmp_path: Path, tokenizer_dir: Path, records: list | None = None, **data) -> Path:
    """An SFT run on ``records`` (default: 32 good ones) with the default logger (W&B, offline) under tmp/run."""
    train = write_jsonl(tmp_path / "train.jsonl", reverse_records(32) if records is None else records)
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(tmp_path / "run"),
            "max_steps": 2,
            "enable_progress_bar": False,
            "num_sanity_val_steps": 0,
            "enable_checkpointing": False,
        },
        "model": {
            "class_path": "lit_rlhf.sft.SFTModule",
            "init_args": {
                "model_name_or_path": "scratch:gpt2",
                "tokenizer_name_or_path": str(tokenizer_dir),
                "model_config": TINY_GPT2,
                "num_sample_prompts": 0,
            },
        },
        "data": {
            "class_path": "lit_rlhf.data.modules.SFTDataModule",
            "init_args": {"train_files": str(train), "batch_size": 4, "val_split": 0.25, **data},
        },
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _fails(args: list[str], capsys) -> str:
    """Run ``lit-rlhf ARGS`` in this process; its stderr, asserting exit code 2 and no traceback."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err and "usage:" not in err
    return err[err.index("lit-rlhf: error: ") :]


# --------------------------------------------------------------------------- item 1: short messages, exit 2


def test_bad_data_is_one_message_with_file_and_line_and_no_logger_directory(tmp_path, tokenizer_dir, capsys):
    records = reverse_records(8) + ["{not json", {"prompt": "p"}] + reverse_records(8, seed=1)
    cfg = _config(tmp_path, tokenizer_dir, records)
    err = _fails(["fit", "-c", str(cfg)], capsys)
    assert err.startswith("lit-rlhf: error: 2 bad record(s)")
    assert "train.jsonl:9: not valid JSON" in err and "train.jsonl:10: missing key 'completion'" in err
    # the run failed before training: W&B's run directory (and the root it made) are gone
    assert not (tmp_path / "run").exists(), list((tmp_path / "run").rglob("*"))


def test_debug_flag_or_variable_brings_the_traceback_back(tmp_path, tokenizer_dir, monkeypatch):
    cfg = _config(tmp_path, tokenizer_dir, reverse_records(8) + ["{not json"])
    with pytest.raises(DataError, match=r"train\.jsonl:9: not valid JSON"):
        main(["fit", "-c", str(cfg), "--debug"])
    monkeypatch.setenv("LIT_RLHF_DEBUG", "1")
    with pytest.raises(DataError, match=r"train\.jsonl:9: not valid JSON"):
        main(["fit", "-c", str(cfg)])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model.learning_rat", "0.1"], "unknown option --model.learning_rat (lit_rlhf.sft.SFTModule has no such "
         "option); did you mean --model.learning_rate?"),
        (["--data.batch_sise=4"], "did you mean --data.batch_size?"),
        (["--trainer.max_stepz", "3"], "unknown option --trainer.max_stepz; did you mean --trainer.max_steps?"),
        (["--modle.learning_rate", "3"], "did you mean --model.learning_rate?"),
        (["--model.lora.rr", "3"], "did you mean --model.lora.r?"),
        (["--data.truncation", "cut"], "--data.truncation: expected one of 'left_truncate', 'skip', 'error', got 'cut'"),
        (["--model.dropout", "high"], "--model.dropout: expected float or None, got 'high'"),
        # options that conflict: refused by our check before Lightning builds the Trainer
        (["--trainer.strategy=fsdp", "--trainer.devices=2"], "Use --trainer.strategy=fsdp2"),
        # raised by our own check in DataModule.__init__, which jsonargparse wraps in its union dump
        (["--data.batch_size", "0", "--data.max_length", "1"], "bad data options:\n  --data.batch_size must be >= 1"),
    ],
)  # fmt: skip
def test_a_bad_flag_is_named_in_one_short_message(tmp_path, tokenizer_dir, capsys, flags, message):
    err = _fails(["fit", "-c", str(_config(tmp_path, tokenizer_dir)), *flags], capsys)
    assert message in err
    assert len(err.splitlines()) <= 3, err  # no union dump, no usage of every option


def test_a_misspelt_key_in_a_config_file_gets_a_suggestion(tmp_path, tokenizer_dir, capsys):
    cfg = yaml.safe_load(_config(tmp_path, tokenizer_dir).read_text())
    model_typo, trainer_typo = copy.deepcopy(cfg), copy.deepcopy(cfg)
    model_typo["model"]["init_args"]["num_sample_promts"] = 1
    trainer_typo["trainer"]["max_stepz"] = 1
    for typo, message in [
        (model_typo, "unknown option --model.num_sample_promts (lit_rlhf.sft.SFTModule has no such option); "
         "did you mean --model.num_sample_prompts?"),
        (trainer_typo, "unknown option --trainer.max_stepz; did you mean --trainer.max_steps?"),
    ]:  # fmt: skip
        path = tmp_path / "typo.yaml"
        path.write_text(yaml.safe_dump(typo))
        assert message in _fails(["fit", "-c", str(path)], capsys)


def test_missing_config_file_and_unknown_subcommand(tmp_path, capsys):
    err = _fails(["fit", "-c", str(tmp_path / "nope.yaml")], capsys)
    assert "-c/--config" in err and "nope.yaml" in err
    err = _fails(["fitt"], capsys)
    assert "invalid choice: 'fitt'" in err and "did you mean fit?" in err


def test_the_command_exits_2_with_one_line_on_stderr(tmp_path, tokenizer_dir):
    cfg = _config(tmp_path, tokenizer_dir, reverse_records(8) + ["{not json"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LIT_RLHF_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "lit_rlhf.cli", "fit", "-c", str(cfg)], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"lit-rlhf: error: 1 bad record(s); fix them or set on_bad_record='skip' (--data.on_bad_record=skip):\n" \
           f"  {tmp_path / 'train.jsonl'}:9: not valid JSON" in done.stderr  # fmt: skip


@pytest.mark.slow
def test_every_ddp_rank_reports_the_same_short_error(tmp_path, tokenizer_dir):
    # Lightning's launcher re-runs the command line in rank 1: it goes through main() too.
    cfg = _config(tmp_path, tokenizer_dir, reverse_records(8) + ["{not json"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LIT_RLHF_DEBUG", None)
    cmd = [sys.executable, "-m", "lit_rlhf.cli", "fit", "-c", str(cfg), "--trainer.accelerator=cpu",
           "--trainer.devices=2", "--trainer.strategy=ddp"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("not valid JSON") == 2, done.stderr  # rank 0 and rank 1, each one short message
    assert "lit-rlhf: error: [rank 1] 1 bad record(s)" in done.stderr
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- item 3: local paths never go to the hub


@pytest.mark.parametrize("path", ["./no-such-model", "/no/such/model", "no/such/model", "no-such-dir/", "~/no-such"])
def test_a_missing_local_path_is_refused_without_asking_the_hub(path, tokenizer, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"--model.tokenizer_name_or_path: {path}: no such file"):
        load_tokenizer(path, flag="--model.tokenizer_name_or_path")
    with pytest.raises(FileNotFoundError, match=f"--model.model_name_or_path: {path}: no such file"):
        load_model(path, tokenizer, flag="--model.model_name_or_path")


def test_hub_ids_and_existing_paths_are_not_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("gpt2", "EleutherAI/pythia-70m", "a/b", "./a", "a/b/", "scratch:gpt2"):
        assert missing_local_path(name, "--model.model_name_or_path") is None, name


@pytest.mark.parametrize("key", ["model_name_or_path", "tokenizer_name_or_path"])
def test_a_missing_model_path_stops_the_run_at_once_naming_the_flag(tmp_path, tokenizer_dir, capsys, key):
    missing = str(tmp_path / "not-exported" / "hf")
    err = _fails(["fit", "-c", str(_config(tmp_path, tokenizer_dir)), f"--model.{key}", missing], capsys)
    assert err.startswith(f"lit-rlhf: error: --model.{key}: {missing}: no such file or directory")
    assert not (tmp_path / "run").exists()


def test_a_scratch_model_on_own_data_without_a_tokenizer_is_one_line_naming_the_flag(tmp_path, capsys):
    # The shipped config on the user's files: the world (and its tokenizer) plays no part, and scratch:gpt2 has no
    # tokenizer of its own; it used to end in a 40-line traceback from AutoTokenizer.from_pretrained("scratch:gpt2").
    train = write_jsonl(tmp_path / "real.jsonl", reverse_records(16))
    val = write_jsonl(tmp_path / "real_val.jsonl", reverse_records(4, seed=1))
    args = ["fit", "-c", str(REPO / "configs" / "sft" / "tiny.yaml"), f"--data.train_files={train}",
            f"--data.val_files={val}", f"--trainer.default_root_dir={tmp_path / 'run'}"]  # fmt: skip
    err = _fails(args, capsys)
    assert err.count("\n") == 1 and err.endswith("\n"), err  # one line
    assert "--model.tokenizer_name_or_path=DIR" in err and "scratch:gpt2" in err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- item 4: module and DataModule pairing


def test_a_module_paired_with_the_wrong_datamodule_is_refused_naming_both(tmp_path, tokenizer_dir, capsys):
    rankings = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": "no"} for r in reverse_records(16)]
    cfg = _config(tmp_path, tokenizer_dir, rankings)
    err = _fails(["fit", "-c", str(cfg), "--data", "lit_rlhf.data.modules.PreferenceDataModule"], capsys)
    assert "SFTModule trains on SFTDataModule records; got PreferenceDataModule (--data)" in err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- item 5: dropping most of the records


def _long_and_short(n_long: int, n_short: int) -> list[dict[str, str]]:
    long = [{"prompt": "Reverse: catdog", "completion": " ".join(["moon star"] * 40)}] * n_long
    return long + reverse_records(n_short)


def test_dropping_more_than_half_stops_before_training_unless_allowed(tmp_path, tokenizer_dir, caplog):
    path = write_jsonl(tmp_path / "t.jsonl", _long_and_short(6, 4))
    options = {"train_files": str(path), "val_files": str(path), "tokenizer_name_or_path": str(tokenizer_dir),
               "max_length": 32}  # fmt: skip
    with pytest.raises(DataError) as err:
        SFTDataModule(**options).setup()
    text = str(err.value)
    assert text.startswith("train: 6 of 10 examples are too long for max_length=32 and would be dropped")
    assert "--data.max_length" in text and "--data.truncation" in text and "--data.allow_dropping_most=true" in text
    dm = SFTDataModule(**options, allow_dropping_most=True)
    with caplog.at_level(logging.INFO, logger="lit_rlhf.data.modules"):
        dm.setup()
    assert len(dm.train_dataset) == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "6 of 10 examples dropped" in r.message]
    assert warnings and "--data.max_length or --data.truncation" in warnings[0].message


def test_dropping_fewer_than_half_is_a_warning_naming_the_flags(tmp_path, tokenizer_dir, caplog):
    path = write_jsonl(tmp_path / "t.jsonl", _long_and_short(2, 8))
    dm = SFTDataModule(train_files=str(path), val_files=str(path), tokenizer_name_or_path=str(tokenizer_dir),
                       max_length=32)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="lit_rlhf.data.modules"):
        dm.setup()
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING and r.message.startswith("train:")]
    assert "2 of 10 examples dropped as too long for max_length=32" in warning.message
    assert "--data.max_length or --data.truncation" in warning.message


def test_the_command_stops_when_most_records_are_too_long(tmp_path, tokenizer_dir, capsys):
    cfg = _config(tmp_path, tokenizer_dir, _long_and_short(24, 8), max_length=32)
    err = _fails(["fit", "-c", str(cfg)], capsys)
    assert "examples are too long for max_length=32 and would be dropped" in err
    assert "--data.allow_dropping_most=true" in err


def test_rankings_dropping_most_prompts_stop_too(tmp_path, tokenizer_dir):
    long = " ".join(["moon star"] * 40)
    records = [{"prompt": "Q", "completions": [long, long + " x", "a"], "ranking": [2, 0, 1]}] * 3
    records += [{"prompt": "Q", "completions": ["sun", "red", "a"], "ranking": [2, 0, 1]}]
    path = write_jsonl(tmp_path / "t.jsonl", records)
    with pytest.raises(DataError, match=r"train: 3 of 4 prompts are too long for max_length=32"):
        PreferenceDataModule(train_files=str(path), val_files=str(path), tokenizer_name_or_path=str(tokenizer_dir),
                             max_length=32).setup()  # fmt: skip


# --------------------------------------------------------------------------- item 7: no logger directory left


class FailAfterFirstStep(Callback):
    def on_train_batch_end(self, trainer, *args) -> None:
        raise RuntimeError("failed after the first step")


def test_a_failure_before_training_leaves_earlier_runs_and_deletes_only_its_own(tmp_path, tokenizer_dir, capsys):
    cfg = _config(tmp_path, tokenizer_dir)
    main(["fit", "-c", str(cfg)])  # a good run: its W&B run stays
    wandb.finish()  # as at the end of its process: the next run starts its own
    wandb_dir = tmp_path / "run" / "wandb"
    (earlier,) = wandb_dir.glob("offline-run-*")
    _fails(["fit", "-c", str(cfg), "--data.train_files", str(write_jsonl(tmp_path / "bad.jsonl", ["{"]))], capsys)
    assert list(wandb_dir.glob("offline-run-*")) == [earlier]
    assert all(link.exists() for link in wandb_dir.iterdir()), "no link left pointing into the deleted run"


def test_a_failure_after_training_started_keeps_the_run(tmp_path, tokenizer_dir):
    cfg = _config(tmp_path, tokenizer_dir)
    callback = f"{FailAfterFirstStep.__module__}.FailAfterFirstStep"
    with pytest.raises(RuntimeError, match="failed after the first step"):
        main(["fit", "-c", str(cfg), "--trainer.callbacks+", callback])
    assert len(list((tmp_path / "run" / "wandb").glob("offline-run-*"))) == 1


class FailAtFitEnd(Callback):
    """A report at the end of fit that fails, as the held-out check did under FSDP2."""

    def on_fit_end(self, trainer, pl_module):
        raise RuntimeError("the end-of-fit report failed")


def test_a_callback_failing_at_the_end_of_fit_still_leaves_a_complete_export(tmp_path, tokenizer_dir):
    from transformers import AutoModelForCausalLM

    from lit_rlhf.models import read_export_metadata

    cfg = _config(tmp_path, tokenizer_dir)
    with pytest.raises(RuntimeError, match="the end-of-fit report failed"):  # reported, not swallowed
        main(["fit", "-c", str(cfg), "--trainer.callbacks+", f"{FailAtFitEnd.__module__}.FailAtFitEnd"])
    export = tmp_path / "run" / "hf"
    assert read_export_metadata(export)["global_step"] == 2  # written at the end of training, before the callback
    assert AutoModelForCausalLM.from_pretrained(export).config.n_layer == TINY_GPT2["n_layer"]
