"""Prompts for PPO and the pretraining text PPO-ptx mixes in (InstructGPT step 3).

Records (see DESIGN.md): prompts are ``{"prompt": str}`` or ``{"messages": [...]}`` (a conversation ending with the
user's turn; an SFT record's trailing assistant answer is dropped, so SFT files serve as prompt files). Pretraining
text is ``{"text": str}``.

Which prompts a process sees does not depend on how many processes there are: one seeded permutation per epoch
is dealt out in strides (``DistributedSampler``), so the first global batch of N processes with ``batch_size`` B
holds the same prompts as one process with ``batch_size`` N x B. Each prompt carries its dataset ``index``, from
which PPO derives its sampling seed; together these make the rollout independent of the number of processes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from lit_rlhf.data.collate import IGNORE_INDEX, encode_prompt, pad_left, pad_right
from lit_rlhf.data.modules import ListDataset, RecordDataModule
from lit_rlhf.data.records import (
    DataError,
    Files,
    Message,
    Source,
    load_records,
    parse_messages,
    parse_ranking_record,
    parse_sft_record,
    prompt_messages,
    require_str,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptExample:
    """One PPO prompt.

    Attributes:
        prompt: The conversation so far, ending with the user's turn.
        source: Where the record came from.
    """

    prompt: list[Message]
    source: Source


def parse_prompt_record(record: Any, source: Source) -> PromptExample:
    """The prompt of a record: ``{"prompt"}`` or ``{"messages"}`` (an SFT record's answer dropped), or the prompt of an
    SFT or preference record (``{"instruction", ...}``, hh-rlhf ``{"chosen", "rejected"}``, K-wise rankings), so
    the files of any stage serve as PPO prompts. Other keys are ignored."""
    if not isinstance(record, dict):
        raise DataError(f"{source}: a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = parse_messages(record["messages"], source)
        while messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # an SFT record: its answer is what PPO must now generate
        if not messages or messages[-1]["role"] != "user":
            raise DataError(f"{source}: the messages must end with a user turn for the policy to answer")
        return PromptExample(messages, source)
    if "prompt" in record:
        return PromptExample(prompt_messages(record["prompt"], source, "prompt"), source)
    if {"chosen", "completions"} & record.keys():
        return PromptExample(parse_ranking_record(record, source, ties="drop").prompt, source)
    if "instruction" in record:
        return PromptExample(parse_sft_record(record, source).prompt, source)
    raise DataError(
        f"{source}: unknown prompt record with keys {sorted(record)}; expected 'prompt' or 'messages' (or an SFT or "
        "preference record, whose prompt is taken)"
    )


def parse_text_record(record: Any, source: Source) -> str:
    """The ``text`` of a pretraining record ``{"text": str}``."""
    if not isinstance(record, dict):
        raise DataError(f"{source}: a record must be a JSON object, got {type(record).__name__}")
    return require_str(record, "text", source)


@dataclass
class PromptCollator:
    """Left-pad prompts for generation.

    Each example is ``{"prompt_ids": list[int], "index": int}``. The batch holds ``input_ids`` (batch, prompt_len)
    left-padded, ``attention_mask`` (batch, prompt_len) bool, True on prompt tokens, and ``index`` (batch,) the
    dataset index of each prompt.
    """

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_left([e["prompt_ids"] for e in examples], self.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask.bool(),
            "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
        }


class PretrainingStream:
    """Pretraining sequences drawn without replacement, as a pure function of (iteration, rank).

    The stream is the concatenation of seeded permutations of the dataset (one per pass). Iteration ``t`` on rank
    ``r`` of ``W`` takes the ``n`` items starting at position ``(t * W + r) * n``, so a resumed run draws exactly
    what an uninterrupted one would, with no loader state to save.

    Args:
        sequences: Token ids of each pretraining example (already cut to ``max_length``).
        pad_token_id: Pad id for right padding.
        seed: Seed of the permutations.
    """

    def __init__(self, sequences: list[list[int]], pad_token_id: int, seed: int) -> None:
        if not sequences:
            raise DataError("no pretraining sequences")
        self.sequences = sequences
        self.pad_token_id = pad_token_id
        self.seed = seed
        self._perms: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.sequences)

    def _item(self, position: int) -> list[int]:
        n = len(self.sequences)
        epoch, offset = divmod(position, n)
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perms = {epoch: torch.randperm(n, generator=g).tolist()}  # keep one pass in memory
        return self.sequences[self._perms[epoch][offset]]

    def batch(self, iteration: int, rank: int, world_size: int, n: int) -> dict[str, torch.Tensor]:
        """``n`` sequences for iteration ``iteration`` on ``rank``.

        Returns:
            ``input_ids`` (n, length) right-padded, ``attention_mask`` (n, length) bool, ``labels`` (n, length)
            with ``IGNORE_INDEX`` on padding.
        """
        start = (iteration * world_size + rank) * n
        seqs = [self._item(start + j) for j in range(n)]
        input_ids = pad_right(seqs, self.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": pad_right([[1] * len(s) for s in seqs], 0).bool(),
            "labels": pad_right(seqs, IGNORE_INDEX),
        }


class PromptDataModule(RecordDataModule):
    """Prompts for PPO and, for PPO-ptx, a stream of pretraining text.

    Records: ``{"prompt"}`` or ``{"messages": [...]}``; validation prompts are unused by PPO training itself (kept
    for evaluation hooks). Prompts longer than ``max_length`` lose their oldest tokens. The options every DataModule
    shares are :class:`RecordDataModule`'s.

    Args:
        pretraining_files: Pretraining records ``{"text"}`` for PPO-ptx; needed only when
            ``--model.ptx_coef > 0``.
        max_pretraining_length: Pretraining texts are cut to this many tokens (EOS appended first).
        max_length: Longest prompt in tokens; longer prompts lose their oldest tokens (``left_truncate``).
        batch_size: Prompts per PPO iteration on one process: the rollout batch.
        **kwargs: The shared options of :class:`RecordDataModule` (``train_files``, ``seed``, ...).
    """

    def __init__(
        self,
        pretraining_files: Files = None,
        max_pretraining_length: int = 256,
        max_length: int = 256,
        batch_size: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_length=max_length, batch_size=batch_size, **kwargs)
        # the tokenizer is the model's (linked by the CLI): saved once, with the model's hyperparameters
        self.save_hyperparameters(ignore=["tokenizer_name_or_path"])
        self.pretraining_files = pretraining_files
        self.max_pretraining_length = max_pretraining_length
        self.pretraining: PretrainingStream | None = None
        self.truncated_prompts = 0

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        tokenizer = self.load_tokenizer()
        self.pad_token_id = tokenizer.pad_token_id
        train, val = self.load_split(parse_prompt_record)
        self.train_dataset = ListDataset(self.encode(train))
        self.val_dataset = ListDataset(self.encode(val))
        if self.truncated_prompts:
            log.warning(
                "%d prompt(s) lost their oldest tokens to fit max_length=%d (--data.max_length)",
                self.truncated_prompts, self.max_length,
            )  # fmt: skip

    def encode(self, examples: list[PromptExample]) -> list[dict[str, Any]]:
        """Tokenise prompts into ``{"prompt_ids", "index"}``, keeping the newest ``max_length`` tokens."""
        tokenizer = self.load_tokenizer()
        rows = []
        for i, ex in enumerate(examples):
            ids = encode_prompt(tokenizer, ex.prompt, self.template)
            if len(ids) > self.max_length:
                self.truncated_prompts += 1
                ids = ids[-self.max_length :]
            rows.append({"prompt_ids": ids, "index": i})
        return rows

    def load_pretraining(self) -> PretrainingStream:
        """Read and tokenise the pretraining text (once); each text ends with EOS and is cut to length."""
        if self.pretraining is None:
            files = self.pretraining_files
            if files is None:
                raise ValueError(
                    "PPO-ptx needs pretraining text: set --data.pretraining_files (records {'text': ...}), "
                    "or set --model.ptx_coef=0 for plain PPO"
                )
            tokenizer = self.load_tokenizer()
            texts, _ = load_records(files, parse_text_record, self.on_bad_record)
            seqs = [
                (tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[
                    : self.max_pretraining_length
                ]
                for t in texts
            ]
            self.pretraining = PretrainingStream(seqs, tokenizer.pad_token_id, self.seed)
            log.info("pretraining stream: %d sequences", len(seqs))
        return self.pretraining

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None, "call setup() first"
        # every rollout has exactly batch_size prompts (minibatches must divide it): drop the last partial batch
        return self._train_loader(PromptCollator(self.pad_token_id), self._shuffled_sampler(drop_last=True), True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_dataset is not None, "call setup() first"
        return self._loader(self.val_dataset, PromptCollator(self.pad_token_id))
