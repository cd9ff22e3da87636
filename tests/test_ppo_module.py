"""PPOModule on tiny models built from configs: it learns a rule-based reward, PPO-ptx holds the LM loss, the first
update has ratio 1, a resumed run matches an unbroken one, and bad configurations fail at start naming the flag."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file

from lit_rlhf.data.prompts import PromptDataModule
from lit_rlhf.models import export_pretrained, load_model, load_tokenizer
from lit_rlhf.ppo.module import PPOModule
from tests.conftest import TINY_GPT2, reverse_records, write_jsonl

LETTERS = set("abcdefghijklmnopqrstuvwxyz")


def letter_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Toy rule: the share of a response's characters that are lowercase letters (0 for an empty response)."""
    return [sum(c in LETTERS for c in r) / max(len(r), 1) for r in responses]


def build_dirs(root: Path, tokenizer_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """A tiny random-init policy ("SFT") directory and a reward-model directory, both from configs."""
    tok = load_tokenizer(str(tokenizer_dir))
    torch.manual_seed(seed)
    sft = export_pretrained(load_model("scratch:gpt2", tok, model_config=TINY_GPT2), tok, root / "sft")
    rm = export_pretrained(load_model("scratch:gpt2", tok, head="score", model_config=TINY_GPT2), tok, root / "rm")
    return sft, rm


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tokenizer_dir) -> tuple[Path, Path]:
    return build_dirs(tmp_path_factory.mktemp("ppo_models"), tokenizer_dir)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ppo_data")
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": r["prompt"]} for r in reverse_records(64, seed=1)])
    texts = [{"text": f"{r['prompt']} is {r['completion']}."} for r in reverse_records(64, seed=2)]
    return prompts, write_jsonl(root / "corpus.jsonl", texts)


def make(
    model_dirs, data_files, tokenizer_dir, *, batch_size: int = 8, pretraining: bool = False, **options
) -> tuple[PPOModule, PromptDataModule]:
    sft, rm = model_dirs
    prompts, corpus = data_files
    defaults = {"max_new_tokens": 8, "minibatch_size": 4, "micro_batch_size": 2, "ppo_epochs": 1,
                "learning_rate": 1e-3, "warmup": 0, "log_samples_every_n_iterations": 0}  # fmt: skip
    if "reward_fn" not in options:
        options.setdefault("reward_model_path", str(rm))
    module = PPOModule(model_name_or_path=str(sft), **{**defaults, **options})
    data = PromptDataModule(
        train_files=str(prompts),
        val_files=str(prompts),
        pretraining_files=str(corpus) if pretraining else None,
        tokenizer_name_or_path=str(tokenizer_dir),
        batch_size=batch_size,
        seed=0,
    )
    return module, data


def trainer(root: Path, iterations: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        limit_train_batches=iterations,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **{"enable_checkpointing": False, "max_epochs": 1, **kwargs},
    )


def test_first_minibatch_ratio_is_exactly_one(tmp_path, model_dirs, data_files, tokenizer_dir):
    # trim_padding=False: the update forwards the rollout's own matrix shapes, so the ratio is 1 bit for bit
    module, data = make(model_dirs, data_files, tokenizer_dir, ppo_epochs=2, trim_padding=False)
    trainer(tmp_path, iterations=1).fit(module, data)
    first = module.minibatch_stats[0]
    assert first["ratio_mean"] == 1.0
    assert first["approxkl"] == 0.0
    assert first["clipfrac"] == 0.0
    # later minibatches see an updated policy
    assert module.minibatch_stats[-1]["approxkl"] > 0
    assert (tmp_path / "hf" / "model.safetensors").exists()


