"""The RL math as pure tensor functions: KL rewards, GAE, critic-free advantages, whitening, losses, KL controllers.

Nothing here knows about Lightning or models, so every function can be checked against hand-computed values
(see ``tests/test_ppo_core.py``).

Conventions shared by every function:

- ``batch`` is the number of responses, ``response_len`` the padded number of response tokens.
- Masks are bool tensors where True means "counts". A masked-out (False) position never changes a result,
  whatever value it holds (including ``inf`` or ``nan``): inputs are replaced with 0 there before any arithmetic,
  so neither the forward value nor a gradient can pick up garbage.
- Per-token outputs are 0 at masked-out positions unless a docstring says otherwise.
- Means over an empty mask are ``nan`` (0 / 0); no epsilon hides an empty batch.
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k3")
ADVANTAGE_ESTIMATORS = ("gae", "rloo", "grpo", "dr_grpo", "reinforce_pp")
GROUP_ESTIMATORS = ("rloo", "grpo", "dr_grpo")  # a baseline from the other samples of the same prompt: k >= 2
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "constant")


def _zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` with masked-out positions replaced by 0 (``where``, not ``*``, so ``inf``/``nan`` never leak)."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


# --------------------------------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------------------------------


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is True.

    Args:
        x: (...) values, any float shape.
        mask: same shape as ``x``, bool, True where the value counts.
        dim: reduce only along this dimension; None reduces over all positions.

    Returns:
        A scalar tensor (``dim=None``) or ``x`` with ``dim`` removed: the mean of the counted values.
        ``nan`` where no position counts.
    """
    total = _zero_masked(x, mask)
    if dim is None:
        return total.sum() / mask.sum()
    return total.sum(dim) / mask.sum(dim)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all positions where ``mask`` is True.

    Args:
        x: (...) values, any float shape.
        mask: same shape as ``x``, bool, True where the value counts.
        unbiased: divide by ``n - 1`` (Bessel's correction) instead of ``n``, the number of counted positions.

    Returns:
        A scalar tensor, the variance of the counted values.

    Raises:
        ValueError: ``unbiased`` and fewer than 2 positions count (the variance is undefined). This reads the
            count on the host, so it synchronises with an accelerator.
    """
    count = mask.sum()
    if unbiased and int(count) < 2:
        raise ValueError(f"masked_var(unbiased=True) needs at least 2 counted positions, got {int(count)}")
    values = _zero_masked(x, mask)  # before any arithmetic: inf - mean would give a nan gradient through where
    squared_dev = _zero_masked((values - masked_mean(values, mask)) ** 2, mask).sum()
    return squared_dev / (count - 1) if unbiased else squared_dev / count


def _stats_dtype(x: Tensor) -> torch.dtype:
    """float64 for accumulating statistics (MPS has none: float32 there)."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def _global_mean_and_var(
    values: Tensor, mask: Tensor, all_reduce: Callable[[Tensor], Tensor] | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, population variance and count of ``values`` (0 at masked positions) over all ranks.

    Two reductions: ``[sum, count]`` gives the mean, then the sum of squared deviations *from that mean*. Centring
    before squaring keeps the variance accurate whatever the offset; ``E[x^2] - mean^2`` cancels catastrophically
    when ``|mean| >> std`` (float32 advantages around 3000 lost every digit).
    """
    reduce = all_reduce if all_reduce is not None else (lambda t: t)
    total, count = reduce(torch.stack([values.sum(), mask.sum().to(values.dtype)])).unbind()
    mean = total / count
    squared_dev = reduce(_zero_masked((values - mean) ** 2, mask).sum().reshape(1))[0]
    return mean, squared_dev / count, count


def masked_whiten(
    x: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    all_reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Normalise ``x`` to zero mean and unit variance using statistics over the counted positions.

    The statistics are the mean and the population variance (divide by ``n``; whitening is insensitive to
    ``n`` vs ``n - 1`` and this stays defined for a single position): ``(x - mean) / sqrt(var + eps)``. They are
    accumulated in float64 and the variance is centred before squaring, so the result is accurate to the rounding
    of ``x``'s dtype for any offset of ``x``.

    Args:
        x: (...) values to whiten, e.g. advantages ``(batch, response_len)``.
        mask: same shape as ``x``, bool, True where the value counts.
        shift_mean: if False the mean is added back after scaling, so only the spread is normalised
            (Ziegler et al. 2019 and TRL do this for rewards, whose sign carries meaning).
        eps: added to the variance before the square root, guarding against a constant input.
        all_reduce: a function that returns the elementwise sum of its argument over all ranks (e.g. a wrapper
            around ``torch.distributed.all_reduce``), so N ranks whiten with the same statistics as one process
            holding the concatenated batch. It is called twice, in this order, on every rank: with ``[sum, count]``
            of this rank's counted values (shape ``(2,)``), then with their summed squared deviation from the
            global mean (shape ``(1,)``). None uses the local statistics only.

    Returns:
        Same shape as ``x``: the whitened values, 0 at masked-out positions, in ``x``'s dtype.
    """
    values = _zero_masked(x, mask).to(_stats_dtype(x))
    mean, var, _ = _global_mean_and_var(values, mask, all_reduce)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _zero_masked(whitened.to(x.dtype), mask)


def explained_variance(
    values: Tensor, returns: Tensor, mask: Tensor, all_reduce: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """How much of the returns' variance the value predictions explain: ``1 - Var[R - V] / Var[R]``.

    1 is perfect, 0 is no better than predicting the mean return, negative is worse than that. Variances are
    population variances, accumulated in float64 and centred before squaring (as in :func:`masked_whiten`).

    Args:
        values: (batch, response_len) value predictions ``V``.
        returns: (batch, response_len) targets ``R`` (e.g. GAE returns).
        mask: (batch, response_len) bool, True on real response tokens.
        all_reduce: as in :func:`masked_whiten`: returns the elementwise sum over all ranks. Called four times
            on every rank: the two reductions of ``Var[R]``, then the two of ``Var[R - V]``. None uses the local
            statistics only.

    Returns:
        A scalar tensor in float64 (float32 on MPS); ``nan`` when the counted returns are all equal
        (``Var[R] = 0``).
    """
    dtype = _stats_dtype(returns)
    r = _zero_masked(returns, mask).to(dtype)
    e = _zero_masked(returns - values, mask).to(dtype)
    _, var_returns, _ = _global_mean_and_var(r, mask, all_reduce)
    _, var_residual, _ = _global_mean_and_var(e, mask, all_reduce)
    nan = torch.full_like(var_returns, math.nan)
    return torch.where(var_returns == 0, nan, 1 - var_residual / var_returns)


# --------------------------------------------------------------------------------------------------------------
# Log-probabilities and entropy from logits
# --------------------------------------------------------------------------------------------------------------


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` at each position: ``logsumexp(z) - sum_i p_i z_i``.

    Holds at most one extra vocab-sized tensor at a time (the probabilities); the weighted sum is a batched
    matrix product, so no second vocab-sized product is formed.

    Args:
        logits: (..., vocab) unnormalised scores. Computed in their dtype; pass float32 for accurate entropies.

    Returns:
        (...) the entropy in nats at each position.
    """
    probs = torch.softmax(logits, dim=-1)
    expected_logit = (probs.unsqueeze(-2) @ logits.unsqueeze(-1)).squeeze(-1).squeeze(-1)
    return torch.logsumexp(logits, dim=-1) - expected_logit


# --------------------------------------------------------------------------------------------------------------
# KL penalty and rewards
# --------------------------------------------------------------------------------------------------------------


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, response_mask: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of ``KL(policy || reference)`` from log-probs of tokens sampled from the policy.

    With ``log_ratio = logprobs - ref_logprobs`` and ``r = exp(-log_ratio) = p_ref / p_policy``
    (Schulman, "Approximating KL divergence", 2020):

    - ``"k1"``: ``log_ratio``. Unbiased, can be negative per token (InstructGPT's penalty).
    - ``"k3"``: ``(r - 1) - log r``. Unbiased and never negative, lower variance.

    Args:
        logprobs: (batch, response_len) log-prob of each response token under the policy that sampled it.
        ref_logprobs: (batch, response_len) log-prob of each response token under the frozen reference.
        response_mask: (batch, response_len) bool, True on real response tokens.
        estimator: ``"k1"`` or ``"k3"``.

    Returns:
        (batch, response_len) the per-token KL estimate, 0 where ``response_mask`` is False.

    Raises:
        ValueError: unknown ``estimator``.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {KL_ESTIMATORS}")
    log_ratio = _zero_masked(logprobs - ref_logprobs, response_mask)
    if estimator == "k1":
        return log_ratio
    # (r - 1) - log r with log r = -log_ratio; expm1 keeps precision when the policies are close.
    return torch.expm1(-log_ratio) + log_ratio


def kl_rewards(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    scores: Tensor,
    response_mask: Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> tuple[Tensor, Tensor]:
    """Per-token rewards: ``-kl_coef * KL`` on every token plus the reward-model score on the last one.

    InstructGPT eq. 2: ``R(x, y) = r_theta(x, y) - beta * log(pi_RL(y|x) / pi_SFT(y|x))``, spread over tokens.

    Args:
        logprobs: (batch, response_len) log-prob of each response token under the sampling policy.
        ref_logprobs: (batch, response_len) log-prob of each response token under the frozen reference.
        scores: (batch,) reward-model score of each full response (read at its EOS token).
        response_mask: (batch, response_len) bool, True on real response tokens. The score is added at the last
            True position of each row (the EOS token, or the last token of a truncated response). A row with no
            True position receives no score and all-zero rewards.
        kl_coef: the KL coefficient beta.
        estimator: the per-token KL estimator, see :func:`kl_penalty`.

    Returns:
        rewards: (batch, response_len) per-token rewards, 0 where ``response_mask`` is False.
        kl: (batch, response_len) the per-token KL estimate used, 0 where ``response_mask`` is False.
    """
    kl = kl_penalty(logprobs, ref_logprobs, response_mask, estimator)
    rewards = -kl_coef * kl
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    last_index = torch.where(response_mask, positions, 0).amax(dim=1)
    row_scores = _zero_masked(scores.to(rewards.dtype), response_mask.any(dim=1))
    rewards = rewards.scatter_add(1, last_index.unsqueeze(1), row_scores.unsqueeze(1))
    return rewards, kl


# --------------------------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------------------------


def gae(rewards: Tensor, values: Tensor, response_mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), one episode per row.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, where ``t + 1`` is
    the next True position of the row. Masked-out positions are skipped: they are not steps, get advantage and
    return 0, and the recursion passes over them. After a row's last True position the episode ends, so the
    value there is 0 (terminal). Loops over time only, vectorised over the batch.

    Args:
        rewards: (batch, response_len) per-token rewards (see :func:`kl_rewards`).
        values: (batch, response_len) value-model prediction at each response token.
        response_mask: (batch, response_len) bool, True on real response tokens.
        gamma: discount factor (InstructGPT uses 1).
        lam: GAE lambda, trading bias (0) for variance (1).

    Returns:
        advantages: (batch, response_len) GAE advantages, 0 where ``response_mask`` is False.
        returns: (batch, response_len) value targets ``advantages + values``, 0 where ``response_mask`` is False.
    """
    rewards = _zero_masked(rewards, response_mask)
    values = _zero_masked(values, response_mask)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        is_step = response_mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = _zero_masked(advantage, is_step)
        next_value = torch.where(is_step, values[:, t], next_value)
        next_advantage = torch.where(is_step, advantage, next_advantage)
    returns = advantages + values  # both are already 0 at masked-out positions
    return advantages, returns


# --------------------------------------------------------------------------------------------------------------
# Critic-free advantages (no value model)
# --------------------------------------------------------------------------------------------------------------


def group_advantages(returns: Tensor, samples_per_prompt: int, estimator: str, eps: float = 1e-6) -> Tensor:
    """Sequence-level advantages from a baseline over the ``k`` samples of each prompt.

    Rows ``g*k .. g*k + k - 1`` of ``returns`` are the ``k = samples_per_prompt`` samples of prompt ``g``. With
    ``R_i`` the return of sample ``i`` and ``mean``, ``std`` its prompt's over the k samples:

    - ``"rloo"``: ``R_i - (sum_{j != i} R_j) / (k - 1)``, the leave-one-out baseline (Kool et al. 2019; Ahmadian et
      al. 2024, eq. 6). The baseline is a product with the off-diagonal ones matrix, so ``R_i`` is multiplied by
      exactly 0 in its own baseline: nothing of a sample leaks into it, not even rounding.
    - ``"grpo"``: ``(R_i - mean) / (std + eps)`` with the unbiased (Bessel) std of the group (Shao et al. 2024,
      DeepSeekMath section 4.1.2, outcome supervision).
    - ``"dr_grpo"``: ``R_i - mean`` (Liu et al. 2025, "Understanding R1-Zero-like training": no std division).

    Computed in float64 (float32 on MPS), returned in ``returns``' dtype.

    Args:
        returns: (batch,) the return of each episode, ``batch = n_prompts * k``, a prompt's samples contiguous.
        samples_per_prompt: k, at least 2.
        estimator: ``"rloo"``, ``"grpo"`` or ``"dr_grpo"``.
        eps: added to the group std under ``"grpo"`` (a group of equal returns gets advantage 0, not 0 / 0).

    Returns:
        (batch,) the advantage of each episode.

    Raises:
        ValueError: unknown estimator, k < 2, or a batch that is not a multiple of k.
    """
    k = samples_per_prompt
    if estimator not in GROUP_ESTIMATORS:
        raise ValueError(f"unknown group estimator {estimator!r}; choose one of {GROUP_ESTIMATORS}")
    if k < 2 or returns.shape[0] % k:
        raise ValueError(f"group_advantages needs k >= 2 dividing the batch, got k={k}, batch={returns.shape[0]}")
    r = returns.to(_stats_dtype(returns)).reshape(-1, k)
    if estimator == "rloo":
        others = 1.0 - torch.eye(k, dtype=r.dtype, device=r.device)  # (k, k): column i sums the samples j != i
        advantages = r - (r @ others) / (k - 1)
    else:
        mean = r.mean(dim=1, keepdim=True)
        advantages = r - mean
        if estimator == "grpo":
            advantages = advantages / (r.std(dim=1, keepdim=True) + eps)
    return advantages.reshape(-1).to(returns.dtype)


def group_reward_stats(scores: Tensor, samples_per_prompt: int) -> tuple[Tensor, Tensor]:
    """Per prompt: whether its k scores are all equal (such a group gives a zero group advantage), and their std.

    Args:
        scores: (batch,) the score of each episode, ``batch = n_prompts * k``, a prompt's samples contiguous.
        samples_per_prompt: k.

    Returns:
        all_equal: (n_prompts,) bool, True where every sample of the prompt scored the same.
        std: (n_prompts,) the population std of the prompt's scores (0 for k = 1), float64 (float32 on MPS).
    """
    s = scores.to(_stats_dtype(scores)).reshape(-1, samples_per_prompt)
    return (s == s[:, :1]).all(dim=1), s.std(dim=1, correction=0)


def returns_to_go(rewards: Tensor, response_mask: Tensor, gamma: float) -> Tensor:
    """Discounted return from each token to the end of its response: ``G_t = r_t + gamma * G_{t+1}``.

    REINFORCE++ (Hu 2025, eq. 6 with the k1 KL in ``rewards``). Masked-out positions are skipped, as in
    :func:`gae`: this is GAE with every value 0 and ``lam = 1``.

    Args:
        rewards: (batch, response_len) per-token rewards (see :func:`kl_rewards`).
        response_mask: (batch, response_len) bool, True on real response tokens.
        gamma: discount factor.

    Returns:
        (batch, response_len) the return-to-go, 0 where ``response_mask`` is False.
    """
    return gae(rewards, torch.zeros_like(rewards), response_mask, gamma, 1.0)[0]


def critic_free_advantages(
    rewards: Tensor,
    response_mask: Tensor,
    estimator: str,
    samples_per_prompt: int,
    gamma: float = 1.0,
    all_reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Per-token advantages without a value model, from the per-token rewards of :func:`kl_rewards`.

    - ``"rloo"``, ``"grpo"``, ``"dr_grpo"``: the return is the sum of a response's rewards (its score minus beta
      times its summed KL), turned into a sequence advantage by :func:`group_advantages` and put on every token.
    - ``"reinforce_pp"``: :func:`returns_to_go`, whitened over every counted token of the batch on all ranks
      (:func:`masked_whiten`, ``eps=1e-8``); any k, including 1.

    Args:
        rewards: (batch, response_len) per-token rewards, 0 where ``response_mask`` is False.
        response_mask: (batch, response_len) bool, True on real response tokens.
        estimator: ``"rloo"``, ``"grpo"``, ``"dr_grpo"`` or ``"reinforce_pp"``.
        samples_per_prompt: k; rows ``g*k .. g*k + k - 1`` answer prompt ``g``.
        gamma: discount of the return-to-go (``reinforce_pp`` only).
        all_reduce: as in :func:`masked_whiten` (``reinforce_pp`` only; the group estimators need only the
            prompt's own rows).

    Returns:
        (batch, response_len) advantages, 0 where ``response_mask`` is False.
    """
    if estimator == "reinforce_pp":
        return masked_whiten(returns_to_go(rewards, response_mask, gamma), response_mask, all_reduce=all_reduce)
    sequence = group_advantages(_zero_masked(rewards, response_mask).sum(1), samples_per_prompt, estimator)
    return sequence_to_tokens(sequence, response_mask)


def sequence_to_tokens(advantages: Tensor, response_mask: Tensor) -> Tensor:
    """(batch, response_len) each episode's sequence-level advantage on each of its counted tokens, 0 elsewhere.

    Args:
        advantages: (batch,) one advantage per episode.
        response_mask: (batch, response_len) bool, True on real response tokens.
    """
    return _zero_masked(advantages.unsqueeze(1).expand(response_mask.shape), response_mask)


# --------------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------------


def aggregate_loss(
    per_token: Tensor, response_mask: Tensor, mode: str = "token_mean", max_len: int | None = None
) -> Tensor:
    """Reduce a per-token loss to a scalar.

    - ``"token_mean"``: the mean over every counted token of the batch (PPO's; a long response weighs more).
    - ``"seq_mean_token_mean"``: the mean over episodes of each episode's token mean (GRPO's paper, eq. 3: every
      response weighs the same, so a token of a short response weighs more).
    - ``"constant"``: the sum over counted tokens divided by ``max_len * batch`` (Dr. GRPO: no division by a
      response's own length, which biases wrong answers to grow longer).

    Args:
        per_token: (batch, response_len) the loss at each token.
        response_mask: (batch, response_len) bool, True on real response tokens.
        mode: one of ``LOSS_AGGREGATIONS``.
        max_len: the constant length of ``"constant"`` (the longest possible response, ``max_new_tokens``).

    Returns:
        A scalar tensor; ``nan`` for ``token_mean`` over an empty mask and for a row with no counted token under
        ``seq_mean_token_mean``.

    Raises:
        ValueError: unknown mode, or ``"constant"`` without ``max_len``.
    """
    if mode == "token_mean":
        return masked_mean(per_token, response_mask)
    if mode == "seq_mean_token_mean":
        return masked_mean(per_token, response_mask, dim=1).mean()
    if mode == "constant":
        if max_len is None:
            raise ValueError("aggregate_loss(mode='constant') needs max_len")
        return _zero_masked(per_token, response_mask).sum() / (max_len * per_token.shape[0])
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {LOSS_AGGREGATIONS}")


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_range: float,
    aggregation: str = "token_mean",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate objective, as a loss to minimise (Schulman et al. 2017, eq. 7).

    ``loss = mean_t max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - clip_range, 1 + clip_range))`` with
    ``ratio_t = exp(logprobs_t - old_logprobs_t)``, the mean taken over all counted tokens of the minibatch
    (``aggregation="token_mean"``; see :func:`aggregate_loss` for the others, ``max_len`` is its argument).

    Args:
        logprobs: (batch, response_len) log-prob of each response token under the policy being optimised.
        old_logprobs: (batch, response_len) the same log-probs at rollout time (no grad).
        advantages: (batch, response_len) advantage of each token (usually whitened GAE).
        response_mask: (batch, response_len) bool, True on real response tokens.
        clip_range: epsilon, how far the ratio may move from 1 before the objective stops rewarding it.

    Returns:
        loss: scalar, differentiable with respect to ``logprobs``.
        stats: detached scalars over counted tokens:
            ``clipfrac``, fraction of tokens where the clipped term is the larger (active) one;
            ``approxkl``, ``0.5 * mean((logprobs - old_logprobs)^2)``;
            ``approxkl_k3``, ``mean((ratio - 1) - log ratio)``, the k3 estimate of ``KL(old || new)``;
            ``ratio_mean``, mean of the ratio.
    """
    log_ratio = _zero_masked(logprobs - old_logprobs, response_mask)
    advantages = _zero_masked(advantages, response_mask)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = aggregate_loss(torch.maximum(unclipped, clipped), response_mask, aggregation, max_len)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), response_mask),
            "approxkl": 0.5 * masked_mean(log_ratio**2, response_mask),
            "approxkl_k3": masked_mean((ratio - 1) - log_ratio, response_mask),
            "ratio_mean": masked_mean(ratio, response_mask),
        }
    return loss, stats


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    response_mask: Tensor,
    clip_range_value: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped value loss: ``0.5 * mean_t max((V_t - R_t)^2, (V_clip_t - R_t)^2)``.

    ``V_clip_t = old_values_t + clip(V_t - old_values_t, -clip_range_value, clip_range_value)``, as in OpenAI
    baselines' PPO2; the max keeps the loss pessimistic so the value cannot leap far from its rollout estimate.

    Args:
        values: (batch, response_len) value predictions of the model being optimised.
        old_values: (batch, response_len) the same predictions at rollout time (no grad).
        returns: (batch, response_len) value targets (GAE returns).
        response_mask: (batch, response_len) bool, True on real response tokens.
        clip_range_value: how far a prediction may move from ``old_values`` before its gradient is cut.

    Returns:
        loss: scalar, differentiable with respect to ``values``.
        stats: detached scalars over counted tokens: ``vf_clipfrac``, fraction of tokens where the clipped
            error is the larger (active) one.
    """
    values = _zero_masked(values, response_mask)
    old_values = _zero_masked(old_values, response_mask)
    returns = _zero_masked(returns, response_mask)
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), response_mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((clipped_error > unclipped_error).to(values.dtype), response_mask)}
    return loss, stats


# --------------------------------------------------------------------------------------------------------------
# KL coefficient controllers
# --------------------------------------------------------------------------------------------------------------


class FixedKLController:
    """A constant KL coefficient (InstructGPT's beta).

    Args:
        kl_coef: the coefficient, read from ``value``.
    """

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Do nothing; present so both controllers are called the same way."""

    def state_dict(self) -> dict[str, float]:
        """The current coefficient, for checkpoints."""
        return {"value": self.value}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        """Restore the coefficient saved by :meth:`state_dict`."""
        self.value = float(state_dict["value"])


class AdaptiveKLController:
    """A KL coefficient steered towards a target KL (Ziegler et al. 2019, "Fine-tuning LMs from human prefs").

    After each PPO iteration: ``error = clip(current_kl / target - 1, -0.2, 0.2)`` and
    ``value *= 1 + error * n_steps / horizon``. The ±0.2 clip is the paper's, bounding the change per update.

    Args:
        init_kl_coef: the coefficient before the first update; must be > 0.
        target: the KL (nats per response) to steer towards; must be > 0.
        horizon: how many samples it takes to move the coefficient by ``error``; must be > 0.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        problems = [
            f"{name} must be > 0, got {value}"
            for name, value in (("init_kl_coef", init_kl_coef), ("target", target), ("horizon", horizon))
            if not value > 0
        ]
        if problems:
            raise ValueError("AdaptiveKLController: " + "; ".join(problems))
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move the coefficient up when ``current_kl`` exceeds the target, down when it falls short.

        Args:
            current_kl: the mean KL (nats per response) measured over the last iteration's rollout.
            n_steps: the number of samples (responses) in that rollout.
        """
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        """The current coefficient, for checkpoints (``target`` and ``horizon`` come from the config)."""
        return {"value": self.value}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        """Restore the coefficient saved by :meth:`state_dict`."""
        self.value = float(state_dict["value"])
