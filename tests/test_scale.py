"""Scaling by flags for SFT and RM: bf16-mixed, LoRA, gradient checkpointing, FSDP2, sharded resume, bad strategies.

Each flag is shown to change something real and to train; the multi-process tests run the CLI as subprocesses on
2 CPU processes (gloo), as tests/test_ddp.py does. At most one 2-process run goes at a time (a 1-process run may go
beside it): two process groups started in the same second can race for a free port.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.strategies import ModelParallelStrategy
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lit_rlhf.cli import build_cli, main
from lit_rlhf.data.modules import PreferenceDataModule, SFTDataModule
from lit_rlhf.distributed import FSDP2Strategy, mixed_precision_dtype, strategy_problem
from lit_rlhf.models import LoraOptions
from lit_rlhf.reward import RewardModule
from lit_rlhf.sft import SFTModule
from tests.conftest import TINY_GPT2, reverse_records, write_jsonl
from tests.tolerances import (
    ADAM_STEP,
    assert_reward_models_close,
    assert_weights_close,
    loss_tolerance,
    n_weights,
    weight_tolerance,
)

TIMEOUT = 600  # seconds for one CLI subprocess: generous, the machine is shared (a quiet one needs 10-30 s)


def ranking_records(n: int, seed: int = 5) -> list[dict]:
    """K = 3 rankings whose best completion is the reversed word, then a near miss, then junk."""
    records = []
    for r in reverse_records(n, seed=seed):
        answer = r["completion"]
        records.append({"prompt": r["prompt"], "completions": ["zz", answer, answer[:-1]], "ranking": [1, 2, 0]})
    return records


def stage_config(stage: str, tmp_path: Path, tokenizer_dir: Path, n: int = 32, **model_args) -> dict:
    """A CLI config (as a dict) of a tiny SFT or RM run on CPU: constant learning rate, no validation, no logger."""
    common = {"model_name_or_path": "scratch:gpt2", "tokenizer_name_or_path": str(tokenizer_dir),
              "model_config": TINY_GPT2, "dropout": 0.0, "learning_rate": 1e-3, "warmup": 0, "min_lr_ratio": 1.0}  # fmt: skip
    if stage == "sft":
        train = write_jsonl(tmp_path / "train.jsonl", reverse_records(n, seed=3))
        model = {"class_path": "lit_rlhf.sft.SFTModule", "init_args": {**common, "num_sample_prompts": 0}}
        data = {"class_path": "lit_rlhf.data.modules.SFTDataModule", "init_args": {"train_files": str(train)}}
    else:
        train = write_jsonl(tmp_path / "rank.jsonl", ranking_records(n))
        refs = write_jsonl(tmp_path / "refs.jsonl", reverse_records(8))
        model = {"class_path": "lit_rlhf.reward.RewardModule", "init_args": {**common, "reference_files": str(refs)}}
        data = {"class_path": "lit_rlhf.data.modules.PreferenceDataModule", "init_args": {"train_files": str(train)}}
    model["init_args"].update(model_args)
    data["init_args"]["val_files"] = data["init_args"]["train_files"]
    trainer = {"accelerator": "cpu", "log_every_n_steps": 1, "num_sanity_val_steps": 0, "limit_val_batches": 0,
               "enable_progress_bar": False, "enable_checkpointing": False, "logger": False}  # fmt: skip
    return {"seed_everything": 0, "trainer": trainer, "model": model, "data": data}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def start_cli(config: Path, root: Path, *flags: str) -> subprocess.Popen:
    """``lit-rlhf fit -c config`` in a subprocess, writing under ``root`` (CSV metrics under ``root/csv``)."""
    cmd = [sys.executable, "-m", "lit_rlhf.cli", "fit", "-c", str(config), f"--trainer.default_root_dir={root}",
           "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={root}/csv", *flags]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    """Wait for a CLI subprocess; fail with its stderr unless it exited 0. Returns stderr."""
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"timed out after {TIMEOUT} s:\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    return err


def logged_losses(root: Path) -> list[float]:
    (path,) = list((root / "csv").rglob("metrics.csv"))
    return [float(r["train/loss"]) for r in csv.DictReader(open(path)) if r.get("train/loss")]


def exported_weights(root: Path) -> dict[str, torch.Tensor]:
    assert sorted(p.name for p in (root / "hf").glob("*.safetensors")) == ["model.safetensors"]
    return load_file(root / "hf" / "model.safetensors")


# --------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("stage", ["sft", "rm"])
@pytest.mark.parametrize(
    "flags",
    [["--model.lora={r: 4, target_modules: [c_attn]}"], ["--model.lora.r=4", "--model.lora.target_modules=[c_attn]"]],
)
def test_lora_from_the_command_line_trains_only_the_adapters(tmp_path, tokenizer_dir, stage, flags):
    # LightningCLI hands the LoraOptions dataclass to the module as a dict: both spellings must reach peft.
    config = write_config(tmp_path / "c.yaml", stage_config(stage, tmp_path, tokenizer_dir))
    cli = build_cli(["-c", str(config), *flags], run=False)
    cli.model.configure_model()
    params = dict(cli.model.model.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    adapters = [n for n in trainable if "lora_" in n]
    assert len(adapters) == 2 * TINY_GPT2["n_layer"], adapters  # lora_A and lora_B of c_attn in each block
    assert all(params[n].shape[0] == 4 for n in adapters if "lora_A" in n), "rank r=4"
    assert all(".c_attn." in n for n in adapters)
    # SFT trains the adapters only; the RM also trains its new score head (peft's modules_to_save).
    others = sorted(set(trainable) - set(adapters))
    assert others == ([] if stage == "sft" else ["base_model.model.score.modules_to_save.default.weight"])


# --------------------------------------------------------------------------- gradient checkpointing


@pytest.mark.parametrize(("stage", "lora"), [("sft", None), ("rm", LoraOptions(r=4))])
def test_gradient_checkpointing_recomputes_blocks_and_changes_no_number(tokenizer_dir, stage, lora):
    def build(checkpointing: bool) -> torch.nn.Module:
        cls = SFTModule if stage == "sft" else RewardModule
        torch.manual_seed(0)
        module = cls(model_name_or_path="scratch:gpt2", tokenizer_name_or_path=str(tokenizer_dir),
                     model_config=TINY_GPT2, dropout=0.0, gradient_checkpointing=checkpointing, lora=lora)  # fmt: skip
        module.configure_model()
        return module.model.train()

    plain, checkpointed = build(False), build(True)
    calls = {"plain": 0, "checkpointed": 0}
    for name, model in (("plain", plain), ("checkpointed", checkpointed)):
        attention = next(m for n, m in model.named_modules() if n.endswith("h.0.attn"))
        attention.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    input_ids = torch.randint(2, 300, (3, 12))
    outputs = {}
    for name, model in (("plain", plain), ("checkpointed", checkpointed)):
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
        logits.float().pow(2).mean().backward()
        outputs[name] = logits.detach()
    # The first block's attention runs once in forward, and once more in backward only when its activations were
    # dropped (hooks on the checkpointed block itself fire once: the recompute calls its inner forward).
    assert calls == {"plain": 1, "checkpointed": 2}
    torch.testing.assert_close(outputs["checkpointed"], outputs["plain"], atol=1e-6, rtol=0)
    grads = {n: p.grad for n, p in checkpointed.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    for n, p in plain.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[n], p.grad, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- bf16-mixed


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_bf16_mixed_computes_in_bfloat16_trains_and_exports_float32(tmp_path, tokenizer_dir, stage):
    L.seed_everything(0)
    common = dict(model_config=TINY_GPT2, dropout=0.0, learning_rate=3e-3, warmup=0, export_dir=str(tmp_path / "hf"))
    if stage == "sft":
        train = write_jsonl(tmp_path / "train.jsonl", reverse_records(8, seed=1))
        data = SFTDataModule(
            train_files=str(train), val_files=str(train), tokenizer_name_or_path=str(tokenizer_dir), batch_size=8
        )
        module = SFTModule(
            model_name_or_path="scratch:gpt2", tokenizer_name_or_path=str(tokenizer_dir), num_sample_prompts=0, **common
        )
    else:
        train = write_jsonl(tmp_path / "rank.jsonl", ranking_records(8))
        data = PreferenceDataModule(
            train_files=str(train), val_files=str(train), tokenizer_name_or_path=str(tokenizer_dir), batch_size=8
        )
        module = RewardModule(
            model_name_or_path="scratch:gpt2", tokenizer_name_or_path=str(tokenizer_dir), normalize=False, **common
        )
    recorder = LossRecorder()
    trainer = L.Trainer(
        accelerator="cpu", precision="bf16-mixed", max_steps=20, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=tmp_path, callbacks=[recorder],
    )  # fmt: skip
    dtypes = set()
    module.configure_model()
    head = module.model.get_output_embeddings() if stage == "sft" else module.model.score
    head.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
    trainer.fit(module, data)

    assert dtypes == {torch.bfloat16}, "the head ran under bf16 autocast"
    assert {p.dtype for p in module.model.parameters()} == {torch.float32}, "fp32 master weights"
    first, last = recorder.losses[0], recorder.losses[-1]
    assert last < (first - 2.0 if stage == "sft" else 0.5 * first), recorder.losses  # it trained

    weights = load_file(tmp_path / "hf" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    auto = AutoModelForCausalLM if stage == "sft" else AutoModelForSequenceClassification
    reloaded = auto.from_pretrained(tmp_path / "hf").eval()
    module.model.eval()
    input_ids = torch.randint(2, 300, (2, 10))
    with torch.no_grad():
        ours = module.model(input_ids=input_ids).logits
        theirs = reloaded(input_ids=input_ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- strategies


@pytest.mark.parametrize(
    "name", ["auto", "single_device", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp2"]
)
def test_supported_strategies_pass_the_check(name):
    assert strategy_problem(name) is None


@pytest.mark.parametrize(
    ("strategy", "says"),
    [
        ("fsdp", "--trainer.strategy=fsdp2"),
        ("fsdp_cpu_offload", "FSDP1"),
        ("deepspeed_stage_3", "DeepSpeed is not supported"),
        ("xla", "not supported"),
        (ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2), "tensor parallelism"),
    ],
)
def test_unsupported_strategies_are_refused_naming_the_supported_ones(strategy, says):
    problem = strategy_problem(strategy)
    assert says in problem
    assert "ddp" in problem and "fsdp2" in problem


def test_fsdp2_takes_its_compute_dtype_from_the_precision_and_refuses_fp16_mixed():
    assert mixed_precision_dtype("bf16-mixed") == torch.bfloat16
    assert mixed_precision_dtype("32-true") is None
    assert strategy_problem(FSDP2Strategy(), precision="bf16-mixed") is None
    assert "16-mixed" in strategy_problem(FSDP2Strategy(), precision="16-mixed")


def test_cli_refuses_fsdp1_before_building_the_trainer(tmp_path, tokenizer_dir):
    # Lightning would say "requires a GPU accelerator"; ours says which strategy to use instead.
    config = write_config(tmp_path / "c.yaml", stage_config("sft", tmp_path, tokenizer_dir))
    err = io.StringIO()
    with (
        pytest.raises(SystemExit) as exit_info,
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(err),
    ):
        main(["fit", "-c", str(config), "--trainer.strategy=fsdp", "--trainer.devices=2"])
    assert exit_info.value.code == 2
    assert re.search("FSDP1.*Use --trainer.strategy=fsdp2", err.getvalue(), re.S), err.getvalue()


@pytest.mark.slow
def test_unsupported_strategy_stops_both_processes_at_setup_instead_of_hanging(tmp_path, tokenizer_dir):
    # A strategy object Lightning accepts on CPU but the stages do not: the check in StageModule.setup raises on
    # every rank before any collective of ours, so the run ends (with the message) instead of waiting forever.
    config = stage_config("sft", tmp_path, tokenizer_dir)
    config["trainer"]["strategy"] = {
        "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
        "init_args": {"data_parallel_size": 1, "tensor_parallel_size": 2},
    }
    proc = start_cli(write_config(tmp_path / "c.yaml", config), tmp_path / "run", "--trainer.devices=2")
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the run hung")
    assert proc.returncode != 0
    assert "tensor parallelism is not supported" in err and "fsdp2" in err


# --------------------------------------------------------------------------- FSDP2 with every flag, 2 vs 1 process

LORA_TARGETS = ("c_attn", "c_proj", "c_fc")  # what lora={"r": 4} ("all-linear") adapts in GPT-2; merged on export


def is_lora_merged(name: str) -> bool:
    return name.endswith(".weight") and any(k in name for k in LORA_TARGETS)


def run_one_and_two_processes(tmp_path: Path, config: dict) -> tuple[dict, dict]:
    """The CLI run of ``config`` on 2 FSDP2 processes (4 examples each) and on 1 process (8): their exported weights."""
    path = write_config(tmp_path / "c.yaml", config)
    two = start_cli(path, tmp_path / "two", "--trainer.devices=2", "--trainer.strategy=fsdp2", "--data.batch_size=4")
    one = start_cli(path, tmp_path / "one", "--trainer.devices=1", "--data.batch_size=8")
    finish(two), finish(one)
    w1, w2 = exported_weights(tmp_path / "one"), exported_weights(tmp_path / "two")
    assert set(w1) == set(w2) and not any("lora" in n for n in w1), "adapters merged into plain weights"
    return w1, w2


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_fsdp2_with_bf16_lora_and_checkpointing_matches_one_process(tmp_path, tokenizer_dir, stage):
    """bf16 has no tolerance to argue for the weights LoRA trains: AdamW moves a weight by up to 1.17 lr a step
    whatever rounding did to its gradient, so all bf16 arithmetic bounds is each run's whole update (a merged weight
    W0 + (alpha / r) B A: alpha * (|A| + |B|) * 2 steps * 1.17 lr ~ 5e-3 each), and the two runs' difference by twice
    that, which no bug could exceed. FSDP2 even computes another function (it gathers norms and embeddings in bf16 where
    autocast keeps them fp32). What is exact is compared exactly: every weight LoRA does not train is bit-equal in
    both runs (the fp32 shards survive the bf16 gathers). The float64 test below compares the trained numbers of the
    same flags to a derived bound."""
    config = stage_config(stage, tmp_path, tokenizer_dir, gradient_checkpointing=True, lora={"r": 4})
    config["trainer"].update(max_steps=2, precision="bf16-mixed")
    w1, w2 = run_one_and_two_processes(tmp_path, config)
    losses = torch.tensor([logged_losses(tmp_path / r) for r in ("one", "two")])
    assert losses.shape == (2, 2) and losses.isfinite().all(), losses
    trained = {n for n in w1 if is_lora_merged(n)}
    if stage == "rm":  # the RM also trains its head, and normalising shifts the final LayerNorm's bias
        trained |= {"score.weight", "transformer.ln_f.bias"}
    changed = sorted(n for n in set(w1) - trained if not torch.equal(w2[n], w1[n]))
    assert len(w1) - len(trained) > 10 and changed == [], changed


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_fsdp2_with_lora_and_checkpointing_matches_one_process_in_float64(tmp_path, tokenizer_dir, stage):
    """The flags of the bf16 test in float64, where the runs differ only in summation order: bounds of test_ddp.py."""
    steps, lr = 2, 1e-3
    config = stage_config(stage, tmp_path, tokenizer_dir, gradient_checkpointing=True, lora={"r": 4}, dtype="float64")
    config["trainer"].update(max_steps=steps)
    w1, w2 = run_one_and_two_processes(tmp_path, config)
    losses_one, losses_two = logged_losses(tmp_path / "one"), logged_losses(tmp_path / "two")
    assert len(losses_one) == len(losses_two) == steps
    assert losses_two == pytest.approx(losses_one, rel=0, abs=loss_tolerance(steps, lr, n_weights(w1)))  # 1.3e-8
    # LoRA factors A (init |A| <= 1/sqrt(64), peft's Kaiming bound) and B (init 0) each move by up to the weight
    # tolerance; a merged weight W0 + (alpha / r) B A, a sum over r products, by alpha * (|A| + |B|) times that.
    tol = weight_tolerance(steps, lr)  # 5.8e-6
    merged_tol = 16 * (1 / 8 + 2 * steps * ADAM_STEP * lr) * tol  # alpha = 16, LoraOptions' default
    atol = {n: merged_tol if is_lora_merged(n) else tol if n == "score.weight" else 0.0 for n in w1}
    if stage == "sft":
        assert_weights_close(w2, w1, atol)
    else:  # the frozen final LayerNorm changes only by the normalising shift; the mean moves as a loss would
        mean_tol = loss_tolerance(steps, lr, n_weights(w1))
        assert_reward_models_close(tmp_path / "one" / "hf", tmp_path / "two" / "hf", atol, mean_tol)


# --------------------------------------------------------------------------- resume from a sharded checkpoint


@pytest.mark.slow
def test_fsdp2_checkpoint_resumes_as_an_unbroken_run_and_exports_one_directory(tmp_path, tokenizer_dir):
    """2 processes (FSDP2) train epoch 1 and save a sharded checkpoint; a second run resumes from it to epoch 2. It must
    take the steps of an unbroken 2-epoch run (one process, same global batch), in float64 to the bounds of
    tests/test_ddp.py: losses within 2.5e-8, weights within 1.2e-5 (4 steps at lr 1e-3).

    The runs count epochs, not steps: a ``max_steps`` run resumed from a checkpoint written at an epoch's end (with
    Lightning 2.6) cuts the resumed epoch short, so its next batch differs from an unbroken run's.
    """
    steps, lr = 4, 1e-3
    config = stage_config("sft", tmp_path, tokenizer_dir, n=16, dtype="float64")  # 16 examples / batch 8: 2 steps
    config["trainer"].update(max_epochs=2, enable_checkpointing=True)
    path = write_config(tmp_path / "c.yaml", config)
    fsdp2 = ("--trainer.devices=2", "--trainer.strategy=fsdp2", "--data.batch_size=4")
    first = start_cli(path, tmp_path / "first", *fsdp2, "--trainer.max_epochs=1")
    unbroken = start_cli(path, tmp_path / "unbroken", "--trainer.devices=1", "--data.batch_size=8")
    finish(first), finish(unbroken)

    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"  # the stable place --ckpt_path=last reads
    assert checkpoint.is_dir() and len(list(checkpoint.glob("*.distcp"))) == 2, "one shard per process"
    finish(start_cli(path, tmp_path / "resumed", *fsdp2, f"--ckpt_path={checkpoint}"))

    w_unbroken, w_resumed = exported_weights(tmp_path / "unbroken"), exported_weights(tmp_path / "resumed")
    full = logged_losses(tmp_path / "unbroken")
    assert len(full) == steps and full[-1] < full[0]
    loss_tol = loss_tolerance(steps, lr, n_weights(w_unbroken))
    assert logged_losses(tmp_path / "first") == pytest.approx(full[:2], rel=0, abs=loss_tol)
    assert logged_losses(tmp_path / "resumed") == pytest.approx(full[2:], rel=0, abs=loss_tol)
    assert_weights_close(w_resumed, w_unbroken, weight_tolerance(steps, lr))
    AutoModelForCausalLM.from_pretrained(tmp_path / "resumed" / "hf")  # a plain Hugging Face directory


# --------------------------------------------------------------------------- generation on gathered weights


def test_gathered_holds_an_fsdp2_model_whole_for_generation_then_shards_it_again(tokenizer_dir):
    """Inside ``gathered`` every parameter is whole and stays whole across forwards (no per-step all-gather); on
    leaving, every parameter is a shard again and the model gives the same tokens as before. One process, a mesh of
    one: the bookkeeping is FSDP2's own whatever the mesh size (tests/test_ppo_ddp.py runs it on two)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lit_rlhf.distributed import gathered, shard_model
    from lit_rlhf.models import load_model, load_tokenizer

    def dtensors(model) -> int:
        return sum(type(p).__name__ == "DTensor" for p in model.parameters())

    tok = load_tokenizer(str(tokenizer_dir))
    torch.manual_seed(0)
    model = load_model("scratch:gpt2", tok, model_config=TINY_GPT2)
    prompt = torch.tensor([tok("reverse abc")["input_ids"]])
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": tok.pad_token_id}
    expected = model.generate(prompt, **kwargs)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        shard_model(model, init_device_mesh("cpu", (1,)))
        n_params = len(list(model.parameters()))
        assert dtensors(model) == n_params
        with gathered(model) as whole:
            assert dtensors(whole) == 0
            out = whole.generate(prompt, **kwargs)
            assert dtensors(whole) == 0, "a forward inside must not reshard"
        assert dtensors(model) == n_params, "sharded again on leaving"
        assert torch.equal(out, expected)
        assert torch.equal(model.generate(prompt, **kwargs), expected)  # the ordinary sharded path agrees
    finally:
        dist.destroy_process_group()
