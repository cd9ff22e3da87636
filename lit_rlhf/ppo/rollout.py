"""Rollouts: generate responses, read them with every model once, and serve them back as minibatches.

The pieces, in the order a PPO iteration uses them (see ``PPOModule.collect_rollout``):

1. :func:`lit_rlhf.generation.sample_responses` samples responses with Hugging Face ``generate`` and the KV cache
   from left-padded prompts, one random stream per prompt seeded from the prompt's identity, so a response does not
   depend on which other prompts share the batch: the rollout is the same with 1 or N processes, and a resumed run
   samples what an unbroken one would.
2. :func:`first_eos_mask` masks everything after the first EOS.
3. :func:`response_logprobs`, :func:`token_values` and :func:`score_at_last_token` run the policy, reference,
   value and reward models over ``prompt + response``, batched, without gradients. Log-probs use the logits
   divided by the sampling temperature (DESIGN: "Details that decide whether PPO learns").
4. A :class:`Rollout` holds the result; :class:`RolloutBuffer` yields shuffled minibatches (reshuffled every
   PPO epoch), each split into micro-batches for gradient accumulation.

Layout of the token tensors: ``query_responses`` is ``(batch, prompt_len + response_len)``: the prompt
left-padded to ``prompt_len``, then the response right-padded to ``response_len``. Position ids count real tokens
only, so padding never shifts a position (models were trained right-padded).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lit_rlhf.losses import at_least_float32, logprobs_from_logits
from lit_rlhf.models import score_head
from lit_rlhf.ppo.core import entropy_from_logits


def first_eos_mask(responses: Tensor, eos_token_id: int) -> tuple[Tensor, Tensor]:
    """Which response tokens count: every token up to and including the first EOS.

    Args:
        responses: (batch, response_len) sampled tokens.

    Returns:
        response_mask: (batch, response_len) bool, True up to and including the first EOS (all True without EOS).
        has_eos: (batch,) bool, True where the response contains an EOS.
    """
    is_eos = responses == eos_token_id
    eos_before = is_eos.long().cumsum(dim=1) - is_eos.long()  # EOS tokens strictly before each position
    return eos_before == 0, is_eos.any(dim=1)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """(batch, length) positions counting only real tokens: 0 at the first real token, 0 on left padding."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def response_logits(
    model: nn.Module, query_responses: Tensor, attention_mask: Tensor, response_len: int, with_hidden: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """(batch, response_len, vocab) the logits that predict each response token (one forward, with grad if on).

    With ``with_hidden``, also the final hidden state at the same positions, (batch, response_len, hidden): what
    a value head on the policy's backbone reads (``--model.value_model=shared``).
    """
    out = model(
        input_ids=query_responses,
        attention_mask=attention_mask.long(),
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=response_len + 1,  # never materialise the logits of prompt positions
        use_cache=False,
        output_hidden_states=with_hidden,
    )
    logits = out.logits[:, :-1]
    if not with_hidden:
        return logits
    return logits, out.hidden_states[-1][:, -response_len - 1 : -1]


def response_logprobs(
    model: nn.Module,
    query_responses: Tensor,
    attention_mask: Tensor,
    response_len: int,
    temperature: float,
    with_entropy: bool = False,
    value_head: nn.Module | None = None,
) -> tuple[Tensor, ...]:
    """Log-prob of each response token under ``softmax(logits / temperature)``.

    Args:
        query_responses: (batch, prompt_len + response_len) prompt and response tokens.
        attention_mask: same shape, bool, True on real tokens.
        value_head: A value head on the policy's final hidden states; when given, the values of the same
            forward are returned as a third tensor.

    Returns:
        logprobs: (batch, response_len).
        entropy: (batch, response_len) the entropy of the sampling distribution at each token, or None.
        values: (batch, response_len), only when ``value_head`` is given.
    """
    if value_head is None:
        logits = response_logits(model, query_responses, attention_mask, response_len)
    else:
        logits, hidden = response_logits(model, query_responses, attention_mask, response_len, with_hidden=True)
    logits = at_least_float32(logits)
    if temperature != 1.0:
        logits = logits / temperature
    logprobs = logprobs_from_logits(logits, query_responses[:, -response_len:])
    entropy = entropy_from_logits(logits) if with_entropy else None
    if value_head is None:
        return logprobs, entropy
    return logprobs, entropy, at_least_float32(value_head(hidden).squeeze(-1))


