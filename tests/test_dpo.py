"""DPOModule: the loss by hand and against a pair loop, completion log-probabilities, the reference (copy, LoRA,
precomputed), learning a known preference, the export and the CLI."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lit_rlhf.cli import main
from lit_rlhf.data.collate import encode_completion, encode_prompt
from lit_rlhf.data.modules import PreferenceCollator, PreferenceDataModule
from lit_rlhf.dpo import DPOModule, completion_logps, dpo_loss, dpo_pair_losses
from lit_rlhf.models import load_model, read_export_metadata
from tests.conftest import TINY_GPT2, WORDS, run_cli, write_jsonl
from tests.tolerances import U64, assert_weights_close, weight_tolerance

# --------------------------------------------------------------------------- the loss


def test_pair_losses_by_hand():
    # h = 1 nat, beta 0.1: DPO -log sigmoid(0.1) = log(1 + e^-0.1) = 0.644397; IPO (1 - 1/(2 * 0.1))^2 = 16;
    # label smoothing 0.2: 0.8 * 0.644397 + 0.2 * log(1 + e^0.1) = 0.8 * 0.644397 + 0.2 * 0.744397 = 0.664397.
    h = torch.tensor([1.0], dtype=torch.float64)
    assert dpo_pair_losses(h, 0.1).item() == pytest.approx(math.log1p(math.exp(-0.1)), abs=1e-12)
    assert dpo_pair_losses(h, 0.1, "ipo").item() == pytest.approx(16.0, abs=1e-12)
    smoothed = 0.8 * math.log1p(math.exp(-0.1)) + 0.2 * math.log1p(math.exp(0.1))
    assert dpo_pair_losses(h, 0.1, label_smoothing=0.2).item() == pytest.approx(smoothed, abs=1e-12)
    with pytest.raises(ValueError, match="--model.loss_type"):
        dpo_pair_losses(h, 0.1, "hinge")


def test_dpo_loss_by_hand():
    # One pair: policy log-probs (-1, -2), reference (-1.5, -1.5): h = 0.5 - (-0.5) = 1; beta 0.5 -> -log sigmoid(0.5).
    # The implicit rewards are beta * (policy - reference): 0.25 and -0.25.
    loss, better, worse = dpo_loss(
        torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.5]), torch.tensor([0, 0]), torch.tensor([0, 1]), beta=0.5
    )
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-6)
    assert better.tolist() == pytest.approx([0.25]) and worse.tolist() == pytest.approx([-0.25])
    # Policy equal to the reference: every pair costs log 2, whatever K.
    zeros = torch.zeros(5)
    loss, _, _ = dpo_loss(zeros, zeros, torch.tensor([0, 0, 0, 1, 1]), torch.tensor([2, 0, 1, 1, 0]), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


def naive_kwise_dpo(logps, ref, ranks: list[list[int]], beta: float, loss_type: str) -> torch.Tensor:
    """The oracle: a loop over prompts and their ordered pairs, each prompt's pairs averaged, prompts averaged."""
    per_prompt, start = [], 0
    for k_ranks in ranks:
        k = len(k_ranks)
        h = logps[start : start + k] - ref[start : start + k]
        pairs = [(i, j) for i, j in itertools.permutations(range(k), 2) if k_ranks[i] < k_ranks[j]]
        if loss_type == "sigmoid":
            terms = [-F.logsigmoid(beta * (h[i] - h[j])) for i, j in pairs]
        else:
            terms = [(h[i] - h[j] - 1 / (2 * beta)) ** 2 for i, j in pairs]
        per_prompt.append(sum(terms) / len(pairs))
        start += k
    return torch.stack(per_prompt).mean()


@pytest.mark.parametrize(("seed", "loss_type"), [(0, "sigmoid"), (1, "sigmoid"), (2, "ipo"), (3, "ipo")])
def test_kwise_dpo_equals_the_pair_loop_in_value_and_gradient(seed, loss_type):
    g = torch.Generator().manual_seed(seed)
    ks = [2, 4, 3, 9]
    ranks = [torch.randperm(k, generator=g).tolist() for k in ks]
    n = sum(ks)
    logps = (-10 * torch.rand(n, generator=g, dtype=torch.float64)).requires_grad_()
    ref = -10 * torch.rand(n, generator=g, dtype=torch.float64)
    group_ids = torch.tensor([i for i, k in enumerate(ks) for _ in range(k)])
    loss, _, _ = dpo_loss(logps, ref, group_ids, torch.tensor(sum(ranks, [])), beta=0.3, loss_type=loss_type)
    (grad,) = torch.autograd.grad(loss, logps)
    expected = naive_kwise_dpo(logps, ref, ranks, 0.3, loss_type)
    (expected_grad,) = torch.autograd.grad(expected, logps)
    # float64, sums of at most 36 terms of size <= 50 in another order: 2 * 36 * U64 * 50 * 36 < 1e-11
    assert loss.item() == pytest.approx(expected.item(), abs=1e-11)
    torch.testing.assert_close(grad, expected_grad, atol=1e-11, rtol=0)


