"""lit_rlhf against TRL 1.12 on the same work: SFT, reward model, PPO and DPO, side by side in one invocation.

    python benchmarks/compare.py --stages sft,rm,ppo,dpo --repeats 3 --json runs/compare.json

Both sides train the same tiny model (GPT-2, 4 layers x 256, a byte-level BPE tokenizer trained here, vocab
1536, random initialisation, fp32) on the same token ids: the records are tokenised once by lit_rlhf's DataModules
and TRL receives those ids pre-tokenised, so prompts, completions, EOS and truncation are identical. Every
repetition of every side runs in a fresh process (peak RSS is its own); the sides alternate, and which goes first
alternates too. The ratio is taken per repetition (lit_rlhf / TRL of the two adjacent runs) and reported as
min-median-max.

What is measured, per stage (after untimed warm-up steps):

- SFT: sequences/s and trained tokens/s (completion tokens the loss counts).
- RM: comparisons/s (ordered pairs the loss sees; a K = 4 prompt gives C(4, 2) = 6) and forwarded tokens/s (the
  non-padding tokens each side actually runs through the model: K-wise forwards each completion once, pairs
  forward each completion once per pair).
- PPO: episodes/s and response tokens/s (episodes x padded response length, as both sides forward it).
- DPO: pairs/s (a pair = one chosen and one rejected completion of a prompt) and forwarded tokens/s (the non-padding
  tokens of both sequences of each pair; the policy and the frozen reference each forward them once a step).
- Peak memory: the process's peak resident set size (imports, models, optimiser, activations).

Settings that differ between the sides, and why, are printed by ``--list-differences`` and kept in
:data:`DIFFERENCES`. TRL is optional (``pip install -e '.[bench]'``); without it only the lit_rlhf side runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGES = ("sft", "rm", "ppo", "dpo")
SIDES = ("lit_rlhf", "trl")
SAMPLE_UNIT = {"sft": "sequences", "rm": "comparisons", "ppo": "episodes", "dpo": "pairs"}
TOKEN_UNIT = {"sft": "trained tokens", "rm": "forwarded tokens", "ppo": "response tokens", "dpo": "forwarded tokens"}


@dataclass(frozen=True)
class Settings:
    """Everything both sides share. Batch sizes are per optimizer step unless named micro."""

    seed: int = 0
    threads: int = 2
    vocab_size: int = 1536
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_positions: int = 256
    learning_rate: float = 1e-5
    # SFT: 16 sequences a step, at most 128 tokens, loss on completion tokens only, length-grouped batches.
    sft_batch_size: int = 16
    sft_max_length: int = 128
    sft_steps: int = 20
    sft_warmup: int = 3
    # RM: K completions per prompt; lit_rlhf takes rm_prompts prompts a step (rm_prompts x K sequences in one
    # forward); TRL takes the same C(K, 2) x rm_prompts comparisons as pairs, rm_pairs_micro pairs a forward.
    rm_k: int = 4
    rm_prompts: int = 8
    rm_pairs_micro: int = 16
    rm_max_length: int = 128
    rm_steps: int = 5
    rm_warmup: int = 2
    # PPO: 32 prompts a rollout, 1 minibatch of 32, micro-batches of 16, 4 PPO epochs, 32 response tokens.
    ppo_rollout: int = 32
    ppo_micro: int = 16
    ppo_minibatches: int = 1
    ppo_epochs: int = 4
    ppo_response_len: int = 32
    ppo_temperature: float = 0.7
    ppo_kl_coef: float = 0.05
    ppo_max_prompt_len: int = 64
    ppo_iterations: int = 2
    ppo_warmup: int = 1
    # lit_rlhf's value model: "separate" (as TRL, the matched setting) or "shared" (a value head on the policy's
    # backbone: less work, so a different setting; listed among the differences when chosen).
    ppo_value_model: str = "separate"
    # DPO: 16 pairs a step (32 sequences in one forward of the policy and one of the frozen reference, no
    # accumulation), at most 128 tokens, sigmoid loss with beta 0.1, reference log-probs computed every step.
    dpo_batch_size: int = 16
    dpo_max_length: int = 128
    dpo_beta: float = 0.1
    dpo_steps: int = 40
    dpo_warmup: int = 2

    @property
    def rm_comparisons_per_step(self) -> int:
        return self.rm_prompts * math.comb(self.rm_k, 2)

    @property
    def rm_trl_accumulation(self) -> int:
        """TRL micro-batches per optimizer step, so that both sides take the same comparisons per step."""
        if self.rm_comparisons_per_step % self.rm_pairs_micro:
            raise ValueError(
                f"rm_pairs_micro={self.rm_pairs_micro} must divide the {self.rm_comparisons_per_step} comparisons of "
                f"a step (rm_prompts={self.rm_prompts} x C({self.rm_k}, 2))"
            )
        return self.rm_comparisons_per_step // self.rm_pairs_micro

    @property
    def ppo_minibatch(self) -> int:
        return self.ppo_rollout // self.ppo_minibatches

    def steps(self, stage: str) -> tuple[int, int]:
        """(untimed warm-up steps, timed steps) of a stage; a PPO step is one iteration."""
        return {
            "sft": (self.sft_warmup, self.sft_steps),
            "rm": (self.rm_warmup, self.rm_steps),
            "ppo": (self.ppo_warmup, self.ppo_iterations),
            "dpo": (self.dpo_warmup, self.dpo_steps),
        }[stage]


SMOKE = Settings(
    n_layer=1, n_embd=32, n_head=2, n_positions=128, vocab_size=400, sft_batch_size=4, sft_max_length=64,
    sft_steps=2, sft_warmup=1, rm_prompts=2, rm_pairs_micro=6, rm_max_length=64, rm_steps=2, rm_warmup=1,
    ppo_rollout=4, ppo_micro=2, ppo_epochs=1, ppo_response_len=4, ppo_max_prompt_len=24, ppo_iterations=1,
    ppo_warmup=1, dpo_batch_size=2, dpo_max_length=64, dpo_steps=2, dpo_warmup=1,
)  # fmt: skip
"""A minimal size for the smoke test: every code path, a few seconds per side."""

DIFFERENCES = [
    (
        "RM batch layout",
        "lit_rlhf forwards each prompt's K completions once (K-wise batch, InstructGPT eq. 1); TRL's "
        "RewardTrainer only takes pairs, so each K = 4 prompt becomes C(4, 2) = 6 pairs (12 sequences). Matched: the "
        "comparisons per optimizer step and the loss (mean -log sigmoid of the margin); lit_rlhf's 32-sequence forward "
        "(8 prompts x 4) against TRL's 16 pairs = 32 sequences per forward, 3 accumulated.",
    ),
    (
        "RM batch order",
        "lit_rlhf groups prompts of similar length (its default, --data.group_by_length=true); TRL "
        "shuffles pairs randomly: the transformers Trainer's length grouping reads `input_ids`, which TRL's preference "
        "dataset (chosen_ids / rejected_ids) does not have. SFT is length-grouped on both sides.",
    ),
    (
        "PPO rollout log-probs",
        "TRL reuses the logits `generate` returns (output_scores); lit_rlhf runs one batched "
        "no-grad policy forward after generation. Each side's own design; both then forward reference, value and "
        "reward models once per rollout.",
    ),
    (
        "PPO sampling",
        "TRL samples with transformers' sampler (temperature 0.7 + 1e-7); lit_rlhf with its seeded "
        "per-prompt Gumbel sampler (same distribution, reproducible across process counts).",
    ),
    (
        "PPO EOS penalty",
        "off on both (lit_rlhf no_eos_score=None, TRL missing_eos_penalty=None): they differ in "
        "kind (replace vs subtract), and with random weights almost no response ends in EOS.",
    ),
    (
        "PPO gradient clipping",
        "off on both: TRL's PPO loop never clips (max_grad_norm is ignored), so lit_rlhf runs with max_grad_norm=None.",
    ),
    (
        "Loop and logging",
        "each framework's own loop: Lightning (no logger, no checkpoints, no progress bar) and the "
        "transformers Trainer (report_to=none, save_strategy=no, no tqdm). TRL computes its per-step metrics (entropy, "
        "token accuracy, reward margins) as it always does; lit_rlhf its own.",
    ),
    (
        "DPO batch order",
        "matched: TRL reads the pairs in the order lit_rlhf's length-grouped sampler deals them (a sequential "
        "sampler over rows written in that order), so step i holds the same 16 pairs, padded to the same length, on "
        "both sides. Within a forward TRL stacks all chosen rows, then all rejected; lit_rlhf keeps each prompt's two "
        "rows together (the same tensor shape).",
    ),
    (
        "DPO data preparation",
        "TRL 1.12's DPOTrainer only takes text and tokenises it itself; the benchmark overrides its "
        "`_prepare_dataset` to keep lit_rlhf's token ids (prompt_ids / chosen_ids / rejected_ids, which its collator "
        "reads). Untimed: it runs before training.",
    ),
    (
        "DPO gradient clipping",
        "off on both (TRL max_grad_norm=0; lit_rlhf's Trainer has no gradient_clip_val). On SFT and RM TRL "
        "keeps the transformers default (clip at norm 1.0) and lit_rlhf does not clip: one norm over the weights per "
        "step, negligible next to the forward and backward.",
    ),
    (
        "dtype and checkpointing",
        "fp32 and no gradient checkpointing on both: TRL's PPOConfig defaults to bf16 and "
        "gradient checkpointing, both turned off here.",
    ),
    (
        "Learning-rate schedule",
        "constant after no warm-up on lit_rlhf; TRL's default linear decay with no warm-up. "
        "It changes no work per step.",
    ),
]
"""(setting, why it differs or how it was matched): printed with the results and written to the JSON."""

SHARED_VALUE_DIFFERENCE = (
    "PPO value model",
    "lit_rlhf runs with --model.value_model=shared (a value head on the policy's backbone: one forward and backward "
    "per micro-batch for both losses, and no value model in the rollout's scoring) while TRL's PPOTrainer has a "
    "separate value model; TRL offers no shared option, so this is less work, not the same work.",
)


def differences(s: Settings) -> list[tuple[str, str]]:
    """The settings that differ between the two sides under ``s``."""
    return DIFFERENCES + ([SHARED_VALUE_DIFFERENCE] if s.ppo_value_model != "separate" else [])


# --------------------------------------------------------------------------- shared assets: tokenizer, models, data

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "be", "da", "fo", "gu", "he", "ji", "pe", "zu", "ar",
              "en", "is", "on", "ul", "qua", "tri", "sto", "pla"]  # fmt: skip


def _words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n))


def write_data(root: Path, s: Settings) -> dict[str, Path]:
    """Synthetic records in lit_rlhf's formats: SFT pairs, K-wise rankings, PPO prompts and DPO preference pairs
    (varied lengths)."""
    rng = random.Random(s.seed)
    root.mkdir(parents=True, exist_ok=True)
    n_sft = (s.sft_warmup + s.sft_steps + 2) * s.sft_batch_size
    n_rm = (s.rm_warmup + s.rm_steps + 2) * s.rm_prompts
    n_ppo = (s.ppo_warmup + s.ppo_iterations + 2) * s.ppo_rollout
    # word counts: on the full size about 8-50 tokens a prompt or completion, so few examples are truncated
    short, long_ = (2, 6) if s.sft_max_length < 128 else (4, 24)
    sft = [{"prompt": _words(rng, rng.randint(short, long_)), "completion": _words(rng, rng.randint(short, long_))}
           for _ in range(n_sft)]  # fmt: skip
    rm = []
    for _ in range(n_rm):
        completions = [_words(rng, rng.randint(short, long_)) for _ in range(s.rm_k)]
        ranking = list(range(s.rm_k))
        rng.shuffle(ranking)
        rm.append({"prompt": _words(rng, rng.randint(short, long_)), "completions": completions, "ranking": ranking})
    ppo = [{"prompt": _words(rng, rng.randint(short, long_))} for _ in range(n_ppo)]  # left-padded to the longest
    # drawn last, so the records of the other stages are the ones they had before DPO was added
    n_dpo = (s.dpo_warmup + s.dpo_steps + 2) * s.dpo_batch_size
    dpo = [{"prompt": _words(rng, rng.randint(short, long_)), "chosen": _words(rng, rng.randint(short, long_)),
            "rejected": _words(rng, rng.randint(short, long_))} for _ in range(n_dpo)]  # fmt: skip
    files = {"sft_records": root / "sft.jsonl", "rm_records": root / "rm.jsonl", "ppo_records": root / "prompts.jsonl",
             "dpo_records": root / "dpo.jsonl"}  # fmt: skip
    for name, records in (("sft_records", sft), ("rm_records", rm), ("ppo_records", ppo), ("dpo_records", dpo)):
        files[name].write_text("".join(json.dumps(r) + "\n" for r in records))
    return files


def build_assets(root: Path, s: Settings) -> dict[str, str]:
    """Data, a tokenizer trained on it, and one random-init policy (causal LM) and RM (score head) for both sides."""
    import torch

    from lit_rlhf.models import export_pretrained, load_model, train_tokenizer

    files = write_data(root / "data", s)
    texts = []
    # DPO's records (the same syllables) stay out of the tokenizer's training text, so the other stages keep their ids
    for f in (files["sft_records"], files["rm_records"], files["ppo_records"]):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            texts += [r["prompt"], r.get("completion", ""), *r.get("completions", [])]
    tok = train_tokenizer(texts, vocab_size=s.vocab_size)
    shape = {"n_layer": s.n_layer, "n_embd": s.n_embd, "n_head": s.n_head, "n_positions": s.n_positions,
             "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # fmt: skip
    torch.manual_seed(s.seed)
    policy = export_pretrained(load_model("scratch:gpt2", tok, model_config=shape), tok, root / "policy")
    torch.manual_seed(s.seed + 1)
    rm = export_pretrained(load_model("scratch:gpt2", tok, head="score", model_config=shape), tok, root / "rm")
    assets = {"root": str(root), "policy": str(policy), "rm": str(rm), **{k: str(v) for k, v in files.items()}}
    (root / "assets.json").write_text(json.dumps(assets, indent=2))
    return assets


# --------------------------------------------------------------------------- identical data for both sides


def sft_data(assets: dict[str, str], s: Settings, group_by_length: bool = True):
    from lit_rlhf.data.modules import SFTDataModule

    dm = SFTDataModule(train_files=assets["sft_records"], val_files=assets["sft_records"], tokenizer_name_or_path=assets["policy"],
                       max_length=s.sft_max_length, batch_size=s.sft_batch_size, group_by_length=group_by_length,
                       seed=s.seed)  # fmt: skip
    dm.setup("fit")
    return dm


def rm_data(assets: dict[str, str], s: Settings):
    from lit_rlhf.data.modules import PreferenceDataModule

    dm = PreferenceDataModule(train_files=assets["rm_records"], val_files=assets["rm_records"], tokenizer_name_or_path=assets["rm"],
                              max_length=s.rm_max_length, batch_size=s.rm_prompts, group_by_length=True,
                              seed=s.seed)  # fmt: skip
    dm.setup("fit")
    return dm


def ppo_data(assets: dict[str, str], s: Settings):
    from lit_rlhf.data.prompts import PromptDataModule

    dm = PromptDataModule(train_files=assets["ppo_records"], val_files=assets["ppo_records"], tokenizer_name_or_path=assets["policy"],
                          max_length=s.ppo_max_prompt_len, batch_size=s.ppo_rollout, seed=s.seed)  # fmt: skip
    dm.setup("fit")
    return dm


def dpo_data(assets: dict[str, str], s: Settings):
    from lit_rlhf.data.modules import PreferenceDataModule

    dm = PreferenceDataModule(train_files=assets["dpo_records"], val_files=assets["dpo_records"], tokenizer_name_or_path=assets["policy"],
                              max_length=s.dpo_max_length, batch_size=s.dpo_batch_size, group_by_length=True,
                              seed=s.seed)  # fmt: skip
    dm.setup("fit")
    return dm


def trl_sft_rows(dm) -> list[dict[str, list[int]]]:
    """lit_rlhf's tokenised SFT examples as TRL's pre-tokenised format: ``input_ids`` and ``completion_mask``."""
    return [{"input_ids": r["prompt_ids"] + r["completion_ids"],
             "completion_mask": [0] * len(r["prompt_ids"]) + [1] * len(r["completion_ids"])}
            for r in dm.train_dataset.items]  # fmt: skip


def trl_rm_rows(dm) -> list[dict[str, list[int]]]:
    """Every ordered pair of lit_rlhf's tokenised K-wise examples, in TRL's ``chosen_ids`` / ``rejected_ids``."""
    rows = []
    for r in dm.train_dataset.items:
        seqs = [r["prompt_ids"] + c for c in r["completion_ids"]]
        for i in range(len(seqs)):
            for j in range(len(seqs)):
                if r["ranks"][i] < r["ranks"][j]:
                    rows.append({"chosen_ids": seqs[i], "rejected_ids": seqs[j]})
    return rows


def trl_dpo_rows(dm) -> list[dict[str, list[int]]]:
    """lit_rlhf's tokenised pairs as TRL's ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids``, in the order lit_rlhf's
    training loader deals them (its seeded length-grouped sampler, first epoch): read in sequence, TRL's batch i holds
    the pairs of lit_rlhf's batch i."""
    rows = []
    for i in dm.train_dataloader().sampler:
        r = dm.train_dataset.items[i]
        chosen, rejected = (r["completion_ids"][r["ranks"].index(rank)] for rank in (0, 1))
        rows.append({"prompt_ids": r["prompt_ids"], "chosen_ids": chosen, "rejected_ids": rejected})
    return rows


