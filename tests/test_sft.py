"""The SFT stage: it learns, it exports a Hugging Face directory that reloads exactly, and it fails cleanly."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from lit_rlhf.data.collate import encode_prompt
from lit_rlhf.data.modules import SFTDataModule
from lit_rlhf.generation import generate_greedy
from lit_rlhf.losses import completion_loss
from lit_rlhf.models import (
    LoraOptions,
    atomic_directory,
    ensure_pad_token,
    load_model,
    read_export_metadata,
    set_dropout,
)
from lit_rlhf.sft import SFTModule
from tests.conftest import TINY_GPT2, reverse_records, write_jsonl


def _fit(tmp_path, tokenizer_dir, records, max_steps, lr=3e-3, **module_kwargs):
    train = write_jsonl(tmp_path / "train.jsonl", records)
    L.seed_everything(0)
    data = SFTDataModule(
        train_files=str(train), val_files=str(train), tokenizer_name_or_path=str(tokenizer_dir), batch_size=8
    )
    module = SFTModule(
        model_name_or_path="scratch:gpt2", tokenizer_name_or_path=str(tokenizer_dir), model_config=TINY_GPT2,
        learning_rate=lr, warmup=0, num_sample_prompts=0, **module_kwargs,
    )  # fmt: skip
    trainer = L.Trainer(
        max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0, check_val_every_n_epoch=1000,
    )  # fmt: skip
    trainer.fit(module, data)
    return module, trainer


def test_completion_loss_counts_only_completion_tokens():
    # vocab 2; the logits favour token 0 everywhere. Labels: prompt (-100), then token 0, then token 1.
    logits = torch.tensor([[[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]]])
    labels = torch.tensor([[-100, -100, 0, 1]])
    # shifted: positions 1..3 predict labels [-100, 0, 1]; CE(token 0) = log(1 + e^-2) = 0.1269,
    # CE(token 1) = log(1 + e^2) = 2.1269; mean over the 2 counted tokens = 1.1269
    loss, n = completion_loss(logits, labels)
    assert n.item() == 2
    assert loss.item() == pytest.approx(1.1269, abs=1e-4)
    total, _ = completion_loss(logits, labels, reduction="sum")
    assert total.item() == pytest.approx(2.2539, abs=1e-4)


def test_tiny_model_overfits_eight_examples_and_exports_a_reloadable_directory(tmp_path, tokenizer_dir):
    records = reverse_records(8, seed=1)
    module, trainer = _fit(tmp_path, tokenizer_dir, records, max_steps=150)
    train_loss = trainer.callback_metrics["train/loss"].item()
    assert train_loss < 0.05, f"did not overfit: loss {train_loss}"

    tokenizer = module.tokenizer
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": r["prompt"]}], "auto") for r in records]
    answers = generate_greedy(
        module.model, prompts, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        max_new_tokens=16,
    )  # fmt: skip
    decoded = [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
    assert decoded == [r["completion"] for r in records]
    assert all(a[-1] == tokenizer.eos_token_id for a in answers), "the model learned to stop"

    export = tmp_path / "hf"  # the default export_dir: <default_root_dir>/hf
    assert read_export_metadata(export)["stage"] == "sft"
    assert sorted(p.name for p in export.glob("*.safetensors")) == ["model.safetensors"]
    reloaded = AutoModelForCausalLM.from_pretrained(export).eval()
    reloaded_tok = AutoTokenizer.from_pretrained(export)
    assert reloaded_tok.pad_token_id == tokenizer.pad_token_id != reloaded_tok.eos_token_id
    ids = torch.tensor([prompts[0] + answers[0]])
    module.model.eval()
    with torch.no_grad():
        assert torch.equal(module.model(ids).logits, reloaded(ids).logits)


def test_non_finite_loss_stops_naming_the_step_and_writes_no_export(tmp_path, tokenizer_dir):
    module_kwargs = {}
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* at global step \d+"):
        _fit(tmp_path, tokenizer_dir, reverse_records(8), max_steps=5, lr=float("inf"), **module_kwargs)
    assert not (tmp_path / "hf").exists()
    assert not list(tmp_path.glob(".hf.tmp-*"))


def test_atomic_directory_leaves_nothing_on_failure_and_replaces_on_success(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("crash mid-write")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_directory(target) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            raise RuntimeError("second run fails")
    assert [p.name for p in target.iterdir()] == ["v1"], "a failed rewrite keeps the previous complete output"


def test_pad_token_is_added_when_missing_or_equal_to_eos(tokenizer_dir):
    tok = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    tok.pad_token = tok.eos_token  # the GPT-2 habit that breaks PPO's EOS masking
    ensure_pad_token(tok)
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id

    from tokenizers import Tokenizer, models, pre_tokenizers

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    raw.add_special_tokens(["<|endoftext|>"])
    raw.add_tokens(list("abcdefgh "))
    no_pad = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>")
    size = len(no_pad)
    assert no_pad.pad_token is None
    assert ensure_pad_token(no_pad), "a new token was added"
    assert len(no_pad) == size + 1 and no_pad.pad_token_id == size
    model = load_model("scratch:gpt2", no_pad, model_config=TINY_GPT2)
    assert model.get_input_embeddings().num_embeddings == len(no_pad)
    assert model.config.pad_token_id == no_pad.pad_token_id


def test_dropout_option_reaches_every_dropout(tokenizer):
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), **TINY_GPT2))
    set_dropout(model, 0.2)
    ps = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert ps and all(p == 0.2 for p in ps)
    assert model.config.resid_pdrop == 0.2
    model.train()
    x = torch.randint(0, 100, (2, 8))
    assert not torch.equal(model(x).logits, model(x).logits), "dropout is active in train mode"


def test_lora_trains_adapters_only_and_exports_a_merged_model(tmp_path, tokenizer_dir):
    lora = LoraOptions(r=4, alpha=8, target_modules=["c_attn"])
    module, _ = _fit(tmp_path, tokenizer_dir, reverse_records(8), max_steps=3, lora=lora)
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    ids = torch.tensor([[1, 2, 3, 4]])
    module.model.eval()
    with torch.no_grad():
        assert torch.allclose(module.model(input_ids=ids).logits, reloaded(ids).logits, atol=1e-5)


def test_padding_waste_is_small_with_length_grouping(tmp_path, tokenizer_dir):
    import random

    rng = random.Random(0)
    records = [{"prompt": "x " * rng.randint(1, 60), "completion": "y"} for _ in range(256)]
    path = write_jsonl(tmp_path / "train.jsonl", records)

    def waste(group_by_length: bool) -> float:
        dm = SFTDataModule(
            train_files=str(path), val_files=str(path), tokenizer_name_or_path=str(tokenizer_dir), batch_size=16,
            group_by_length=group_by_length,
        )  # fmt: skip
        dm.setup("fit")
        return dm.padding_fraction()

    assert waste(True) < 0.1 < waste(False)


def test_trained_token_loss_equals_the_full_logits_loss(tokenizer_dir):
    # the head only at trained positions (GPT-2: a plain LM head) gives the loss and gradients of the full forward
    from lit_rlhf.losses import plain_lm_head

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    module = SFTModule(
        model_name_or_path="scratch:gpt2",
        tokenizer_name_or_path=str(tokenizer_dir),
        model_config=TINY_GPT2,
        num_sample_prompts=0,
    )
    module.model = load_model("scratch:gpt2", tok, model_config=TINY_GPT2, dropout=0.0)
    assert plain_lm_head(module.model) is not None
    ids = torch.randint(0, len(tok) - 2, (3, 10))
    labels = ids.clone()
    labels[0, :4] = labels[1, :7] = -100  # prompts of 4 and 7 tokens
    labels[2, 6:] = -100  # padding after 6 tokens
    batch = {"input_ids": ids, "attention_mask": (labels != -100) | (torch.arange(10) < 6), "labels": labels}
    batch["attention_mask"][:2] = True
    fast, n_fast = module.trained_token_loss(batch)
    fast.backward()
    fast_grads = [p.grad.clone() for p in module.model.parameters()]
    module.model.zero_grad()
    full, n_full = completion_loss(module(batch), labels, reduction="sum")
    full.backward()
    # after the shift, labels 1..9 count: row 0 from 4 on (6), row 1 from 7 on (3), row 2 up to 5 (5)
    assert n_fast == n_full == 6 + 3 + 5
    assert torch.allclose(fast, full, atol=1e-5)
    for g, p in zip(fast_grads, module.model.parameters(), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-6)


def test_logged_samples_of_an_untrained_model_stay_inside_its_positions(tmp_path, tokenizer_dir):
    # An untrained model never says EOS: 64 new tokens after a ~20-token prompt would overrun 64 positions.
    records = write_jsonl(tmp_path / "train.jsonl", reverse_records(8, seed=1))
    data = SFTDataModule(train_files=str(records), val_files=str(records), tokenizer_name_or_path=str(tokenizer_dir))
    module = SFTModule(model_name_or_path="scratch:gpt2", tokenizer_name_or_path=str(tokenizer_dir),
                       model_config={**TINY_GPT2, "n_positions": 64}, num_sample_prompts=2,
                       sample_max_new_tokens=64)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)
    assert "val/loss" in trainer.callback_metrics
