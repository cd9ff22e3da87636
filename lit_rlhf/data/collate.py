"""Tokenisation shared by every stage: prompt templates, prompt masking, truncation, padding and packing.

Prompt template. When the tokenizer has a chat template (and ``template="auto"``), it renders the messages. When
not, lit_rlhf uses the plain Anthropic-HH format, so hh-rlhf dialogues round-trip exactly::

    "\\n\\nHuman: {user}\\n\\nAssistant: {assistant}\\n\\nHuman: {user}\\n\\nAssistant:"   <- prompt
    " {answer}<eos>"                                                                <- completion

The prompt and the completion are tokenised separately and concatenated, exactly as they meet at generation time
(prompt tokens, then sampled tokens), so the loss mask is exact and SFT, RM and PPO see the same token boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from lit_rlhf.data.records import DataError, Message, Source

IGNORE_INDEX = -100
"""Label of positions that do not count in the loss (prompt and padding)."""

Template = Literal["auto", "plain"]
Truncation = Literal["left_truncate", "skip", "error"]

_PLAIN_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}


def render_plain(messages: Sequence[Message]) -> str:
    """Render messages in the plain HH format, ending with the cue for the assistant's answer."""
    turns = "".join(f"\n\n{_PLAIN_ROLES[m['role']]}: {m['content']}" for m in messages)
    return turns + "\n\nAssistant:"


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, template: Template) -> bool:
    return template == "auto" and bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], template: Template = "auto") -> str:
    """The prompt text the model continues: the chat template's generation prompt, or the plain HH format."""
    if uses_chat_template(tokenizer, template):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return render_plain(messages)


def render_completion(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], completion: str, template: Template = "auto"
) -> str:
    """The text of the answer as it follows :func:`render_prompt` (EOS not included)."""
    if uses_chat_template(tokenizer, template):
        prompt = render_prompt(tokenizer, messages, template)
        full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": completion}], tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template renders the prompt differently with and without the answer")
        return full[len(prompt) :]
    return " " + completion


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], template: Template = "auto"
) -> list[int]:
    """Token ids of the rendered prompt (BOS first when the tokenizer has its own BOS)."""
    ids = tokenizer(render_prompt(tokenizer, messages, template), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and bos != tokenizer.eos_token_id and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def encode_completion(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], completion: str, template: Template = "auto"
) -> list[int]:
    """Token ids of the answer, ending with EOS (added unless the template already ends the turn with it)."""
    text = render_completion(tokenizer, messages, completion, template)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id not in ids:
        ids = [*ids, tokenizer.eos_token_id]
    else:  # a chat template may add text after its end-of-turn EOS (e.g. "\n"); it is never trained on
        ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
    return ids


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of plain text (a pretraining document, learned on every token), ending with EOS."""
    return [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


def fit_to_length(
    prompt_ids: list[int], completion_ids: list[int], max_length: int, policy: Truncation, source: Source
) -> tuple[list[int], list[int]] | None:
    """Make prompt + completion fit ``max_length`` tokens.

    Args:
        policy: ``left_truncate`` drops the oldest prompt tokens (the answer is never cut; if it alone does not
            fit, the example is skipped; plain text, which has no prompt, keeps its first ``max_length`` tokens);
            ``skip`` drops the example; ``error`` raises naming the record.

    Returns:
        The (possibly shortened) pair, or None for an example to skip.
    """
    total = len(prompt_ids) + len(completion_ids)
    if total <= max_length:
        return prompt_ids, completion_ids
    if policy == "error":
        raise DataError(
            f"{source}: prompt + completion is {total} tokens, over max_length={max_length}; raise "
            "--data.max_length or set --data.truncation=left_truncate|skip"
        )
    if policy == "left_truncate" and not prompt_ids:  # plain text: keep its beginning
        return prompt_ids, completion_ids[:max_length]
    if policy == "skip" or len(completion_ids) >= max_length:
        return None
    keep = max_length - len(completion_ids)
    return prompt_ids[-keep:], completion_ids


@dataclass
class TokenCounts:
    """What tokenisation did to a dataset, logged at start."""

    examples: int = 0
    truncated: int = 0
    skipped: int = 0
    skipped_sources: list[str] = field(default_factory=list)


def pad_right(seqs: Sequence[Sequence[int]], pad_value: int, length: int | None = None) -> torch.Tensor:
    """Stack ``seqs`` into a (batch, length) long tensor, padded on the right."""
    length = length or max(len(s) for s in seqs)
    out = torch.full((len(seqs), length), pad_value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def pad_left(seqs: Sequence[Sequence[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts for generation.

    Returns:
        input_ids: (batch, max_len) long, prompts flush right.
        attention_mask: (batch, max_len) long, 1 on real tokens.
    """
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_value, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, length - len(s) :] = torch.as_tensor(s, dtype=torch.long)
            mask[i, length - len(s) :] = 1
    return ids, mask


@dataclass
class SFTCollator:
    """Batch tokenised SFT examples: right padding, labels -100 on prompt and padding.

    Each example is ``{"prompt_ids": list[int], "completion_ids": list[int]}``. The batch holds ``input_ids``,
    ``attention_mask``, ``labels`` (batch, length) and ``prompt_lengths`` (batch,).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        seqs = [e["prompt_ids"] + e["completion_ids"] for e in examples]
        labels = [[IGNORE_INDEX] * len(e["prompt_ids"]) + e["completion_ids"] for e in examples]
        length = max(len(s) for s in seqs)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = pad_right(seqs, self.pad_token_id, length)
        return {
            "input_ids": input_ids,
            "attention_mask": pad_right([[1] * len(s) for s in seqs], 0, length),
            "labels": pad_right(labels, IGNORE_INDEX, length),
            "prompt_lengths": torch.tensor([len(e["prompt_ids"]) for e in examples]),
        }


def pack_examples(examples: Sequence[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Greedily concatenate tokenised examples into rows of at most ``max_length`` tokens.

    Each row keeps the loss mask of its pieces and restarts ``position_ids`` at each piece. Attention is causal
    over the whole row, so a piece can attend to the pieces before it in the row (the usual "naive packing"
    trade-off: no padding at all, a little cross-example context). Use length grouping instead when that matters.

    Returns:
        Rows as ``{"input_ids", "labels", "position_ids"}`` lists.
    """
    rows: list[dict[str, list[int]]] = []
    cur: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for e in examples:
        ids = e["prompt_ids"] + e["completion_ids"]
        if cur["input_ids"] and len(cur["input_ids"]) + len(ids) > max_length:
            rows.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += ids
        cur["labels"] += [IGNORE_INDEX] * len(e["prompt_ids"]) + e["completion_ids"]
        cur["position_ids"] += list(range(len(ids)))
    if cur["input_ids"]:
        rows.append(cur)
    return rows


@dataclass
class PackedCollator:
    """Batch rows made by :func:`pack_examples` (padding only up to the longest row)."""

    pad_token_id: int

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return {
            "input_ids": pad_right([r["input_ids"] for r in rows], self.pad_token_id),
            "attention_mask": pad_right([[1] * len(r["input_ids"]) for r in rows], 0),
            "labels": pad_right([r["labels"] for r in rows], IGNORE_INDEX),
            "position_ids": pad_right([r["position_ids"] for r in rows], 0),
        }
