"""RewardModule: the K-wise loss against its pair loop, the EOS read-out, learning, normalisation, export, the CLI."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from lit_rlhf.data.modules import PreferenceDataModule
from lit_rlhf.models import load_model, read_export_metadata
from lit_rlhf.reward import (
    RewardModule,
    check_shift_storable,
    init_score_head,
    kwise_ranking_loss,
    normalize_scores,
    ranking_pairs,
    score_completions,
    score_head,
    top1_correct,
)
from tests.conftest import REPO, TINY_GPT2, write_jsonl

# --------------------------------------------------------------------------- the loss


def naive_kwise_loss(scores: torch.Tensor, ranks: list[list[int]]) -> torch.Tensor:
    """The oracle: InstructGPT eq. 1 written as a loop over prompts and their ordered pairs."""
    per_prompt = []
    start = 0
    for k_ranks in ranks:
        k = len(k_ranks)
        s = scores[start : start + k]
        pairs = [(i, j) for i, j in itertools.permutations(range(k), 2) if k_ranks[i] < k_ranks[j]]
        per_prompt.append(sum(-F.logsigmoid(s[i] - s[j]) for i, j in pairs) / len(pairs))
        start += k
    return torch.stack(per_prompt).mean()


def test_kwise_loss_by_hand():
    # One pair, better 1.0, worse 0.0: -log sigmoid(1) = log(1 + e^-1) = 0.31326.
    loss = kwise_ranking_loss(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # K = 3, all scores 0: every pair costs log 2, weights 1/3 each -> log 2; a second prompt (K = 2) with
    # margin 1 costs 0.31326; the batch mean is (0.69315 + 0.31326) / 2 = 0.50320.
    scores = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0])
    loss = kwise_ranking_loss(scores, torch.tensor([0, 0, 0, 1, 1]), torch.tensor([2, 0, 1, 0, 1]))
    assert loss.item() == pytest.approx((math.log(2) + math.log(1 + math.exp(-1))) / 2, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kwise_loss_equals_the_pair_loop_in_value_and_gradient_with_mixed_k(seed):
    gen = torch.Generator().manual_seed(seed)
    ks = [2, 4, 9, 3, 5, 2]
    ranks = [torch.randperm(k, generator=gen).tolist() for k in ks]
    scores = torch.randn(sum(ks), generator=gen, dtype=torch.float64) * 3
    group_ids = torch.cat([torch.full((k,), g) for g, k in enumerate(ks)])
    a = scores.clone().requires_grad_(True)
    b = scores.clone().requires_grad_(True)
    fast = kwise_ranking_loss(a, group_ids, torch.tensor(sum(ranks, [])))
    slow = naive_kwise_loss(b, ranks)
    fast.backward()
    slow.backward()
    assert torch.allclose(fast, slow, atol=1e-12)
    assert torch.allclose(a.grad, b.grad, atol=1e-12)


def test_pair_weights_are_one_over_c_k_2_and_ties_form_no_pair():
    group_ids = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    ranks = torch.tensor([0, 1, 2, 3, 0, 1, 1])  # prompt 1: completions 5 and 6 tied
    better, worse, weights = ranking_pairs(group_ids, ranks)
    pairs = set(zip(better.tolist(), worse.tolist(), strict=True))
    assert pairs == {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), (4, 5), (4, 6)}
    w = dict(zip(zip(better.tolist(), worse.tolist(), strict=True), weights.tolist(), strict=True))
    assert w[(0, 1)] == pytest.approx(1 / 6) and w[(4, 5)] == pytest.approx(1 / 2)
    # In the loss's own dtype: a float64 loss weighs with float64's 1/6, not float32's rounded up to float64.
    assert weights.dtype == torch.float32
    _, _, weights64 = ranking_pairs(group_ids, ranks, torch.float64)
    assert weights64.dtype == torch.float64 and weights64[0].item() == 1 / 6


def test_top1_counts_a_prompt_when_its_best_completion_scores_highest():
    scores = torch.tensor([0.1, 0.9, 0.5, 2.0, 1.0, 3.0])
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1])
    ranks = torch.tensor([1, 0, 2, 0, 1, 2])
    assert top1_correct(scores, group_ids, ranks).tolist() == [True, False]


def test_top1_is_strict_a_tie_for_first_place_is_a_miss():
    # A reward model collapsed to a constant: every pair is a miss (margin 0), and so is every top-1.
    scores = torch.zeros(7)
    group_ids = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    ranks = torch.tensor([0, 1, 2, 3, 1, 2, 0])
    better, worse, _ = ranking_pairs(group_ids, ranks)
    assert float((scores[better] > scores[worse]).float().mean()) == 0.0
    assert top1_correct(scores, group_ids, ranks).tolist() == [False, False]
    # the best completion ties only the second best: still a miss; strictly above all the others: a hit
    assert top1_correct(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2])).tolist() == [
        False
    ]
    assert top1_correct(torch.tensor([1.1, 1.0, 0.0]), torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2])).tolist() == [
        True
    ]
    # two completions share the best rank: either one scoring highest is a hit, even if they tie each other
    shared = torch.tensor([0, 0, 1])
    assert top1_correct(torch.tensor([2.0, 2.0, 1.0]), torch.tensor([0, 0, 0]), shared).tolist() == [True]
    assert top1_correct(torch.tensor([0.5, 2.0, 1.0]), torch.tensor([0, 0, 0]), shared).tolist() == [True]
    # all completions share one rank: nothing to get right
    assert top1_correct(torch.tensor([2.0, 1.0]), torch.tensor([0, 0]), torch.tensor([0, 0])).tolist() == [False]


# --------------------------------------------------------------------------- the model


@pytest.fixture
def scratch_rm(tokenizer):
    torch.manual_seed(0)
    model = load_model("scratch:gpt2", tokenizer, head="score", model_config=TINY_GPT2)
    init_score_head(model)
    return model.eval()


def test_head_init_is_normal_with_std_one_over_sqrt_d_plus_one(tokenizer):
    torch.manual_seed(0)
    model = load_model("scratch:gpt2", tokenizer, head="score", model_config={**TINY_GPT2, "n_embd": 1024})
    init_score_head(model)
    w = score_head(model).weight
    assert w.std().item() == pytest.approx(1 / math.sqrt(1025), rel=0.1)


def test_score_is_read_at_the_eos_and_padding_changes_nothing(scratch_rm, tokenizer):
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    short = tokenizer("\n\nHuman: cat\n\nAssistant: tac", add_special_tokens=False)["input_ids"] + [eos]
    long = tokenizer("\n\nHuman: dog bird\n\nAssistant: drib god", add_special_tokens=False)["input_ids"] + [eos]
    input_ids = torch.tensor([short + [pad] * (len(long) - len(short)), long])
    attention_mask = (input_ids != pad).long()
    out = scratch_rm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    hidden = out.hidden_states[-1]  # after ln_f
    at_eos = score_head(scratch_rm)(hidden[torch.arange(2), attention_mask.sum(1) - 1])[:, 0]
    assert torch.allclose(out.logits[:, 0], at_eos, atol=1e-6)
    alone = scratch_rm(input_ids=torch.tensor([short])).logits[0, 0]
    assert torch.allclose(out.logits[0, 0], alone, atol=1e-5)


GOOD, BAD = ["cat", "dog", "sun"], ["tree", "bird", "fish", "moon"]


def planted_rankings(n: int, seed: int) -> list[dict]:
    """Three-word answers; the more words from GOOD, the better. K is 2, 3 or 4 (mixed in every batch)."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        k = rng.choice([2, 3, 4])
        counts = sorted(rng.sample(range(4), k), reverse=True)
        answers = [" ".join(rng.sample(rng.sample(GOOD, c) + rng.sample(BAD, 3 - c), 3)) for c in counts]
        order = list(range(k))
        rng.shuffle(order)
        records.append(
            {
                "prompt": f"Pick: {rng.choice(BAD)}",
                "completions": [answers[j] for j in order],
                "ranking": sorted(range(k), key=lambda i: order[i]),
            }
        )
    return records