def trl_ppo_rows(dm) -> list[dict[str, list[int]]]:
    """lit_rlhf's tokenised prompts as TRL's ``input_ids`` (TRL left-pads them with the same pad token)."""
    return [{"input_ids": r["prompt_ids"]} for r in dm.train_dataset.items]


# --------------------------------------------------------------------------- timing


class StepClock:
    """Wall-clock stamps at the end of each optimizer step (SFT, RM) or PPO iteration, and per-step counts."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.stamps: list[float] = []
        self.counts: list[tuple[int, int]] = []  # (samples, tokens) of each step

    def step_done(self, samples: int = 0, tokens: int = 0) -> None:
        self.stamps.append(time.perf_counter())
        self.counts.append((samples, tokens))

    def result(self) -> dict[str, float]:
        """Rates over the timed steps: from the end of the last warm-up step to the end of the last step."""
        w, n = self.warmup, self.steps
        if len(self.stamps) < w + n:
            raise RuntimeError(f"only {len(self.stamps)} steps were recorded, expected {w + n}")
        seconds = self.stamps[w + n - 1] - self.stamps[w - 1]
        samples = sum(c[0] for c in self.counts[w : w + n])
        tokens = sum(c[1] for c in self.counts[w : w + n])
        return {"samples_s": samples / seconds, "tokens_s": tokens / seconds, "seconds": seconds, "steps": n,
                "samples": samples, "tokens": tokens}  # fmt: skip


class BatchCounter:
    """Wraps a collator and records (samples, tokens) of every batch it makes, in order."""

    def __init__(self, collate, count) -> None:
        self.collate, self.count = collate, count
        self.batches: list[tuple[int, int]] = []

    def __call__(self, examples):
        batch = self.collate(examples)
        self.batches.append(self.count(batch))
        return batch


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _lit_trainer(root: str, callback, max_steps: int = -1, limit_train_batches: int | None = None):
    import lightning as L

    return L.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, max_epochs=-1 if max_steps > 0 else 1,
        limit_train_batches=limit_train_batches, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
        default_root_dir=root,
    )  # fmt: skip


# --------------------------------------------------------------------------- lit_rlhf side


def run_lit(stage: str, assets: dict[str, str], s: Settings, out: str) -> dict[str, float]:
    import lightning as L

    warmup, steps = s.steps(stage)
    clock = StepClock(warmup, steps)

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if stage == "sft":
                clock.step_done(len(batch["input_ids"]), int((batch["labels"][:, 1:] != -100).sum()))
            elif stage in ("rm", "dpo"):  # DPO: K = 2, one pair a prompt
                group_ids, ranks = batch["group_ids"], batch["ranks"]
                pairs = int(((group_ids[:, None] == group_ids[None, :]) & (ranks[:, None] < ranks[None, :])).sum())
                clock.step_done(pairs, int(batch["attention_mask"].sum()))
            else:
                clock.step_done(s.ppo_rollout, s.ppo_rollout * s.ppo_response_len)

    if stage == "sft":
        from lit_rlhf.sft import SFTModule

        module = SFTModule(model_name_or_path=assets["policy"], export_dir=f"{out}/hf", learning_rate=s.learning_rate,
                           warmup=0, num_sample_prompts=0)  # fmt: skip
        data = sft_data(assets, s)
        trainer = _lit_trainer(out, Clock(), max_steps=warmup + steps)
    elif stage == "rm":
        from lit_rlhf.reward import RewardModule

        module = RewardModule(model_name_or_path=assets["rm"], export_dir=f"{out}/hf", learning_rate=s.learning_rate,
                              warmup=0, normalize=False)  # fmt: skip
        data = rm_data(assets, s)
        trainer = _lit_trainer(out, Clock(), max_steps=warmup + steps)
    elif stage == "dpo":
        from lit_rlhf.dpo import DPOModule

        module = DPOModule(model_name_or_path=assets["policy"], export_dir=f"{out}/hf", learning_rate=s.learning_rate,
                           warmup=0, beta=s.dpo_beta, loss_type="sigmoid", precompute_reference=False,
                           dropout=0.0)  # fmt: skip
        data = dpo_data(assets, s)
        trainer = _lit_trainer(out, Clock(), max_steps=warmup + steps)
    else:
        from lit_rlhf.ppo.module import PPOModule

        module = PPOModule(
            model_name_or_path=assets["policy"], reward_model_path=assets["rm"], export_dir=f"{out}/hf",
            minibatch_size=s.ppo_minibatch, micro_batch_size=s.ppo_micro, forward_batch_size=s.ppo_rollout,
            ppo_epochs=s.ppo_epochs, max_new_tokens=s.ppo_response_len, temperature=s.ppo_temperature,
            no_eos_score=None, kl_coef=s.ppo_kl_coef, learning_rate=s.learning_rate, warmup=0, max_grad_norm=None,
            log_samples_every_n_iterations=0, rollout_seed=s.seed, value_model=s.ppo_value_model,
        )  # fmt: skip
        data = ppo_data(assets, s)
        trainer = _lit_trainer(out, Clock(), limit_train_batches=warmup + steps)
    trainer.fit(module, data)
    return clock.result()


# --------------------------------------------------------------------------- TRL side


def trl_available() -> str | None:
    """None when TRL 1.12 is importable, else why not (the TRL side is then skipped)."""
    try:
        import trl
    except ImportError:
        return "TRL is not installed: pip install -e '.[bench]' (trl==1.12.*) to run the TRL side"
    if not trl.__version__.startswith("1.12."):
        return f"TRL {trl.__version__} is installed; this benchmark needs 1.12 (the last release with PPO)"
    return None


def _trl_common(out: str, s: Settings) -> dict[str, Any]:
    return dict(output_dir=out, learning_rate=s.learning_rate, report_to="none", save_strategy="no",
                logging_strategy="no", disable_tqdm=True, use_cpu=True, bf16=False, fp16=False,
                gradient_checkpointing=False, dataloader_num_workers=0, seed=s.seed, warmup_steps=0)  # fmt: skip


def run_trl(stage: str, assets: dict[str, str], s: Settings, out: str) -> dict[str, float]:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    datasets.disable_progress_bars()
    warmup, steps = s.steps(stage)
    clock = StepClock(warmup, steps)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step_done()

    if stage == "sft":
        from trl import SFTConfig, SFTTrainer

        model = AutoModelForCausalLM.from_pretrained(assets["policy"], dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(assets["policy"])
        config = SFTConfig(**_trl_common(out, s), per_device_train_batch_size=s.sft_batch_size,
                           max_length=s.sft_max_length, completion_only_loss=True, max_steps=warmup + steps,
                           train_sampling_strategy="group_by_length")  # fmt: skip
        dataset = datasets.Dataset.from_list(trl_sft_rows(sft_data(assets, s)))
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok,
                             callbacks=[Clock()])  # fmt: skip
        trainer.data_collator = counter = BatchCounter(
            trainer.data_collator, lambda b: (len(b["input_ids"]), int((b["labels"][:, 1:] != -100).sum()))
        )
        per_step = 1
    elif stage == "rm":
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(assets["rm"], dtype=torch.float32, num_labels=1)
        tok = AutoTokenizer.from_pretrained(assets["rm"])
        per_step = s.rm_trl_accumulation
        config = RewardConfig(**_trl_common(out, s), per_device_train_batch_size=s.rm_pairs_micro,
                              gradient_accumulation_steps=per_step, max_length=s.rm_max_length,
                              max_steps=warmup + steps)  # fmt: skip
        dataset = datasets.Dataset.from_list(trl_rm_rows(rm_data(assets, s)))
        trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok,
                                callbacks=[Clock()])  # fmt: skip
        trainer.data_collator = counter = BatchCounter(
            trainer.data_collator, lambda b: (len(b["input_ids"]) // 2, int(b["attention_mask"].sum()))
        )
    elif stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        class PretokenisedDPOTrainer(DPOTrainer):
            """DPOTrainer 1.12 tokenises text rows itself and has no pre-tokenised input; this one keeps the rows'
            ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids``, the columns its own preparation would produce."""

            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                return dataset

        model = AutoModelForCausalLM.from_pretrained(assets["policy"], dtype=torch.float32)
        ref = AutoModelForCausalLM.from_pretrained(assets["policy"], dtype=torch.float32)  # as TRL's default: a copy
        tok = AutoTokenizer.from_pretrained(assets["policy"])
        config = DPOConfig(**_trl_common(out, s), per_device_train_batch_size=s.dpo_batch_size,
                           max_length=s.dpo_max_length, beta=s.dpo_beta, loss_type=["sigmoid"],
                           precompute_ref_log_probs=False, disable_dropout=True, max_grad_norm=0.0,
                           train_sampling_strategy="sequential", max_steps=warmup + steps)  # fmt: skip
        dataset = datasets.Dataset.from_list(trl_dpo_rows(dpo_data(assets, s)))
        trainer = PretokenisedDPOTrainer(model=model, ref_model=ref, args=config, train_dataset=dataset,
                                         processing_class=tok, callbacks=[Clock()])  # fmt: skip
        trainer.data_collator = counter = BatchCounter(
            trainer.data_collator, lambda b: (len(b["input_ids"]) // 2, int(b["attention_mask"].sum()))
        )
        per_step = 1
    else:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.ppo import PPOConfig, PPOTrainer

        tok = AutoTokenizer.from_pretrained(assets["policy"], padding_side="left")
        policy = AutoModelForCausalLM.from_pretrained(assets["policy"], dtype=torch.float32)
        ref = AutoModelForCausalLM.from_pretrained(assets["policy"], dtype=torch.float32)
        value = AutoModelForSequenceClassification.from_pretrained(assets["rm"], dtype=torch.float32, num_labels=1)
        reward = AutoModelForSequenceClassification.from_pretrained(assets["rm"], dtype=torch.float32, num_labels=1)
        iterations = warmup + steps
        config = PPOConfig(
            **_trl_common(out, s), per_device_train_batch_size=s.ppo_micro,
            gradient_accumulation_steps=s.ppo_rollout // s.ppo_micro, num_mini_batches=s.ppo_minibatches,
            num_ppo_epochs=s.ppo_epochs, response_length=s.ppo_response_len, temperature=s.ppo_temperature,
            local_rollout_forward_batch_size=s.ppo_rollout, total_episodes=iterations * s.ppo_rollout,
            stop_token="eos", missing_eos_penalty=None, kl_coef=s.ppo_kl_coef, num_sample_generations=0,
            sft_model_path=assets["policy"], reward_model_path=assets["rm"],
        )  # fmt: skip
        dataset = datasets.Dataset.from_list(trl_ppo_rows(ppo_data(assets, s)))
        trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                             value_model=value, train_dataset=dataset, eval_dataset=dataset.select(range(2)),
                             callbacks=[Clock()])  # fmt: skip
        counter = None
    trainer.train()
    if counter is not None:  # batches are counted in order (prefetching does not reorder them)
        b = counter.batches
        clock.counts = [tuple(map(sum, zip(*b[i * per_step : (i + 1) * per_step], strict=True)))
                        for i in range(len(clock.stamps))]  # fmt: skip
    else:
        clock.counts = [(s.ppo_rollout, s.ppo_rollout * s.ppo_response_len)] * len(clock.stamps)
    return clock.result()


# --------------------------------------------------------------------------- orchestration


def run_child(stages: str, side: str, assets_file: str, settings: Settings) -> list[dict[str, float]]:
    """One side, one or more stages (comma-separated), in this process; prints ``RESULT {json}`` per stage.

    The benchmark gives each (stage, side, repetition) its own fresh process, so peak RSS is its own.
    """
    import torch

    torch.set_num_threads(settings.threads)
    assets = json.loads(Path(assets_file).read_text())
    run = run_lit if side == "lit_rlhf" else run_trl
    results = []
    for stage in stages.split(","):
        torch.manual_seed(settings.seed)
        result = run(stage, assets, settings, tempfile.mkdtemp(prefix=f"compare-{stage}-{side}-"))
        result["peak_rss_mib"] = peak_rss_mib()
        print("RESULT " + json.dumps(result), flush=True)
        results.append(result)
    return results


def spawn(stage: str, side: str, assets_file: str, settings_file: str, timeout: float) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", stage, side, "--assets", assets_file, "--settings", settings_file]
    env = {**os.environ, "OMP_NUM_THREADS": "", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    env.pop("OMP_NUM_THREADS")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{side} {stage} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Median figures per side and the per-repetition ratio lit_rlhf / TRL as min, median, max."""
    summary: dict[str, Any] = {}
    for side, rs in runs.items():
        if rs:
            summary[side] = {k: statistics.median(r[k] for r in rs) for k in ("samples_s", "tokens_s", "peak_rss_mib")}
            summary[side]["repeats"] = rs
    if runs.get("lit_rlhf") and runs.get("trl"):
        pairs = list(zip(runs["lit_rlhf"], runs["trl"], strict=True))
        ratios = [a["samples_s"] / b["samples_s"] for a, b in pairs]
        token_ratios = [a["tokens_s"] / b["tokens_s"] for a, b in pairs]
        memory = [a["peak_rss_mib"] / b["peak_rss_mib"] for a, b in pairs]
        summary.update(ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
                       tokens_ratio=statistics.median(token_ratios), memory_ratio=statistics.median(memory),
                       memory_ratio_max=max(memory))  # fmt: skip
    return summary