# --------------------------------------------------------------------------- log-probabilities of completions


def test_completion_logps_sum_the_completion_tokens_only(tokenizer):
    model = load_model("scratch:gpt2", tokenizer, model_config=TINY_GPT2, dtype="float64").eval()
    examples = [
        {"prompt_ids": [5, 6, 7], "completion_ids": [[8, 9, 2], [10, 2]], "ranks": [0, 1]},
        {"prompt_ids": [11], "completion_ids": [[12, 13, 14, 2], [15, 2]], "ranks": [1, 0]},
    ]
    batch = PreferenceCollator(tokenizer.pad_token_id)(examples)
    with torch.no_grad():
        fast = completion_logps(model, batch)  # the LM head at the completion positions only
        full = completion_logps(model, batch, head_only_where_needed=False)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logprobs = torch.log_softmax(logits, dim=-1)
    expected, row = [], 0
    for e in examples:
        start = len(e["prompt_ids"])
        for completion in e["completion_ids"]:
            expected.append(sum(logprobs[row, start + t - 1, tok] for t, tok in enumerate(completion)))
            row += 1
    expected = torch.stack(expected)
    # float64: each figure is a sum of <= 4 log-softmaxes over 320 logits of size ~1; round-off ~ 1e3 * U64 per figure
    torch.testing.assert_close(fast, expected, atol=1e4 * U64, rtol=0)
    torch.testing.assert_close(full, expected, atol=1e4 * U64, rtol=0)


# --------------------------------------------------------------------------- the module on tiny data


def _preference_files(tmp_path, n: int = 24, k: int = 2):
    """Prompts 'Say a word: <word>' whose better completion starts with 'x', the worse ones with 'q'."""
    records = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        completions = [f"x {w}", *[f"q {w}" + " q" * j for j in range(k - 1)]]
        records.append({"prompt": f"Say a word: {w}", "completions": completions, "ranking": list(range(k))})
    return write_jsonl(tmp_path / "prefs.jsonl", records)


