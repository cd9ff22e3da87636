"""Tokenisation: the plain template, exact prompt masking, truncation, padding, packing, length grouping."""

from __future__ import annotations

import pytest
import torch

from lit_rlhf.data.collate import (
    IGNORE_INDEX,
    SFTCollator,
    encode_completion,
    encode_prompt,
    fit_to_length,
    pack_examples,
    pad_left,
    render_completion,
    render_plain,
    render_prompt,
)
from lit_rlhf.data.modules import LengthGroupedSampler
from lit_rlhf.data.records import DataError, Source

SRC = Source("data.jsonl", 7)


def test_plain_template_is_the_hh_format():
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    assert render_plain(messages) == "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant:"


def test_prompt_is_masked_exactly_and_completion_ends_with_eos(tokenizer):
    messages = [{"role": "user", "content": "Reverse: cat"}]
    prompt_ids = encode_prompt(tokenizer, messages, "plain")
    completion_ids = encode_completion(tokenizer, messages, "tac", "plain")
    assert tokenizer.decode(prompt_ids) == "\n\nHuman: Reverse: cat\n\nAssistant:"
    assert tokenizer.decode(completion_ids) == " tac<|endoftext|>"
    batch = SFTCollator(pad_token_id=tokenizer.pad_token_id)(
        [{"prompt_ids": prompt_ids, "completion_ids": completion_ids}, {"prompt_ids": [5, 6], "completion_ids": [7, 0]}]
    )
    n_p, n_c = len(prompt_ids), len(completion_ids)
    labels = batch["labels"]
    # first row: every prompt position ignored, completion positions keep their token ids, nothing padded
    assert labels[0, :n_p].tolist() == [IGNORE_INDEX] * n_p
    assert labels[0, n_p : n_p + n_c].tolist() == completion_ids
    # second row (hand-made): prompt [5, 6] ignored, completion [7, 0] kept, the rest padding (ignored, mask 0)
    length = n_p + n_c
    assert labels[1].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 7, 0] + [IGNORE_INDEX] * (length - 4)
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1] + [0] * (length - 4)
    assert batch["input_ids"][1, 4:].eq(tokenizer.pad_token_id).all()
    assert batch["prompt_lengths"].tolist() == [n_p, 2]


def test_chat_template_renders_prompt_and_answer(tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<|endoftext|>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    messages = [{"role": "user", "content": "Hi"}]
    assert render_prompt(tokenizer, messages) == "<user>Hi<|endoftext|><assistant>"
    assert render_completion(tokenizer, messages, "Yo") == "Yo<|endoftext|>"
    ids = encode_completion(tokenizer, messages, "Yo")
    assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1
    # template="plain" ignores the chat template
    assert render_prompt(tokenizer, messages, "plain") == "\n\nHuman: Hi\n\nAssistant:"


def test_truncation_policies():
    prompt, completion = list(range(10)), [100, 101, 102]
    assert fit_to_length(prompt, completion, 13, "error", SRC) == (prompt, completion)
    # left_truncate drops the oldest prompt tokens, never the answer
    assert fit_to_length(prompt, completion, 8, "left_truncate", SRC) == ([5, 6, 7, 8, 9], completion)
    assert fit_to_length(prompt, completion, 3, "left_truncate", SRC) is None  # the answer alone fills it
    assert fit_to_length(prompt, completion, 8, "skip", SRC) is None
    with pytest.raises(DataError, match=r"data\.jsonl:7: prompt \+ completion is 13 tokens, over max_length=8"):
        fit_to_length(prompt, completion, 8, "error", SRC)


def test_pad_left_puts_prompts_flush_right():
    ids, mask = pad_left([[1, 2, 3], [4]], pad_value=9)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_packing_keeps_masks_and_restarts_positions():
    examples = [
        {"prompt_ids": [1, 2], "completion_ids": [3, 0]},
        {"prompt_ids": [4], "completion_ids": [5, 0]},
        {"prompt_ids": [6, 7, 8], "completion_ids": [9, 0]},
    ]
    rows = pack_examples(examples, max_length=7)
    assert [r["input_ids"] for r in rows] == [[1, 2, 3, 0, 4, 5, 0], [6, 7, 8, 9, 0]]
    assert rows[0]["labels"] == [IGNORE_INDEX, IGNORE_INDEX, 3, 0, IGNORE_INDEX, 5, 0]
    assert rows[0]["position_ids"] == [0, 1, 2, 3, 0, 1, 2]


def test_length_grouped_sampler_is_a_permutation_and_cuts_padding():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 120, (512,), generator=gen).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=16, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(512))
    sampler.set_epoch(1)
    assert list(sampler) != order, "the next epoch reshuffles"

    def waste(order):
        pad = total = 0
        for i in range(0, len(order), 16):
            batch = [lengths[j] for j in order[i : i + 16]]
            pad += max(batch) * len(batch) - sum(batch)
            total += max(batch) * len(batch)
        return pad / total

    random_order = torch.randperm(512, generator=gen).tolist()
    assert waste(order) < 0.1 < waste(random_order)
    sampler.set_epoch(0)
    assert list(sampler) == order, "set_epoch makes the order reproducible (resume)"
    # two ranks with half the batch each take interleaved shares of the same global batches
    shards = [list(LengthGroupedSampler(lengths, batch_size=16, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    for b in range(0, 256, 8):
        assert sorted(shards[0][b : b + 8] + shards[1][b : b + 8]) == sorted(order[2 * b : 2 * b + 16])