def print_report(results: dict[str, Any], targets: dict[str, float]) -> None:
    print(f"{'stage':<5} {'side':<9} {'samples/s':>10} {'tokens/s':>10} {'peak MiB':>9}   unit")
    for stage, r in results.items():
        for side in SIDES:
            if side in r:
                f = r[side]
                print(f"{stage:<5} {side:<9} {f['samples_s']:>10.2f} {f['tokens_s']:>10.0f} {f['peak_rss_mib']:>9.0f}   "
                      f"{SAMPLE_UNIT[stage]}, {TOKEN_UNIT[stage]}")  # fmt: skip
        if "ratio" in r:
            print(f"{stage:<5} ratio lit_rlhf/TRL: {r['ratio']:.2f}x (min {r['ratio_min']:.2f}, max {r['ratio_max']:.2f})"
                  f" {SAMPLE_UNIT[stage]}/s [target >= {targets[stage]}x]; tokens/s {r['tokens_ratio']:.2f}x; "
                  f"peak memory {r['memory_ratio']:.2f}x (max {r['memory_ratio_max']:.2f})"
                  + (f" [target <= {MEMORY_TARGETS[stage]}x]" if stage in MEMORY_TARGETS else ""))  # fmt: skip


TARGETS = {"sft": 1.2, "rm": 3.0, "ppo": 2.0, "dpo": 1.2}
"""The speed-up over TRL each stage aims for, lit_rlhf / TRL (SFT on tokens/s; RM, PPO and DPO on samples/s)."""

