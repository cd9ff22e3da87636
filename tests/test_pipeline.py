"""`lit-rlhf pipeline`: plain-text records for pretraining, config merging, the prompted base, and a smoke run that
completes, writes results.json and resumes after an interrupted stage."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_rlhf.cli import build_cli, main
from lit_rlhf.data.collate import IGNORE_INDEX, render_plain
from lit_rlhf.data.modules import SFTDataModule
from lit_rlhf.data.records import DataError
from lit_rlhf.models import MARKER_FILE, read_export_metadata
from lit_rlhf.pipeline import (
    INPUTS,
    OWN_DATA_INPUTS,
    STAGES,
    WorldPipeline,
    deep_merge,
    few_shot_chat_template,
    replace_path_prefix,
    without_world,
    world_defaults,
)
from tests.conftest import REPO, run_cli, write_jsonl

RESULT_KEYS = {"n", "win_rate", "win_rate_ci95", "rm_win_rate", "invented_answer_rate", "toxic_rate", "lm_loss",
               "kl_to_sft"}  # fmt: skip
POLICIES = {"base", "base_prompted", "sft", "dpo", "ppo", "ppo_ptx", "rloo", "grpo", "best_of_2"}


# --------------------------------------------------------------------------- plain text: LM loss on every token


def test_text_records_train_on_every_token(tmp_path, tokenizer_dir):
    texts = [{"text": "cat dog sun"}, {"text": "tree bird fish moon star"}]
    files = write_jsonl(tmp_path / "corpus.jsonl", texts)
    dm = SFTDataModule(train_files=str(files), val_files=str(files), tokenizer_name_or_path=str(tokenizer_dir),
                       max_length=64, group_by_length=False, batch_size=2, plain_text=True)  # fmt: skip
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    tok = dm.tokenizer
    for i, record in enumerate(texts):
        ids = tok(record["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(ids)
        assert batch["prompt_lengths"][i] == 0  # no prompt, no template
        assert batch["input_ids"][i, :n].tolist() == ids
        assert batch["labels"][i, :n].tolist() == ids  # every token counts, EOS included
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()  # padding never does


def test_text_records_need_plain_text(tmp_path, tokenizer_dir):
    files = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "cat dog sun"}, {"text": "tree bird"}])
    dm = SFTDataModule(train_files=str(files), val_files=str(files), tokenizer_name_or_path=str(tokenizer_dir))
    with pytest.raises(DataError, match=r"corpus.jsonl:1: .*plain 'text' needs --data.plain_text=true"):
        dm.setup()


def test_long_text_keeps_its_beginning(tmp_path, tokenizer_dir):
    files = write_jsonl(tmp_path / "corpus.jsonl", [{"text": " ".join(["cat dog sun tree"] * 20)}, {"text": "cat"}])
    dm = SFTDataModule(train_files=str(files), val_files=str(files), tokenizer_name_or_path=str(tokenizer_dir),
                       max_length=8, group_by_length=False, batch_size=2, plain_text=True)  # fmt: skip
    dm.setup()
    full = dm.tokenizer(" ".join(["cat dog sun tree"] * 20), add_special_tokens=False)["input_ids"]
    first = dm.val_dataset[0]
    assert first["prompt_ids"] == [] and first["completion_ids"] == full[:8]
    assert dm.counts["val"].truncated == 1 and dm.counts["val"].skipped == 0


# --------------------------------------------------------------------------- helpers


def test_deep_merge_replaces_lists_and_keeps_siblings():
    base = {"trainer": {"max_steps": 10, "callbacks": [1, 2]}, "model": {"init_args": {"a": 1, "b": 2}}}
    merged = deep_merge(base, {"trainer": {"callbacks": []}, "model": {"init_args": {"b": 3}}})
    assert merged == {"trainer": {"max_steps": 10, "callbacks": []}, "model": {"init_args": {"a": 1, "b": 3}}}
    assert base["trainer"]["callbacks"] == [1, 2]  # not mutated


def test_deep_merge_puts_class_argument_shorthand_into_init_args():
    base = {"model": {"class_path": "m.M", "init_args": {"lr": 1.0, "x": 2}}, "trainer": {"max_steps": 1}}
    merged = deep_merge(base, {"model": {"lr": 0.5}})  # as --model.lr=0.5 on the command line
    assert merged["model"] == {"class_path": "m.M", "init_args": {"lr": 0.5, "x": 2}}
    # Explicit init_args or a new class_path are merged as written.
    assert deep_merge(base, {"model": {"init_args": {"lr": 0.1}}})["model"]["init_args"] == {"lr": 0.1, "x": 2}
    assert deep_merge(base, {"model": {"class_path": "m.N"}})["model"]["class_path"] == "m.N"


def test_replace_path_prefix_only_whole_components():
    node = {"files": "runs/world/eval/heldout.jsonl", "other": ["runs/world", "runs/world2/x", "x/runs/world/y"]}
    out = replace_path_prefix(node, "runs/world", "/r/demo/world")
    assert out == {"files": "/r/demo/world/eval/heldout.jsonl", "other": ["/r/demo/world", "runs/world2/x",
                                                                          "x/runs/world/y"]}  # fmt: skip


def test_few_shot_template_puts_demonstrations_before_the_plain_prompt(tokenizer_dir):
    from lit_rlhf.data.collate import render_prompt
    from lit_rlhf.models import load_tokenizer

    tok = load_tokenizer(str(tokenizer_dir))
    shots = [{"prompt": 'Say "hi"', "completion": "hi"}, {"prompt": "Add 1 and 2.", "completion": "3"}]
    tok.chat_template = few_shot_chat_template(shots)
    messages = [{"role": "user", "content": "Reverse: catdog"}]
    expected = '\n\nHuman: Say "hi"\n\nAssistant: hi\n\nHuman: Add 1 and 2.\n\nAssistant: 3' + render_plain(messages)
    assert render_prompt(tok, messages) == expected


@pytest.mark.parametrize("inputs", [INPUTS, OWN_DATA_INPUTS], ids=["world", "own_data"])
def test_stage_inputs_come_earlier(inputs):
    assert tuple(INPUTS) == STAGES
    order = list(inputs)
    for stage, reads in inputs.items():
        assert all(order.index(i) < order.index(stage) for i in reads), stage


def test_stage_configs_lose_the_world_and_keep_its_defaults_only_in_the_world_pipeline():
    config = {
        "world": {"dir": "runs/world", "defaults": {"model": {"tokenizer_name_or_path": "runs/world/tokenizer"},
                                                    "trainer": {"callbacks": [{"files": "runs/world/eval/h.jsonl"}]}}},
        "model": {"class_path": "m.M", "init_args": {"lr": 1.0}},
        "data": {"class_path": "d.D", "init_args": {"world_dir": "runs/world", "batch_size": 2}},
        "trainer": {"max_steps": 3},
    }  # fmt: skip
    plain = without_world(config)
    assert "world" not in plain and plain["data"]["init_args"] == {"batch_size": 2}
    assert config["data"]["init_args"]["world_dir"] == "runs/world"  # not mutated
    merged = deep_merge(world_defaults(config), plain)
    tokenizer = {"tokenizer_name_or_path": "runs/world/tokenizer"}
    assert merged["model"] == {"class_path": "m.M", "init_args": {"lr": 1.0, **tokenizer}}
    assert merged["trainer"] == {"callbacks": [{"files": "runs/world/eval/h.jsonl"}], "max_steps": 3}
    assert world_defaults({"model": {}}) == {}


def test_pipeline_help_lists_its_options():
    out = run_cli(["pipeline", "--help"])
    options = ("--name", "--runs_dir", "--world", "--pretrain", "--comparisons", "--ppo_ptx", "--until", "--data",
               "--model_name_or_path", "--judge_model_path", "--gold_rm")  # fmt: skip
    for option in options:
        assert option in out
    data_help = run_cli(["pipeline", "--data.help"])  # your files, one flag each
    for option in ("--data.sft_files", "--data.preference_files", "--data.prompt_files", "--data.eval_prompts"):
        assert option in data_help


def test_missing_stage_config_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ValueError, match=r"--sft.config nowhere.yaml: no such file"):
        build_cli(["pipeline", "-c", "configs/pipeline/smoke.yaml", "--runs_dir", str(tmp_path),
              "--sft", '{"config": "nowhere.yaml"}'])  # fmt: skip


# --------------------------------------------------------------------------- the smoke pipeline, end to end


def _statuses(root: Path) -> dict[str, str]:
    return {k: v["status"] for k, v in json.loads((root / "pipeline.json").read_text())["stages"].items()}


@pytest.mark.slow
def test_smoke_pipeline_completes_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # stage configs are named relative to the repository, as in the README
    args = ["pipeline", "-c", "configs/pipeline/smoke.yaml", "--runs_dir", str(tmp_path)]
    root = tmp_path / "smoke"

    # 1. Interrupted inside ppo_ptx: everything before it is complete, nothing after it exists.
    def boom(self, console):
        raise KeyboardInterrupt("simulated interruption in ppo_ptx")

    with monkeypatch.context() as m:
        m.setattr(WorldPipeline, "run_ppo_ptx", boom)
        with pytest.raises(KeyboardInterrupt):
            main(args)
    for stage in ("pretrain", "sft", "rm", "dpo", "ppo"):
        assert read_export_metadata(root / stage / "hf") is not None, stage
    assert (root / "comparisons" / "stats.json").is_file()
    assert read_export_metadata(root / "ppo_ptx" / "hf") is None
    assert not (root / "evaluate" / "results.json").exists()
    ppo_export = (root / "ppo" / "hf" / "model.safetensors").stat().st_mtime_ns

    # The stages are wired: SFT starts from the pretrained base, the RM from SFT, PPO reads the RM.
    sft_cfg = yaml.safe_load((root / "configs" / "sft.yaml").read_text())
    assert sft_cfg["model"]["init_args"]["model_name_or_path"] == str(root / "pretrain" / "hf")
    assert "world" not in sft_cfg and "world_dir" not in sft_cfg["data"]["init_args"]  # explicit files only
    assert sft_cfg["data"]["init_args"]["train_files"] == str(root / "world" / "sft" / "train.jsonl")
    ppo_cfg = yaml.safe_load((root / "configs" / "ppo.yaml").read_text())
    assert ppo_cfg["model"]["init_args"]["reward_model_path"] == str(root / "rm" / "hf")
    dpo_cfg = yaml.safe_load((root / "configs" / "dpo.yaml").read_text())  # DPO: SFT on the RM's comparisons
    assert dpo_cfg["model"]["init_args"]["model_name_or_path"] == str(root / "sft" / "hf")
    assert dpo_cfg["data"]["init_args"]["train_files"] == str(root / "comparisons" / "train.jsonl")
    assert (root / "pretrain" / "metrics.csv").is_file()
    for stage in ("rloo", "grpo"):  # not run yet (after ppo_ptx): their configs are written when they run
        assert not (root / "configs" / f"{stage}.yaml").exists()

    # 2. Rerun: the earlier stages are skipped, the interrupted one and those after it run.
    main(args)
    statuses = _statuses(root)
    at = STAGES.index("ppo_ptx")
    assert {s: statuses[s] for s in STAGES[:at]} == dict.fromkeys(STAGES[:at], "skipped")
    assert {s: statuses[s] for s in STAGES[at:]} == dict.fromkeys(STAGES[at:], "done")
    assert (root / "ppo" / "hf" / "model.safetensors").stat().st_mtime_ns == ppo_export
    results = json.loads((root / "evaluate" / "results.json").read_text())
    assert set(results) == POLICIES
    for policy, figures in results.items():
        assert RESULT_KEYS <= set(figures), policy
        assert figures["n"] == 8
    assert results["sft"]["win_rate"] == 0.5 and results["sft"]["kl_to_sft"] == 0.0
    settings = json.loads((root / "evaluate" / "settings.json").read_text())
    assert settings["policies"]["base_prompted"] == str(root / "base_prompted")
    assert results["best_of_2"]["kl_to_sft"] == pytest.approx(math.log(2) - 1 / 2)  # best-of-2 samples SFT
    # The over-optimisation curve: best-of-n of SFT and PPO's exports along training, gold the hidden quality.
    curve = json.loads((root / "overoptimization" / "overoptimization.json").read_text())
    named = {(p["method"], p["name"]) for p in curve["points"]}
    assert {("rl", "sft"), ("rl", "ppo_iter_0001"), ("rl", "ppo_iter_0002")} <= named
    assert ("rl", "ppo") not in named, "the final export is the last iteration's: not measured twice"
    assert sorted(p["n"] for p in curve["points"] if p["method"] == "best_of_n") == [1, 2, 4]
    assert curve["settings"]["gold"] == "lit_rlhf.world.labelers:true_reward"
    assert (root / "overoptimization" / "overoptimization.png").is_file()
    # RLOO and GRPO: PPO's wiring with a critic-free estimator, and no value model anywhere in their runs.
    for stage in ("rloo", "grpo"):
        cfg = yaml.safe_load((root / "configs" / f"{stage}.yaml").read_text())["model"]["init_args"]
        assert cfg["advantage_estimator"] == stage and cfg["reward_model_path"] == str(root / "rm" / "hf")
        assert cfg["model_name_or_path"] == str(root / "sft" / "hf")
        assert read_export_metadata(root / stage / "hf")["hparams"]["advantage_estimator"] == stage
        (ckpt,) = (root / stage).rglob("last.ckpt")
        weights = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        assert weights and not [k for k in weights if k.startswith(("value", "critic"))], stage

    # 3. A stage whose export lost its marker is redone, and so are the stages that read it (evaluate), but
    #    not its siblings (ppo_ptx).
    (root / "ppo" / "hf" / MARKER_FILE).unlink()
    main(args)
    statuses = _statuses(root)
    assert statuses["ppo"] == "done" and statuses["evaluate"] == "done"
    assert statuses["ppo_ptx"] == "skipped" and statuses["rm"] == "skipped"
    assert read_export_metadata(root / "ppo" / "hf") is not None

    # 4. Settings are chosen on the dev slice by the training labelers (benchmarks/select_settings.py).
    select = [sys.executable, str(REPO / "benchmarks" / "select_settings.py"), "--config", "configs/pipeline/smoke.yaml",
              "--name", "smoke", "--runs_dir", str(tmp_path), "--iterations", "1", "--kl_coefs", "0.02",
              "--learning_rates", "1e-5,1e-4", "--ptx_coefs", "0.5", "--max_dev_prompts", "4", "--dpo_betas", "0.1",
              "--dpo_learning_rates", "1e-4", "--dpo_epochs", "1", "--best_of_ns", "2", "--cf_learning_rates", "1e-4",
              "--cf_samples_per_prompt", "2"]  # fmt: skip
    subprocess.run(select, check=True, cwd=REPO)
    selection = json.loads((root / "selection" / "selection.json").read_text())
    assert [c["candidate"] for c in selection["candidates"]] == [
        "ppo_it1_kl0.02_lr1e-05", "ppo_it1_kl0.02_lr0.0001", "ppo_ptx_gamma0.5", "dpo_beta0.1_lr0.0001_ep1",
        "best_of_2", "rloo_k2_lr0.0001", "grpo_k2_lr0.0001"]  # fmt: skip
    assert selection["learning_rate"] in (1e-5, 1e-4) and selection["ptx_coef"] == 0.5
    assert selection["dpo"] == {"beta": 0.1, "learning_rate": 1e-4, "epochs": 1} and selection["best_of_n"] == 2
    for estimator in ("rloo", "grpo"):  # PPO's episodes: 4 prompts x 1 sample = 2 prompts x 2 samples, PPO's beta
        assert selection["critic_free"][estimator] == {"samples_per_prompt": 2, "prompts_per_iteration": 2,
            "estimator": estimator, "learning_rate": 1e-4, "iterations": 1, "kl_coef": 0.02}  # fmt: skip
        trained = yaml.safe_load((root / "selection" / "configs" / f"{estimator}_k2_lr0.0001.yaml").read_text())
        assert trained["model"]["init_args"]["advantage_estimator"] == estimator
        assert trained["data"]["init_args"]["batch_size"] == 2 and trained["trainer"]["limit_train_batches"] == 1
    assert set(selection["sft_habits"]) == {"ignores_constraint", "preamble", "padding"}  # measured before PPO
    dev = yaml.safe_load((root / "selection" / "configs" / "dev_eval.yaml").read_text())
    assert dev["judge"] == "lit_rlhf.world.labelers:dev_judge"
    assert dev["prompts_file"] == str(root / "world" / "dev" / "prompts.jsonl")
    dev_results = json.loads((root / "selection" / "dev_eval_ptx" / "results.json").read_text())
    assert dev_results["ppo_ptx_gamma0.5"]["n"] == 4 and "by_constrained" in dev_results["ppo_ptx_gamma0.5"]


def test_control_world_differs_from_the_demo_only_in_the_writers_habits():
    from lit_rlhf.world.labelers import HUMAN_FLAWS

    demo = yaml.safe_load((REPO / "configs/pipeline/demo.yaml").read_text())
    control = yaml.safe_load((REPO / "configs/pipeline/control.yaml").read_text())
    assert set(control) == {"name", "world"}  # applied over demo.yaml: every stage setting is the demo's
    rates = {f"demo_{field}": getattr(HUMAN_FLAWS, field) for field in HUMAN_FLAWS.__dataclass_fields__}
    assert {k: v for k, v in demo["world"].items() if k in rates} == rates  # the demo's writers are HUMAN_FLAWS
    assert {k: v for k, v in control["world"].items() if k in rates} == dict.fromkeys(rates, 0.0)
    others = {k: v for k, v in demo["world"].items() if k not in rates}
    assert {k: v for k, v in control["world"].items() if k not in rates} == others
    merged = yaml.safe_load(run_cli(["pipeline", "-c", str(REPO / "configs/pipeline/demo.yaml"),
                                     "-c", str(REPO / "configs/pipeline/control.yaml"), "--print_config"]))  # fmt: skip
    assert merged["name"] == "control" and merged["world"] == control["world"]
    assert merged["ppo"] == yaml.safe_load(run_cli(["pipeline", "-c", str(REPO / "configs/pipeline/demo.yaml"),
                                                    "--print_config"]))["ppo"]  # fmt: skip


# --------------------------------------------------------------------------- the walkthrough notebook


@pytest.mark.slow
def test_walkthrough_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("LIT_RLHF_RUNS_DIR", str(tmp_path))  # the kernel inherits the environment
    monkeypatch.setenv("LIT_RLHF_PIPELINE_CONFIG", "configs/pipeline/smoke.yaml")
    notebook = nbformat.read(REPO / "notebooks" / "walkthrough.ipynb", as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the curves and the Figure-1 plot
    assert (tmp_path / "smoke" / "evaluate" / "results.json").is_file()