def _trainer(root: Path, **kwargs) -> L.Trainer:
    defaults = dict(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
    )
    return L.Trainer(**{**defaults, **kwargs})


def test_rm_learns_a_planted_preference_normalises_and_exports(tmp_path, tokenizer_dir, tokenizer):
    L.seed_everything(0)
    train = write_jsonl(tmp_path / "train.jsonl", planted_rankings(400, seed=0))
    val = write_jsonl(tmp_path / "val.jsonl", planted_rankings(100, seed=1))
    refs = write_jsonl(tmp_path / "refs.jsonl", [{"prompt": f"Pick: {w}", "completion": f"{w} cat sun"} for w in BAD])
    dm = PreferenceDataModule(
        train_files=str(train), val_files=str(val), tokenizer_name_or_path=str(tokenizer_dir), max_length=64
    )
    module = RewardModule(
        model_name_or_path="scratch:gpt2",
        tokenizer_name_or_path=str(tokenizer_dir),
        model_config=TINY_GPT2,
        learning_rate=3e-3,
        warmup=0.1,
        normalize_std=True,
        reference_files=str(refs),
        export_dir=str(tmp_path / "hf"),
    )
    trainer = _trainer(tmp_path)
    before = trainer.validate(module, dm, verbose=False)[0]
    trainer.fit(module, dm)
    assert {"train/loss", "train/pair_accuracy", "val/pair_accuracy", "val/top1_accuracy"} <= set(
        trainer.callback_metrics
    )
    (after,) = trainer.validate(module, dm, verbose=False)
    assert before["val/pair_accuracy"] < 0.8
    assert after["val/pair_accuracy"] > 0.95 and after["val/top1_accuracy"] > 0.9
    assert after["val/margin"] > 1.0 and after["val/loss"] < 0.2

    # Normalised at the end of fit: references mean 0, std 1, recorded in config.json and lit_rlhf.json.
    ref_examples = [([{"role": "user", "content": f"Pick: {w}"}], f"{w} cat sun") for w in BAD]
    ref_scores = score_completions(module.model, tokenizer, ref_examples).double()
    assert abs(ref_scores.mean().item()) < 1e-5
    assert ref_scores.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    meta = read_export_metadata(tmp_path / "hf")
    assert meta["stage"] == "rm" and meta["reward_normalization"]["n_references"] == len(BAD)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["reward_normalization"]["stored_in"] == "final_norm.bias"

    # Plain transformers reads the export and gives the same (normalised) scores.
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert torch.allclose(score_completions(plain, tokenizer, ref_examples), ref_scores.float(), atol=1e-5)
    batch = next(iter(dm.val_dataloader()))
    module.eval()  # the trainer leaves it in train mode (dropout on)
    with torch.no_grad():
        ours = module(batch["input_ids"], batch["attention_mask"])
        theirs = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_normalisation_shifts_to_mean_zero_and_optionally_scales_to_std_one(scratch_rm, tokenizer):
    refs = [([{"role": "user", "content": w}], f"{w} {w[::-1]}") for w in GOOD + BAD]
    before = score_completions(scratch_rm, tokenizer, refs).double()
    record = normalize_scores(scratch_rm, tokenizer, refs)
    after = score_completions(scratch_rm, tokenizer, refs).double()
    assert abs(after.mean().item()) < 1e-5
    assert torch.allclose(after, before - before.mean(), atol=1e-5)  # a pure shift: margins unchanged
    assert record["mean_before"] == pytest.approx(before.mean().item(), abs=1e-6) and record["scale"] == 1.0
    normalize_scores(scratch_rm, tokenizer, refs, std=True)
    scaled = score_completions(scratch_rm, tokenizer, refs).double()
    assert abs(scaled.mean().item()) < 1e-5
    assert scaled.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    assert scratch_rm.config.reward_normalization["std_before"] == pytest.approx(
        after.std(unbiased=False).item(), abs=1e-5
    )