MEMORY_TARGETS = {"dpo": 1.0}
"""The most peak memory a stage may use, lit_rlhf / TRL (peak RSS, median over the repetitions)."""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {', '.join(STAGES)}")
    p.add_argument("--repeats", type=int, default=3, help="repetitions of each side (alternating)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--sides", default="lit_rlhf,trl", help="comma-separated; trl is skipped when not installed")
    p.add_argument("--smoke", action="store_true", help="a minimal size (tests)")
    p.add_argument("--workdir", help="where the assets go (default: a temporary directory)")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed for one side's run")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override a Settings field")
    p.add_argument("--list-differences", action="store_true", help="print the settings that differ, and exit")
    p.add_argument("--child", nargs=2, metavar=("STAGE", "SIDE"), help=argparse.SUPPRESS)
    p.add_argument("--assets", help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        settings = Settings(**json.loads(Path(args.settings).read_text()))
        run_child(*args.child, args.assets, settings)
        return {}
    settings = SMOKE if args.smoke else Settings()
    overrides = {}
    for kv in args.set:
        key, value = kv.split("=", 1)
        overrides[key] = type(getattr(settings, key))(value)
    settings = dataclasses.replace(settings, **overrides)
    if args.list_differences:
        for name, why in differences(settings):
            print(f"- {name}: {why}")
        return {}
    stages = [x for x in args.stages.split(",") if x]
    bad = [x for x in stages if x not in STAGES]
    if bad:
        raise SystemExit(f"unknown stage(s) {bad}; choose from {list(STAGES)} (--stages)")
    sides = [x for x in args.sides.split(",") if x]
    why_not = trl_available()
    if "trl" in sides and why_not:
        print(f"skipping the TRL side: {why_not}")
        sides.remove("trl")
    settings.rm_trl_accumulation  # noqa: B018  (validates the RM batch match before any run)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lit-rlhf-compare-"))
    build_assets(work, settings)
    settings_file = work / "settings.json"
    settings_file.write_text(json.dumps(dataclasses.asdict(settings)))
    assets_file = str(work / "assets.json")
    runs: dict[str, dict[str, list]] = {st: {side: [] for side in sides} for st in stages}
    for rep in range(args.repeats):
        for stage in stages:
            order = sides if rep % 2 == 0 else sides[::-1]  # alternate which side goes first
            for side in order:
                r = spawn(stage, side, assets_file, str(settings_file), args.timeout)
                r["load_average"] = os.getloadavg()[0]
                runs[stage][side].append(r)
                print(f"[repeat {rep + 1}/{args.repeats}] {stage:<3} {side:<8} {r['samples_s']:8.2f} "
                      f"{SAMPLE_UNIT[stage]}/s {r['tokens_s']:9.0f} tok/s {r['peak_rss_mib']:6.0f} MiB "
                      f"(load {r['load_average']:.1f})", flush=True)  # fmt: skip
        if args.json and rep + 1 < args.repeats:  # keep what is done if a long run is stopped
            partial = {stage: summarise(runs[stage]) for stage in stages}
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({**partial, "meta": {"repeats_done": rep + 1}}, indent=2) + "\n")
    results = {stage: summarise(runs[stage]) for stage in stages}
    load = os.getloadavg()
    meta = {
        "command": shlex.join(["python", "benchmarks/compare.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average_at_end": load,
        "versions": _versions(),
        "settings": dataclasses.asdict(settings),
        "differences": dict(differences(settings)),
        "targets": {"speed": TARGETS, "memory": MEMORY_TARGETS},
    }
    print(f"command: {meta['command']}")
    print(f"{meta['date']}; {meta['machine']}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"versions: {meta['versions']}; {settings.threads} threads per run; peak memory = peak RSS of the process")
    print_report(results, TARGETS)
    print("settings that differ (see --list-differences):", ", ".join(name for name, _ in differences(settings)))
    output = {**results, "meta": meta}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(output, indent=2) + "\n")
    return output


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "lightning", "trl", "accelerate"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


if __name__ == "__main__":
    main()