def _fit(tmp_path, tokenizer_dir, name: str, steps: int = 4, lr: float = 1e-3, **model_kwargs):
    files = _preference_files(tmp_path, k=model_kwargs.pop("k", 2))
    model = DPOModule(
        model_name_or_path="scratch:gpt2",
        tokenizer_name_or_path=str(tokenizer_dir),
        model_config=TINY_GPT2,
        learning_rate=lr,
        warmup=0,
        export_dir=str(tmp_path / name / "hf"),
        **model_kwargs,
    )
    data = PreferenceDataModule(
        train_files=str(files), val_files=str(files), tokenizer_name_or_path=str(tokenizer_dir), batch_size=4
    )
    L.seed_everything(0)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False, enable_checkpointing=False,
        num_sanity_val_steps=0, enable_model_summary=False, default_root_dir=str(tmp_path / name),
        limit_val_batches=0,
    )  # fmt: skip
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer.callbacks.append(Record())
    trainer.fit(model, datamodule=data)
    return model, losses


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8}])
def test_the_policy_starts_equal_to_its_reference(tmp_path, tokenizer_dir, lora):
    # h = 0 for every pair at the first step: the loss is log 2 exactly (a reference read from other weights, or
    # dropout left on in the policy, would move it). Under LoRA the reference is the model with adapters off.
    model, losses = _fit(tmp_path, tokenizer_dir, "start", steps=1, dtype="float64", lora=lora, k=3)
    assert (model.ref_model is None) == (lora is not None)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-12)


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8}])
def test_dpo_raises_the_preferred_tokens_probability(tmp_path, tokenizer_dir, tokenizer, lora):
    # Every better completion opens with 'x', every worse one with 'q': DPO must raise the probability of 'x' as the
    # first answer token, against the reference's, and lower that of 'q'.
    model, losses = _fit(tmp_path, tokenizer_dir, "learn", steps=12, lr=3e-3, lora=lora)
    assert losses[-1] < losses[0]
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "learn" / "hf").eval()  # plain transformers, merged
    assert read_export_metadata(tmp_path / "learn" / "hf")["stage"] == "dpo"
    messages = [{"role": "user", "content": "Say a word: sun"}]
    x_ids, q_ids = (encode_completion(tokenizer, messages, text) for text in ("x sun", "q sun"))
    at = next(i for i, (a, b) in enumerate(zip(x_ids, q_ids, strict=False)) if a != b)  # the first answer token
    x, q = x_ids[at], q_ids[at]
    context = torch.tensor([encode_prompt(tokenizer, messages) + x_ids[:at]])
    with torch.no_grad(), model.reference() as reference:
        before = torch.log_softmax(reference(context).logits[0, -1].double(), -1)
    with torch.no_grad():
        after = torch.log_softmax(exported(context).logits[0, -1].double(), -1)
    assert after[x] - before[x] > 0.5, "the preferred token's log-probability rose"
    assert after[q] - before[q] < -0.5, "the rejected token's fell"


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8}])
def test_precomputed_reference_trains_exactly_as_the_live_one(tmp_path, tokenizer_dir, lora):
    # The same reference log-probabilities, computed once before training or at every step from the kept reference:
    # float64 runs that differ only in how the reference's batches are padded and summed.
    steps, lr = 4, 1e-3
    live, _ = _fit(tmp_path, tokenizer_dir, "live", steps=steps, lr=lr, dtype="float64", lora=lora, k=3)
    pre, _ = _fit(tmp_path, tokenizer_dir, "pre", steps=steps, lr=lr, dtype="float64", lora=lora, k=3,
                  precompute_reference=True)  # fmt: skip
    assert pre.ref_model is None, "the copy is freed once its log-probabilities are computed"
    w_live = load_file(tmp_path / "live" / "hf" / "model.safetensors")
    w_pre = load_file(tmp_path / "pre" / "hf" / "model.safetensors")
    assert_weights_close(w_pre, w_live, atol=weight_tolerance(steps, lr))
    moved = max(float((w_live[k] - w).abs().max()) for k, w in load_file_start(tmp_path, tokenizer_dir).items())
    assert moved > 100 * weight_tolerance(steps, lr), "training moved the weights far beyond the tolerance"


def load_file_start(tmp_path, tokenizer_dir) -> dict[str, torch.Tensor]:
    """The starting weights of :func:`_fit` (seed 0), exported without training."""
    _fit(tmp_path, tokenizer_dir, "zero", steps=0, dtype="float64")
    return load_file(tmp_path / "zero" / "hf" / "model.safetensors")


def test_bad_options_name_their_flags(tokenizer_dir):
    scratch = {"model_name_or_path": "scratch:gpt2", "tokenizer_name_or_path": str(tokenizer_dir)}
    with pytest.raises(ValueError) as err:
        DPOModule(**scratch, beta=0, loss_type="ipo", label_smoothing=0.1)
    text = str(err.value)
    assert "--model.beta must be > 0" in text and "--model.label_smoothing applies to" in text
    with pytest.raises(FileNotFoundError, match="--model.reference_model_path"):
        DPOModule(**scratch, reference_model_path="./no/such/dir")


def test_cli_fits_dpo_on_preference_files_and_refuses_sft_records(tmp_path, tokenizer_dir):
    files = _preference_files(tmp_path)
    args = [
        "fit", "--model=DPOModule", "--model.model_name_or_path=scratch:gpt2",
        f"--model.tokenizer_name_or_path={tokenizer_dir}", f"--model.model_config={json.dumps(TINY_GPT2)}",
        "--data=PreferenceDataModule", f"--data.train_files={files}", "--data.val_split=0.25",
        "--data.batch_size=4", "--trainer.max_steps=2", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path / 'run'}", "--model.loss_type=ipo",
    ]  # fmt: skip
    run_cli(args)
    meta = read_export_metadata(tmp_path / "run" / "hf")
    assert meta["stage"] == "dpo" and meta["hparams"]["loss_type"] == "ipo"
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf")
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": "b"}] * 8)
    swap = {
        "--data=PreferenceDataModule": "--data=SFTDataModule",
        f"--data.train_files={files}": f"--data.train_files={sft}",
    }
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as stderr:
        main([swap.get(a, a) for a in args])
    assert "DPOModule trains on PreferenceDataModule records; got SFTDataModule (--data)" in stderr.getvalue()