def test_shared_value_head_reads_the_policy_forward_and_trains(tmp_path, model_dirs, data_files, tokenizer_dir):
    module, data = make(model_dirs, data_files, tokenizer_dir, ppo_epochs=2, trim_padding=False, value_model="shared")
    trainer(tmp_path, iterations=1).fit(module, data)
    assert module.value_model is None, "no fourth model"
    first = module.minibatch_stats[0]
    assert first["ratio_mean"] == 1.0 and first["approxkl"] == 0.0  # the same forward gives log-probs and values
    # the zero-initialised head predicts 0 at rollout time; the value loss moved it
    assert float(module.value_head.weight.abs().sum()) > 0
    assert module.minibatch_stats[-1]["value_loss"] < first["value_loss"]
    exported = load_file(tmp_path / "hf" / "model.safetensors")
    assert not any("value" in name for name in exported), "the value head is not part of the policy export"

    with pytest.raises(ValueError, match=r"--model.value_model_path needs --model.value_model=separate"):
        make(model_dirs, data_files, tokenizer_dir, value_model="shared", value_model_path=str(model_dirs[1]))


def test_frozen_models_in_bfloat16_and_checkpointed_policy(tmp_path, model_dirs, data_files, tokenizer_dir):
    module, data = make(model_dirs, data_files, tokenizer_dir, frozen_dtype="bfloat16", gradient_checkpointing=True)
    trainer(tmp_path, iterations=1).fit(module, data)
    assert {p.dtype for p in module.ref_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in module.reward_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in module.model.parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in module.ref_model.parameters())
    assert module.model.is_activation_checkpointing and module.value_model.is_activation_checkpointing
    assert module.minibatch_stats and all(torch.isfinite(torch.tensor(list(s.values()))).all()
                                          for s in module.minibatch_stats)  # fmt: skip


def test_ppo_raises_a_rule_based_reward_with_bounded_kl(tmp_path, model_dirs, data_files, tokenizer_dir):
    torch.manual_seed(0)
    module, data = make(model_dirs, data_files, tokenizer_dir, reward_fn=letter_reward, batch_size=16,
                        minibatch_size=8, micro_batch_size=8, ppo_epochs=2, learning_rate=3e-3, kl_coef=0.02,
                        no_eos_score=None)  # fmt: skip
    scores, kls = [], []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            scores.append(float(trainer.callback_metrics["ppo/score_mean"]))
            kls.append(float(trainer.callback_metrics["ppo/kl"]))

    trainer(tmp_path, iterations=4, callbacks=[Record()], max_epochs=4).fit(module, data)
    start, end = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert end > start + 0.15, scores
    assert max(kls) < 10.0, kls


def pretrain(policy_dir: Path, tokenizer_dir: Path, texts: list[str], out: Path, steps: int = 60) -> Path:
    """Fit the tiny policy to ``texts`` so it has a pretraining loss worth keeping."""
    tok = load_tokenizer(str(tokenizer_dir))
    model = load_model(str(policy_dir), tok)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        batch = texts[(step * 16) % len(texts) :][:16]
        loss = lm_loss(model, tok, batch, grad=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return export_pretrained(model, tok, out)


def lm_loss(model: torch.nn.Module, tokenizer, texts: list[str], grad: bool = False):
    """Mean next-token loss of ``model`` on ``texts`` (the pretraining objective PPO-ptx protects)."""
    from lit_rlhf.data.collate import IGNORE_INDEX, pad_right
    from lit_rlhf.losses import completion_loss

    seqs = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    ids = pad_right(seqs, tokenizer.pad_token_id)
    with torch.set_grad_enabled(grad):
        logits = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long()).logits
        loss = completion_loss(logits, pad_right(seqs, IGNORE_INDEX))[0]
    return loss if grad else float(loss)


