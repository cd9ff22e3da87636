"""Rollout pieces: EOS masking, per-prompt seeded sampling, the minibatch buffer, prompt records."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lit_rlhf.data.prompts import parse_prompt_record
from lit_rlhf.data.records import DataError, Source
from lit_rlhf.generation import SeededSampler, sample_responses, sample_seed
from lit_rlhf.models import load_model, load_tokenizer
from lit_rlhf.ppo.rollout import Rollout, RolloutBuffer, first_eos_mask
from tests.conftest import REPO, TINY_GPT2

EOS = 0


def test_first_eos_mask_keeps_the_eos_and_drops_what_follows():
    responses = torch.tensor([[5, EOS, 7, EOS], [5, 6, 7, 8], [EOS, 1, 1, 1]])
    mask, has_eos = first_eos_mask(responses, EOS)
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert has_eos.tolist() == [True, False, True]


def test_seeded_sampler_row_does_not_depend_on_the_rest_of_the_batch():
    logits = torch.randn(3, 50)

    def sample(rows, seeds):
        return SeededSampler(seeds, 1.0, 0, 1.0, [], torch.device("cpu"))(None, logits[rows]).argmax(-1)

    together = sample([0, 1, 2], [10, 11, 12])
    alone = torch.cat([sample([i], [10 + i]) for i in range(3)])
    assert torch.equal(together, alone)


def test_seeded_sampler_follows_the_warped_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    draws = SeededSampler(range(4000), 1.0, 0, 1.0, [], torch.device("cpu"))(None, logits).argmax(-1)
    freq = torch.bincount(draws, minlength=4).float() / 4000
    assert freq.tolist() == pytest.approx([0.5, 0.3, 0.15, 0.05], abs=0.03)
    # top_k=2 keeps tokens 0 and 1 (renormalised 0.625 / 0.375); top_p=0.6 keeps 0 and 1 too (0.5 < 0.6)
    for top_k, top_p in ((2, 1.0), (0, 0.6)):
        draws = SeededSampler(range(4000), 1.0, top_k, top_p, [], torch.device("cpu"))(None, logits).argmax(-1)
        freq = torch.bincount(draws, minlength=4).float() / 4000
        assert freq.tolist() == pytest.approx([0.625, 0.375, 0.0, 0.0], abs=0.03)
    # the suppressed token (the pad) is never drawn; temperature 0.5 squares and renormalises the probabilities
    draws = SeededSampler(range(4000), 0.5, 0, 1.0, [0], torch.device("cpu"))(None, logits).argmax(-1)
    freq = torch.bincount(draws, minlength=4).float() / 4000
    p = torch.tensor([0.0, 0.09, 0.0225, 0.0025])
    assert freq.tolist() == pytest.approx((p / p.sum()).tolist(), abs=0.03)


def test_sample_seeds_are_the_same_in_every_process():
    # PPO's rollout with N processes, a resumed run and sampled evaluation all rely on it (a str hash would differ)
    code = "from lit_rlhf.generation import sample_seed; print(sample_seed(0, 3, 7), sample_seed(5, 2))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    assert other.stdout.split() == [str(sample_seed(0, 3, 7)), str(sample_seed(5, 2))]
    assert len({sample_seed(0, 3, 7), sample_seed(0, 3, 8), sample_seed(0, 4, 7), sample_seed(1, 3, 7)}) == 4


def test_generation_is_the_same_alone_or_in_a_batch(tokenizer_dir):
    tok = load_tokenizer(str(tokenizer_dir))
    torch.manual_seed(0)
    model = load_model("scratch:gpt2", tok, model_config=TINY_GPT2)
    prompts = [tok("Reverse: catdog")["input_ids"], tok("Reverse: sun")["input_ids"]]
    from lit_rlhf.data.collate import pad_left

    kwargs = {"max_new_tokens": 6, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    ids, mask = pad_left(prompts, tok.pad_token_id)
    together = sample_responses(model, ids, mask.bool(), [1, 2], **kwargs)
    ids1, mask1 = pad_left(prompts[1:], tok.pad_token_id)
    alone = sample_responses(model, ids1, mask1.bool(), [2], **kwargs)
    assert together[1, : alone.shape[1]].tolist() == alone[0].tolist()
    counted, _ = first_eos_mask(together, tok.eos_token_id)
    assert not (together[counted] == tok.pad_token_id).any()  # the pad token is never sampled


def _rollout(n: int) -> Rollout:
    t = torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 3)
    ones = torch.ones(n, 3, dtype=torch.bool)
    return Rollout(query_responses=t.long(), attention_mask=ones, response_mask=ones, logprobs=t, ref_logprobs=t,
                   values=t, scores=t[:, 0], rewards=t, advantages=t, returns=t, has_eos=ones[:, 0])  # fmt: skip


def test_buffer_covers_every_episode_once_per_epoch_and_reshuffles():
    buffer = RolloutBuffer(
        _rollout(8), minibatch_size=4, micro_batch_size=2, generator=torch.Generator().manual_seed(0)
    )
    epochs = []
    for _ in range(2):
        minibatches = list(buffer.minibatches())
        assert len(minibatches) == 2 and all(len(mb) == 2 and len(mb[0]) == 2 for mb in minibatches)
        epochs.append([int(s) for mb in minibatches for micro in mb for s in micro.scores])
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(8))
    assert epochs[0] != epochs[1]


def test_buffer_refuses_sizes_that_do_not_divide():
    with pytest.raises(ValueError, match="--model.minibatch_size"):
        RolloutBuffer(_rollout(8), minibatch_size=3, micro_batch_size=1, generator=torch.Generator())


def test_prompt_records():
    src = Source("p.jsonl", 1)
    assert parse_prompt_record({"prompt": "hi"}, src).prompt == [{"role": "user", "content": "hi"}]
    sft_record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert parse_prompt_record(sft_record, src).prompt == [{"role": "user", "content": "q"}]
    with pytest.raises(DataError, match="p.jsonl:1"):
        parse_prompt_record({"text": "x"}, src)


def _padded_rollout() -> Rollout:
    """Four episodes: prompt width 4 (left-padded), response width 3 (right-padded after EOS)."""
    prompt_mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1], [0, 1, 1, 1]], dtype=torch.bool)
    response_mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    n, width = 4, 7
    per_token = {k: torch.arange(12.0).reshape(4, 3) + i for i, k in enumerate(
        ["logprobs", "ref_logprobs", "values", "rewards", "advantages", "returns"])}  # fmt: skip
    return Rollout(query_responses=torch.arange(n * width).reshape(n, width), attention_mask=torch.cat(
        [prompt_mask, response_mask], 1), response_mask=response_mask, scores=torch.arange(4.0),
        has_eos=torch.ones(4, dtype=torch.bool), **per_token)  # fmt: skip


def test_without_padding_columns_drops_only_columns_padded_in_every_row():
    rollout = _padded_rollout()
    # episodes 2 and 3: prompts of 1 and 3 tokens -> 1 left column is padding in both; responses end by column 2
    trimmed = rollout.select(torch.tensor([2, 3])).without_padding_columns()
    assert trimmed.query_responses.tolist() == [[15, 16, 17, 18, 19], [22, 23, 24, 25, 26]]
    assert trimmed.response_mask.tolist() == [[True, True], [True, True]]
    assert trimmed.advantages.tolist() == [[10.0, 11.0], [13.0, 14.0]]  # per-token tensors lose the same columns
    assert trimmed.scores.tolist() == [2.0, 3.0]
    # episode 1 has a full prompt and no left padding: nothing to drop on the left
    assert rollout.select(torch.tensor([1])).without_padding_columns().query_responses.tolist() == [
        [7, 8, 9, 10, 11, 12]
    ]


def test_trim_padding_groups_episodes_by_length_into_narrower_micro_batches():
    rollout = _padded_rollout()
    widths = {}
    for trim in (False, True):
        buffer = RolloutBuffer(rollout, 4, 2, torch.Generator().manual_seed(0), trim_padding=trim)
        (minibatch,) = buffer.minibatches()
        seen = torch.cat([m.scores for m in minibatch])
        assert sorted(seen.tolist()) == [0.0, 1.0, 2.0, 3.0]  # every episode once
        widths[trim] = [m.query_responses.shape[1] for m in minibatch]
    assert widths[False] == [7, 7]
    # ordered by length: episodes {1, 3} (6 and 5 real tokens) then {0, 2} (4 and 3): 4 + 2 and 2 + 2 columns
    assert widths[True] == [6, 4]