def test_a_model_without_anywhere_to_store_the_shift_fails_before_training(tokenizer):
    llama = load_model("scratch:llama", tokenizer, head="score", model_config={"hidden_size": 64})
    with pytest.raises(ValueError, match="--model.normalize=false"):
        check_shift_storable(llama)


def test_normalize_command_rewrites_an_export(tmp_path, scratch_rm, tokenizer):
    from lit_rlhf.models import export_pretrained
    from lit_rlhf.reward import main

    export_pretrained(scratch_rm, tokenizer, tmp_path / "rm", {"stage": "rm"})
    refs = write_jsonl(tmp_path / "refs.jsonl", [{"prompt": w, "completion": w[::-1]} for w in GOOD + BAD])
    main(["normalize", str(tmp_path / "rm"), "--reference_files", str(refs), "--out_dir", str(tmp_path / "norm")])
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "norm").eval()
    examples = [([{"role": "user", "content": w}], w[::-1]) for w in GOOD + BAD]
    assert abs(score_completions(plain, tokenizer, examples).double().mean().item()) < 1e-5
    assert read_export_metadata(tmp_path / "norm")["reward_normalization"]["reference"] == str([str(refs)])


def test_rm_initialised_from_an_rm_keeps_its_head(tmp_path, scratch_rm, tokenizer, tokenizer_dir):
    from lit_rlhf.models import export_pretrained

    export_pretrained(scratch_rm, tokenizer, tmp_path / "rm", {"stage": "rm"})
    module = RewardModule(model_name_or_path=str(tmp_path / "rm"), normalize=False)
    module.configure_model()
    assert torch.equal(score_head(module.model).weight, score_head(scratch_rm).weight)