def test_ptx_keeps_the_pretraining_loss_near_its_start(tmp_path, model_dirs, data_files, tokenizer_dir):
    import json

    texts = [json.loads(line)["text"] for line in open(data_files[1])]
    torch.manual_seed(0)
    policy = pretrain(model_dirs[0], tokenizer_dir, texts, tmp_path / "pretrained")
    tok = load_tokenizer(str(tokenizer_dir))
    start = lm_loss(load_model(str(policy), tok), tok, texts)
    rise = {}
    for ptx_coef in (0.0, 4.0):
        module, data = make((policy, model_dirs[1]), data_files, tokenizer_dir, reward_fn=letter_reward,
                            no_eos_score=None, ptx_coef=ptx_coef, ptx_examples_per_episode=2,
                            pretraining=ptx_coef > 0, learning_rate=3e-3, rollout_seed=1)  # fmt: skip
        trainer(tmp_path / str(ptx_coef), iterations=4, max_epochs=2).fit(module, data)
        rise[ptx_coef] = lm_loss(module.model, tok, texts) - start
    # plain PPO at this learning rate forgets the corpus; PPO-ptx stays much closer to where it started
    assert rise[0.0] > 0.1, rise
    assert abs(rise[4.0]) < 0.5 * rise[0.0], rise


def test_resumed_run_matches_an_unbroken_run(tmp_path, model_dirs, data_files, tokenizer_dir):
    # In float64 (all four models), to the bounds of tests/test_ddp.py: one process adds in the same order either way,
    # so the runs should agree exactly; the bounds only allow for summation order, far under what a state the
    # checkpoint forgot would change (the sampler's, the controller's, the EMA's: ~lr = 1e-3 a step).
    from tests.tolerances import assert_weights_close, loss_tolerance, weight_tolerance

    options = {"kl_target": 1.0, "kl_horizon": 100.0, "ema_decay": 0.9, "ppo_epochs": 2, "no_eos_score": -0.5,
               "dtype": "float64"}  # fmt: skip
    steps_per_iteration = 2 * (8 // 4)  # ppo_epochs x minibatches per rollout

    def run(name: str, ckpt_path: str | None = None) -> PPOModule:
        module, data = make(model_dirs, data_files, tokenizer_dir, **options)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / name / "ckpt", every_n_train_steps=2 * steps_per_iteration,
                                     save_top_k=-1)  # fmt: skip
        trainer(tmp_path / name, iterations=4, enable_checkpointing=True, callbacks=[checkpoint]).fit(
            module, data, ckpt_path=ckpt_path
        )
        return module

    unbroken = run("unbroken")
    # the checkpoint after iteration 2 of 4, mid-epoch: the resumed run repeats the 8 steps of iterations 3 and 4
    ckpt = tmp_path / "unbroken" / "ckpt" / f"epoch=0-step={2 * steps_per_iteration}.ckpt"
    resumed = run("resumed", ckpt_path=str(ckpt))
    steps, lr = 2 * steps_per_iteration, 1e-3
    n_trained = sum(p.numel() for p in unbroken.parameters() if p.requires_grad)  # policy and value model
    assert resumed.iteration == unbroken.iteration == 4
    # The controller multiplies beta by 1 + (kl / kl_target - 1) * 8 / kl_horizon (clipped) per iteration: its relative
    # difference is under kl's, a statistic of the rollout bounded like a loss (1e-7).
    kl_tol = loss_tolerance(steps, lr, n_trained)
    assert resumed.kl_controller.value == pytest.approx(unbroken.kl_controller.value, rel=kl_tol, abs=0)
    assert unbroken.kl_controller.value != 1.0  # the adaptive controller moved, so its state mattered
    state_a, state_b = unbroken.state_dict(), resumed.state_dict()
    floats = {n for n, t in state_a.items() if t.is_floating_point()}
    assert all(torch.equal(state_b[n], state_a[n]) for n in set(state_a) - floats)
    tol = weight_tolerance(steps, lr)  # 2.3e-5
    assert_weights_close({n: state_b[n] for n in floats}, {n: state_a[n] for n in floats}, tol)  # all four models
    exported_a = load_file(tmp_path / "unbroken" / "hf" / "model.safetensors")  # the EMA weights
    exported_b = load_file(tmp_path / "resumed" / "hf" / "model.safetensors")
    assert_weights_close(exported_b, exported_a, tol)