def per_position_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(batch, length) the score head of a sequence-classification model applied at every position.

    The model is called whole (so that FSDP2's and DDP's hooks on its root run, and peft's wrappers apply) and the
    head's output is read with a forward hook before the model pools it at the last token.
    """
    captured: list[Tensor] = []
    handle = score_head(model).register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask.long(),
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
    finally:
        handle.remove()
    if len(captured) != 1 or captured[0].shape[:2] != input_ids.shape:
        raise RuntimeError(f"{type(model).__name__}: expected its score head to run once over every position")
    return at_least_float32(captured[0].squeeze(-1))


def token_values(model: nn.Module, query_responses: Tensor, attention_mask: Tensor, response_len: int) -> Tensor:
    """(batch, response_len) the value of the state before each response token.

    The score head of a sequence-classification model applied at every position (not only the last), read at the
    positions whose hidden state predicts each response token.
    """
    return per_position_scores(model, query_responses, attention_mask)[:, -response_len - 1 : -1]


def score_at_last_token(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, last_index: Tensor) -> Tensor:
    """(batch,) the reward model's score read at ``last_index`` (the EOS token) of each row.

    Args:
        input_ids: (batch, length) tokens.
        attention_mask: (batch, length) bool, True on real tokens.
        last_index: (batch,) long, the position whose hidden state is scored.
    """
    scores = per_position_scores(model, input_ids, attention_mask)
    return scores[torch.arange(len(scores), device=scores.device), last_index]


def in_chunks(fn, batch_size: int, *tensors: Tensor) -> Tensor:
    """Apply ``fn`` to row chunks of ``tensors`` of ``batch_size`` rows and concatenate the results."""
    return torch.cat([fn(*(t[s] for t in tensors)) for s in _chunks(len(tensors[0]), batch_size)])


@dataclass
class Rollout:
    """One PPO iteration's episodes on this process; every tensor's first dimension is the episode.

    Attributes:
        query_responses: (batch, prompt_len + response_len) prompt (left-padded) then response tokens.
        attention_mask: (batch, prompt_len + response_len) bool, True on prompt tokens and counted response tokens.
        response_mask: (batch, response_len) bool, True on response tokens up to and including the first EOS.
        logprobs: (batch, response_len) log-prob of each response token under the sampling policy (``old_logprobs``
            during the update).
        ref_logprobs: (batch, response_len) the same under the frozen reference.
        values: (batch, response_len) value predictions at rollout time (``old_values`` during the update).
        scores: (batch,) reward of each response (RM at EOS, or the no-EOS penalty).
        rewards: (batch, response_len) per-token rewards, KL penalty included.
        advantages: (batch, response_len) whitened GAE advantages.
        returns: (batch, response_len) value targets.
        has_eos: (batch,) bool, True where the response ended with EOS.
    """

    query_responses: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    logprobs: Tensor
    ref_logprobs: Tensor
    values: Tensor
    scores: Tensor
    rewards: Tensor
    advantages: Tensor
    returns: Tensor
    has_eos: Tensor

    def __len__(self) -> int:
        return len(self.query_responses)

    @property
    def response_len(self) -> int:
        return self.response_mask.shape[1]

    def select(self, index: Tensor | slice) -> Rollout:
        """The episodes at ``index`` (rows), as a new Rollout."""
        return Rollout(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    def without_padding_columns(self) -> Rollout:
        """The same episodes without the columns that are padding in every row.

        Drops the left padding shared by all prompts (their longest prompt decides) and the response positions
        after every row's EOS. Nothing that counts changes: position ids count real tokens only, attention never
        reads padding, and masked response positions never enter a loss. A micro-batch of short episodes then
        costs what its tokens cost, not what the longest episode of the rollout costs.
        """
        prompt_len = self.query_responses.shape[1] - self.response_len
        real = self.attention_mask[:, :prompt_len].any(dim=0)
        start = int(real.int().argmax()) if bool(real.any()) else prompt_len
        counted = self.response_mask.any(dim=0)
        end = self.response_len - int(counted.flip(0).int().argmax()) if bool(counted.any()) else 1
        if start == 0 and end == self.response_len:
            return self
        fields = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("query_responses", "attention_mask"):
                value = value[:, start : prompt_len + end]
            elif value.dim() == 2:  # (batch, response_len) tensors
                value = value[:, :end]
            fields[f.name] = value
        return Rollout(**fields)


class RolloutBuffer:
    """Serve a rollout as shuffled minibatches of micro-batches, a fresh order every PPO epoch.

    One optimizer step per minibatch; its micro-batches accumulate gradients into it.

    Args:
        rollout: The episodes of this process.
        minibatch_size: Episodes per optimizer step (per process); must divide ``len(rollout)``.
        micro_batch_size: Episodes per forward/backward; must divide ``minibatch_size``.
        generator: Source of the shuffles (seeded by the caller, so a resumed run shuffles identically).
        trim_padding: Order each minibatch's episodes by length and drop each micro-batch's all-padding columns.
    """

    def __init__(
        self,
        rollout: Rollout,
        minibatch_size: int,
        micro_batch_size: int,
        generator: torch.Generator,
        trim_padding: bool = False,
    ):
        n = len(rollout)
        if n % minibatch_size or minibatch_size % micro_batch_size:
            raise ValueError(
                f"minibatch_size={minibatch_size} must divide the rollout ({n} episodes) and micro_batch_size="
                f"{micro_batch_size} must divide minibatch_size (--model.minibatch_size, --model.micro_batch_size)"
            )
        self.rollout = rollout
        self.minibatch_size = minibatch_size
        self.micro_batch_size = micro_batch_size
        self.generator = generator
        self.trim_padding = trim_padding

    def __len__(self) -> int:
        """Minibatches per epoch."""
        return len(self.rollout) // self.minibatch_size

    def minibatches(self) -> Iterator[list[Rollout]]:
        """One PPO epoch: every episode once, in a new random order, as lists of micro-batches.

        With ``trim_padding``, the episodes of a minibatch are ordered by length before they are cut into
        micro-batches, and each micro-batch drops its all-padding columns (:meth:`Rollout.without_padding_columns`).
        The gradient of a minibatch is the sum over its micro-batches, so which episodes share a micro-batch does not
        change it; only the padding computed goes down (results agree to float round-off, not bit for bit, since the
        matrix shapes change).
        """
        order = torch.randperm(len(self.rollout), generator=self.generator).to(self.rollout.scores.device)
        lengths = self.rollout.attention_mask.sum(dim=1)
        for start in range(0, len(order), self.minibatch_size):
            minibatch = order[start : start + self.minibatch_size]
            if not self.trim_padding:
                yield [self.rollout.select(minibatch[i : i + self.micro_batch_size])
                       for i in range(0, self.minibatch_size, self.micro_batch_size)]  # fmt: skip
                continue
            if self.micro_batch_size < self.minibatch_size:
                minibatch = minibatch[torch.sort(lengths[minibatch], descending=True, stable=True).indices]
            yield [
                self.rollout.select(minibatch[i : i + self.micro_batch_size]).without_padding_columns()
                for i in range(0, self.minibatch_size, self.micro_batch_size)
            ]