# --------------------------------------------------------------------------- CLI and configs


def test_cli_fit_from_yaml_trains_and_exports(tmp_path, tokenizer_dir):
    from lit_rlhf.cli import main

    train = write_jsonl(tmp_path / "train.jsonl", planted_rankings(24, seed=0))
    config = tmp_path / "rm.yaml"
    config.write_text(
        f"""
model:
  class_path: lit_rlhf.reward.RewardModule
  init_args:
    model_name_or_path: scratch:gpt2
    tokenizer_name_or_path: {tokenizer_dir}
    model_config: {json.dumps(TINY_GPT2)}
    learning_rate: 1.0e-3
data:
  class_path: lit_rlhf.data.modules.PreferenceDataModule
  init_args:
    train_files: {train}
    val_split: 0.25
    batch_size: 4
trainer:
  max_steps: 3
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  default_root_dir: {tmp_path / "run"}
"""
    )
    main(["fit", "-c", str(config)])
    meta = read_export_metadata(tmp_path / "run" / "hf")
    assert meta["stage"] == "rm" and meta["reward_normalization"]["reference"] == "best-ranked training completions"


@pytest.mark.parametrize("name", ["tiny", "hh_rlhf_tiny"])
def test_shipped_rm_configs_parse(name, capsys):
    from lit_rlhf.cli import main

    with pytest.raises(SystemExit) as e:
        main(["fit", "-c", str(REPO / "configs" / "rm" / f"{name}.yaml"), "--print_config"])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    assert "lit_rlhf.reward.RewardModule" in printed and "PreferenceDataModule" in printed


def test_openassistant_kwise_rankings_train_through_the_same_path(tmp_path, tokenizer_dir):
    from tests.conftest import shared_data

    lines = shared_data("oasst1_en_val_kwise_multi_turn_118.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    records.sort(key=lambda r: len(r["prompt"]) + max(map(len, r["completions"])))  # the shortest fit 1024 tokens
    sample = [r for r in records if len(r["completions"]) == 4][:1] + [
        r for r in records if len(r["completions"]) == 3
    ][:2]
    path = write_jsonl(tmp_path / "oasst.jsonl", sample)
    dm = PreferenceDataModule(
        train_files=str(path),
        val_files=str(path),
        tokenizer_name_or_path=str(tokenizer_dir),
        max_length=1024,
        template="plain",
        batch_size=3,
    )
    module = RewardModule(
        model_name_or_path="scratch:gpt2",
        tokenizer_name_or_path=str(tokenizer_dir),
        model_config={**TINY_GPT2, "n_positions": 1024},
        normalize=False,
        export_dir=str(tmp_path / "hf"),
    )
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(module, dm)
    assert trainer.global_step == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["group_ids"].max().item() == len(dm.train_dataset) - 1
    assert len(batch["group_ids"]) == sum(len(r["completion_ids"]) for r in dm.train_dataset.items)
    assert set(torch.bincount(batch["group_ids"]).tolist()) == {3, 4}
    assert "val/top1_accuracy" in trainer.callback_metrics