def test_bad_options_fail_at_start_naming_every_flag(tmp_path, model_dirs, data_files, tokenizer_dir):
    with pytest.raises(ValueError) as err:
        PPOModule(model_name_or_path="x", minibatch_size=6, micro_batch_size=4, temperature=0.0, top_p=1.5)
    message = str(err.value)
    for flag in ("reward_model_path", "--model.micro_batch_size=4", "--model.temperature", "--model.top_p"):
        assert flag in message

    module, data = make(model_dirs, data_files, tokenizer_dir, minibatch_size=3, micro_batch_size=1)
    with pytest.raises(ValueError, match=r"minibatch_size=3 must divide the rollout batch --data.batch_size=8"):
        trainer(tmp_path, iterations=1).fit(module, data)

    module, data = make(model_dirs, data_files, tokenizer_dir, ptx_coef=1.0)
    with pytest.raises(ValueError, match=r"--data.pretraining_files"):
        trainer(tmp_path, iterations=1).fit(module, data)

    module, data = make(model_dirs, data_files, tokenizer_dir)
    with pytest.raises(ValueError, match=r"--trainer.max_steps counts optimizer steps"):
        trainer(tmp_path, iterations=1, max_steps=4).fit(module, data)

    # The longest prompt and the response must fit the policy's positions, or a GPT-2 stops with an IndexError in
    # the middle of a rollout.
    positions = json.loads((model_dirs[0] / "config.json").read_text())["n_positions"]
    module, data = make(model_dirs, data_files, tokenizer_dir, max_new_tokens=positions)
    with pytest.raises(ValueError, match=rf"--model.max_new_tokens={positions} = \d+ tokens, more than the {positions} "
                                         "positions"):  # fmt: skip
        trainer(tmp_path, iterations=1).fit(module, data)


def test_unsupported_strategies_are_refused_before_any_model_loads():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from lit_rlhf.distributed import FSDP2Strategy

    module = PPOModule("a/policy/that/is/never/loaded", reward_model_path="never/loaded")
    module._trainer = SimpleNamespace(strategy=FSDPStrategy(), precision="32-true")
    with pytest.raises(ValueError, match=r"FSDP1.*--trainer.strategy=fsdp2"):
        module.setup("fit")
    for strategy in (DDPStrategy(), FSDP2Strategy()):
        module._trainer = SimpleNamespace(strategy=strategy, precision="32-true")
        module.check_strategy()  # both supported
    assert module.model is None, "nothing was loaded"


def test_every_logged_metric_is_in_the_stable_names_table_and_back(tmp_path, model_dirs, data_files, tokenizer_dir):
    # Scripts rely on the table in PPOModule's docstring: a metric logged but not listed (or listed but never
    # logged) is a broken promise. PPO-ptx, so ppo/ptx_loss is logged too.
    import re

    from lit_rlhf.ppo.module import __doc__ as module_doc

    rows = dict(re.findall(r"^``(ppo/[a-z_0-9]+)``\s+(\[[a-z_>0-9]+\])?", module_doc, re.M))
    only_when = {"[kl_in_loss]", "[k>1]"}  # a plain PPO run logs every name but these
    table = {name for name, when in rows.items() if when not in only_when}
    module, data = make(model_dirs, data_files, tokenizer_dir, pretraining=True, ptx_coef=0.5)
    run = trainer(tmp_path, iterations=1)
    run.fit(module, data)
    logged = {name for name in run.callback_metrics if name.startswith("ppo/")}
    assert logged == table
    # a critic-free run with k samples and the KL in the loss logs every name but the value model's
    table = {name for name, when in rows.items() if when != "[gae]"}
    module, data = make(model_dirs, data_files, tokenizer_dir, pretraining=True, ptx_coef=0.5,
                        advantage_estimator="grpo", samples_per_prompt=2, kl_in_loss=True)  # fmt: skip
    run = trainer(tmp_path / "grpo", iterations=1)
    run.fit(module, data)
    logged = {name for name in run.callback_metrics if name.startswith("ppo/")}
    assert logged == table
