"""Tests for lit_rlhf.ppo.core: hand-computed values (arithmetic in comments), a plain-loop GAE oracle,
and properties (masked positions never matter, two shards whiten like one batch, ratio 1 on the first pass)."""

import math
import threading

import pytest
import torch

from lit_rlhf.losses import logprobs_from_logits  # shared with DPO
from lit_rlhf.ppo.core import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_penalty,
    kl_rewards,
    masked_mean,
    masked_var,
    masked_whiten,
)

F64 = torch.float64


def tensor(data: list) -> torch.Tensor:
    return torch.tensor(data, dtype=F64)


def mask(data: list) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.bool)


def assert_close(actual: torch.Tensor, expected: list | float | torch.Tensor, **kwargs: float) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, **kwargs)


def ragged_mask(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """Rows of every kind the code may meet: right-padded, left-padded, with holes, full, empty."""
    rows = []
    for row in range(batch):
        kind = row % 5
        n = int(torch.randint(1, length + 1, (1,), generator=generator))
        if kind == 0:
            rows.append([t < n for t in range(length)])
        elif kind == 1:
            rows.append([t >= length - n for t in range(length)])
        elif kind == 2:
            rows.append((torch.rand(length, generator=generator) > 0.4).tolist())
        elif kind == 3:
            rows.append([True] * length)
        else:
            rows.append([False] * length)
    return mask(rows)


def with_garbage(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x`` with masked-out positions replaced by values that would wreck any result they touched."""
    garbage = torch.tensor([1e30, -1e30, math.inf, -math.inf, math.nan], dtype=x.dtype)
    filler = garbage[torch.arange(x.numel()) % len(garbage)].reshape(x.shape)
    return torch.where(keep, x, filler)


# ------------------------------------------------------------------------------------------------------------
# KL penalty and rewards
# ------------------------------------------------------------------------------------------------------------


def test_kl_rewards_hand_computed():
    logprobs = tensor([[-1.0, -2.0, -3.0], [-0.5, -1.0, -1.0]])
    ref_logprobs = tensor([[-1.5, -2.0, -9.0], [-0.7, -4.0, -4.0]])
    response_mask = mask([[True, True, False], [True, False, False]])
    scores = tensor([1.0, 2.0])
    rewards, kl = kl_rewards(logprobs, ref_logprobs, scores, response_mask, kl_coef=0.1)
    # row 0: kl = [-1.0 - -1.5, -2.0 - -2.0, masked] = [0.5, 0.0, 0]; rewards = -0.1 * kl = [-0.05, 0.0, 0],
    #        score 1.0 lands on the last real token (index 1): [-0.05, 1.0, 0]
    # row 1: kl = [-0.5 - -0.7, masked, masked] = [0.2, 0, 0]; rewards = [-0.02 + 2.0, 0, 0] = [1.98, 0, 0]
    assert_close(kl, [[0.5, 0.0, 0.0], [0.2, 0.0, 0.0]])
    assert_close(rewards, [[-0.05, 1.0, 0.0], [1.98, 0.0, 0.0]])


def test_kl_rewards_score_at_last_true_position_and_not_on_empty_rows():
    logprobs = torch.zeros(3, 4, dtype=F64)
    response_mask = mask([[True, False, True, False], [False, False, False, False], [True, True, True, True]])
    rewards, _ = kl_rewards(logprobs, logprobs, tensor([3.0, 5.0, 7.0]), response_mask, kl_coef=0.1)
    # zero KL, so rewards are only the scores: row 0's last True is index 2 (past the hole at 1),
    # row 1 has no real token and gets nothing, row 2's last True is index 3
    assert_close(rewards, [[0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 7.0]])


def test_kl_penalty_k3_hand_computed():
    logprobs = tensor([[-1.0, -2.0]])
    ref_logprobs = tensor([[-1.5, -1.0]])
    kl = kl_penalty(logprobs, ref_logprobs, mask([[True, True]]), estimator="k3")
    # token 0: r = exp(ref - logp) = exp(-0.5) = 0.6065307; (r - 1) - log r = -0.3934693 + 0.5 = 0.1065307
    # token 1: r = exp(1) = 2.7182818; (r - 1) - log r = 1.7182818 - 1 = 0.7182818
    assert_close(kl, [[0.1065307, 0.7182818]], rtol=0, atol=1e-7)


def test_kl_penalty_k3_non_negative_and_matches_formula():
    generator = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(8, 16, generator=generator, dtype=F64) * 5
    ref_logprobs = -torch.rand(8, 16, generator=generator, dtype=F64) * 5
    response_mask = ragged_mask(8, 16, generator)
    kl = kl_penalty(logprobs, ref_logprobs, response_mask, estimator="k3")
    r = torch.exp(ref_logprobs - logprobs)
    expected = torch.where(response_mask, (r - 1) - torch.log(r), 0.0)
    assert_close(kl, expected)
    assert (kl >= 0).all()
    # k1 is a different estimator: it goes negative where the reference is more likely
    assert (kl_penalty(logprobs, ref_logprobs, response_mask, estimator="k1") < 0).any()


def test_kl_penalty_unknown_estimator():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="k2"):
        kl_penalty(x, x, mask([[True, True]]), estimator="k2")


# ------------------------------------------------------------------------------------------------------------
# Masked statistics
# ------------------------------------------------------------------------------------------------------------


def test_masked_mean_hand_computed():
    x = tensor([[1.0, 2.0, 100.0], [3.0, -100.0, 100.0]])
    keep = mask([[True, True, False], [True, False, False]])
    # all: (1 + 2 + 3) / 3 = 2; per row: (1 + 2) / 2 = 1.5 and 3 / 1 = 3
    assert_close(masked_mean(x, keep), 2.0)
    assert_close(masked_mean(x, keep, dim=1), [1.5, 3.0])
    assert torch.isnan(masked_mean(x, torch.zeros_like(keep)))


def test_masked_var_hand_computed():
    x = tensor([[1.0, 2.0, 3.0, 4.0, 50.0]])
    keep = mask([[True, True, True, True, False]])
    # mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5; unbiased 5 / 3, biased 5 / 4
    assert_close(masked_var(x, keep), 5 / 3)
    assert_close(masked_var(x, keep, unbiased=False), 1.25)
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, mask([[True, False, False, False, False]]))


def test_masked_whiten_hand_computed():
    x = tensor([[1.0, 2.0, 3.0, 40.0]])
    keep = mask([[True, True, True, False]])
    # mean 2; population variance (1 + 0 + 1) / 3 = 2/3; std 0.8164966; (x - 2) / std = [-1.2247449, 0, 1.2247449]
    assert_close(masked_whiten(x, keep, eps=0.0), [[-1.2247449, 0.0, 1.2247449, 0.0]])
    # shift_mean=False adds the mean 2 back: [0.7752551, 2, 3.2247449]
    assert_close(masked_whiten(x, keep, shift_mean=False, eps=0.0), [[0.7752551, 2.0, 3.2247449, 0.0]])
    # eps=1 divides by sqrt(2/3 + 1) = 1.2909944: [-0.7745967, 0, 0.7745967]
    assert_close(masked_whiten(x, keep, eps=1.0), [[-0.7745967, 0.0, 0.7745967, 0.0]])


class SimulatedRanks:
    """N ranks in threads whose ``all_reduce(rank)`` hooks sum elementwise in lockstep, as a real collective does:
    every rank must make the same calls in the same order, or the barrier times out."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.slots: list[torch.Tensor | None] = [None] * n
        self.barrier = threading.Barrier(n, timeout=10)
        self.calls = [0] * n

    def all_reduce(self, rank: int):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.calls[rank] += 1
            self.slots[rank] = t.clone()
            self.barrier.wait()
            total = torch.stack(self.slots).sum(0)
            self.barrier.wait()  # nobody overwrites a slot before every rank has read them all
            return total

        return reduce

    def run(self, fn) -> list:
        """``fn(rank, all_reduce)`` on every rank at once; their results in rank order."""
        results: list = [None] * self.n
        errors: list[BaseException] = []

        def target(rank: int) -> None:
            try:
                results[rank] = fn(rank, self.all_reduce(rank))
            except BaseException as e:  # noqa: BLE001 - re-raised below, in the test's thread
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(rank,)) for rank in range(self.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


def test_masked_whiten_two_shards_equal_concatenated_batch():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(10, 7, generator=generator, dtype=F64) * 3 + 1
    keep = ragged_mask(10, 7, generator)
    shards = [(x[:4], keep[:4]), (x[4:], keep[4:])]
    ranks = SimulatedRanks(2)
    sharded = torch.cat(ranks.run(lambda rank, reduce: masked_whiten(*shards[rank], all_reduce=reduce)))
    assert ranks.calls == [2, 2], "two reductions on every rank: [sum, count], then the centred sum of squares"

    # independent reference: flatten the counted values and use torch's own mean and std
    flat = x[keep]
    expected = torch.where(keep, (x - flat.mean()) / torch.sqrt(flat.var(unbiased=False) + 1e-8), 0.0)
    assert_close(sharded, expected)
    assert_close(masked_whiten(x, keep), expected)
    # the hook matters: local statistics alone give a different answer
    assert not torch.allclose(masked_whiten(*shards[0]), sharded[:4])


@pytest.mark.parametrize("offset", [0.0, 100.0, 3000.0, 1e6])
def test_masked_whiten_of_float32_is_accurate_to_float32_rounding_whatever_the_offset(offset):
    # E[x^2] - mean^2 in float32 cancelled catastrophically here: at offset 3000 the variance rounded to <= 0 and
    # the output was scaled by 1/sqrt(eps), errors ~4e4. Centred statistics in float64 leave only the rounding of
    # the float32 result: |whitened| < 6 here, so 6 * 2^-24 ~ 3.6e-7 bounds the error, whatever the offset.
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 128, generator=generator, dtype=F64) + offset).float()
    keep = torch.zeros(64, 128, dtype=torch.bool)
    keep[:, :100] = True
    counted = x.double()[keep]
    expected = torch.where(keep, (x.double() - counted.mean()) / torch.sqrt(counted.var(unbiased=False) + 1e-8), 0.0)
    assert float(expected.abs().max()) < 6
    whitened = masked_whiten(x, keep)
    assert whitened.dtype == torch.float32
    torch.testing.assert_close(whitened.double(), expected, atol=6 * 2**-24, rtol=0)
    # the same for explained variance's centred variances: predicting the mean explains nothing (0, not noise)
    ev = explained_variance(torch.full_like(x, float(counted.mean())), x, keep)
    assert abs(float(ev)) < 1e-6


def test_masked_var_and_whiten_gradients_are_finite_and_right_whatever_masked_positions_hold():
    keep = mask([[True, True, True, False]])
    for garbage in (math.inf, -math.inf, math.nan, 1e30):
        x = tensor([[1.0, 2.0, 4.0, garbage]]).requires_grad_()
        masked_var(x, keep).backward()
        # var = sum((x - 7/3)^2) / 2, so d var / d x_i = (x_i - 7/3): [-4/3, -1/3, 5/3], and 0 where masked
        assert_close(x.grad, [[-4 / 3, -1 / 3, 5 / 3, 0.0]])

        x = tensor([[1.0, 2.0, 4.0, garbage]]).requires_grad_()
        weights = tensor([[0.3, -1.0, 2.0, 5.0]])
        (masked_whiten(x, keep) * weights).sum().backward()
        # oracle: autograd of the plain formula on the counted values alone
        counted = tensor([1.0, 2.0, 4.0]).requires_grad_()
        ((counted - counted.mean()) / torch.sqrt(counted.var(unbiased=False) + 1e-8) * weights[0, :3]).sum().backward()
        assert torch.isfinite(x.grad).all()
        assert_close(x.grad[0, :3], counted.grad)
        assert x.grad[0, 3] == 0


# ------------------------------------------------------------------------------------------------------------
# GAE
# ------------------------------------------------------------------------------------------------------------


def gae_reference(
    rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain double loop: for each row, GAE over its real tokens in order, value 0 after the last one."""
    advantages = torch.zeros_like(rewards)
    returns = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        steps = [t for t in range(rewards.shape[1]) if response_mask[b, t]]
        next_value, next_advantage = 0.0, 0.0
        for t in reversed(steps):
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            next_advantage = delta + gamma * lam * next_advantage
            next_value = values[b, t].item()
            advantages[b, t] = next_advantage
            returns[b, t] = next_advantage + next_value
    return advantages, returns


def test_gae_hand_computed_gamma_1_lam_095():
    rewards = tensor([[0.0, 0.0, 1.0, 1e6]])
    values = tensor([[0.5, 0.6, 0.7, -1e6]])
    response_mask = mask([[True, True, True, False]])
    advantages, returns = gae(rewards, values, response_mask, gamma=1.0, lam=0.95)
    # t=2 (last real token, next value 0): delta = 1 + 0 - 0.7 = 0.3;     A2 = 0.3
    # t=1: delta = 0 + 0.7 - 0.6 = 0.1;  A1 = 0.1 + 0.95 * 0.3   = 0.385
    # t=0: delta = 0 + 0.6 - 0.5 = 0.1;  A0 = 0.1 + 0.95 * 0.385 = 0.46575
    # returns = A + V = [0.96575, 0.985, 1.0]; the padded position contributes nothing and stays 0
    assert_close(advantages, [[0.46575, 0.385, 0.3, 0.0]])
    assert_close(returns, [[0.96575, 0.985, 1.0, 0.0]])


def test_gae_hand_computed_discount_with_lam_1():
    rewards = tensor([[1.0, 2.0]])
    values = tensor([[3.0, 4.0]])
    advantages, returns = gae(rewards, values, mask([[True, True]]), gamma=0.5, lam=1.0)
    # t=1: A1 = 2 + 0.5 * 0 - 4 = -2
    # t=0: A0 = (1 + 0.5 * 4 - 3) + 0.5 * 1 * (-2) = 0 - 1 = -1
    # lam=1 makes returns the discounted reward sum: R1 = 2, R0 = 1 + 0.5 * 2 = 2
    assert_close(advantages, [[-1.0, -2.0]])
    assert_close(returns, [[2.0, 2.0]])


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (0.99, 0.0)])
def test_gae_matches_plain_loop_on_ragged_batches(gamma: float, lam: float):
    generator = torch.Generator().manual_seed(2)
    rewards = torch.randn(10, 9, generator=generator, dtype=F64)
    values = torch.randn(10, 9, generator=generator, dtype=F64)
    response_mask = ragged_mask(10, 9, generator)
    advantages, returns = gae(rewards, values, response_mask, gamma=gamma, lam=lam)
    expected_advantages, expected_returns = gae_reference(rewards, values, response_mask, gamma, lam)
    assert_close(advantages, expected_advantages)
    assert_close(returns, expected_returns)


# ------------------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------------------


def test_clipped_policy_loss_hand_computed():
    # ratios a=1.5, b=0.5 (row 0), c=0.5, d=1.1 (row 1); the third column is padding
    log_ratio = tensor([[math.log(1.5), math.log(0.5), 0.0], [math.log(0.5), math.log(1.1), 0.0]])
    old_logprobs = tensor([[-1.0, -2.0, -3.0], [-1.5, -0.5, -3.0]])
    logprobs = (old_logprobs + log_ratio).requires_grad_()
    advantages = tensor([[1.0, 1.0, 5.0], [-1.0, 2.0, 5.0]])
    response_mask = mask([[True, True, False], [True, True, False]])
    loss, stats = clipped_policy_loss(logprobs, old_logprobs, advantages, response_mask, clip_range=0.2)
    # a: max(-1 * 1.5, -1 * 1.2) = -1.2  (clipped term active)
    # b: max(-1 * 0.5, -1 * 0.8) = -0.5
    # c: max( 1 * 0.5,  1 * 0.8) =  0.8  (clipped term active)
    # d: max(-2 * 1.1, -2 * 1.1) = -2.2  (tie: not counted as clipped)
    # loss = (-1.2 - 0.5 + 0.8 - 2.2) / 4 = -0.775; clipfrac = 2 / 4; ratio_mean = (1.5 + 0.5 + 0.5 + 1.1) / 4 = 0.9
    assert_close(loss, -0.775)
    assert_close(stats["clipfrac"], 0.5)
    assert_close(stats["ratio_mean"], 0.9)
    # approxkl = 0.5 * (0.4054651^2 + 2 * 0.6931472^2 + 0.0953102^2) / 4 = 0.5 * 1.1343920 / 4 = 0.1417990
    assert_close(stats["approxkl"], 0.1417990, rtol=0, atol=1e-7)
    # k3: (1.5 - 1 - 0.4054651) + 2 * (0.5 - 1 + 0.6931472) + (1.1 - 1 - 0.0953102) = 0.4855190; / 4 = 0.1213798
    assert_close(stats["approxkl_k3"], 0.1213798, rtol=0, atol=1e-7)
    loss.backward()
    # gradient -A * ratio / 4 where the unclipped term wins (b: -0.125, d: -0.55); 0 where clipping is active
    assert_close(logprobs.grad, [[0.0, -0.125, 0.0], [0.0, -0.55, 0.0]])
    # a wider clip range no longer clips a (ratio 1.5 < 1.6) or c (0.5 > 0.4)
    _, wide_stats = clipped_policy_loss(logprobs, old_logprobs, advantages, response_mask, clip_range=0.6)
    assert_close(wide_stats["clipfrac"], 0.0)


def test_clipped_policy_loss_ratio_exactly_one_on_first_pass():
    generator = torch.Generator().manual_seed(3)
    logprobs = -torch.rand(6, 8, generator=generator) * 4
    advantages = torch.randn(6, 8, generator=generator)
    response_mask = ragged_mask(6, 8, generator)
    loss, stats = clipped_policy_loss(logprobs, logprobs.clone(), advantages, response_mask, clip_range=0.2)
    assert stats["ratio_mean"].item() == 1.0
    assert stats["clipfrac"].item() == 0.0
    assert stats["approxkl"].item() == 0.0
    assert stats["approxkl_k3"].item() == 0.0
    assert_close(loss, -masked_mean(advantages, response_mask))


def test_clipped_value_loss_hand_computed():
    values = tensor([[1.0, 0.75, 0.0, 9.0]])
    old_values = tensor([[0.5, 0.5, 0.5, -9.0]])
    returns = tensor([[1.0, 0.0, 1.0, 9.0]])
    response_mask = mask([[True, True, True, False]])
    loss, stats = clipped_value_loss(values, old_values, returns, response_mask, clip_range_value=0.25)
    # a: v_clip = 0.5 + 0.25 = 0.75;  max((1 - 1)^2, (0.75 - 1)^2) = 0.0625  (clipped term active)
    # b: v_clip = 0.75 (at the edge); max(0.75^2, 0.75^2) = 0.5625
    # c: v_clip = 0.5 - 0.25 = 0.25;  max((0 - 1)^2, (0.25 - 1)^2) = 1.0
    # loss = 0.5 * (0.0625 + 0.5625 + 1.0) / 3 = 0.2708333; vf_clipfrac = 1 / 3
    assert_close(loss, 0.5 * 1.625 / 3)
    assert_close(stats["vf_clipfrac"], 1 / 3)
    # a wider range lets a reach its target: a contributes 0 and nothing is clipped
    loss, stats = clipped_value_loss(values, old_values, returns, response_mask, clip_range_value=1.0)
    assert_close(loss, 0.5 * (0.0 + 0.5625 + 1.0) / 3)
    assert_close(stats["vf_clipfrac"], 0.0)


# ------------------------------------------------------------------------------------------------------------
# Masked positions never change a result
# ------------------------------------------------------------------------------------------------------------


def test_masked_positions_never_change_any_result():
    generator = torch.Generator().manual_seed(4)
    shape = (10, 6)
    keep = ragged_mask(*shape, generator)
    keep[4, 2] = keep[9, 0] = True  # rows 4 and 9 were empty; a per-row mean over nothing is nan in both runs
    clean = {
        name: torch.randn(*shape, generator=generator)
        for name in ("logprobs", "ref_logprobs", "old_logprobs", "values", "old_values", "rewards", "advantages")
    }
    scores = torch.randn(shape[0], generator=generator)
    dirty = {name: with_garbage(x, keep) for name, x in clean.items()}

    def everything(t: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        results = [
            kl_penalty(t["logprobs"], t["ref_logprobs"], keep, "k1"),
            kl_penalty(t["logprobs"], t["ref_logprobs"], keep, "k3"),
            *kl_rewards(t["logprobs"], t["ref_logprobs"], scores, keep, kl_coef=0.05, estimator="k3"),
            masked_mean(t["values"], keep),
            masked_mean(t["values"], keep, dim=1),
            masked_var(t["values"], keep),
            masked_whiten(t["advantages"], keep),
            masked_whiten(t["rewards"], keep, shift_mean=False),
            *gae(t["rewards"], t["values"], keep, gamma=0.99, lam=0.95),
            explained_variance(t["values"], t["rewards"], keep),
        ]
        loss, stats = clipped_policy_loss(t["logprobs"], t["old_logprobs"], t["advantages"], keep, 0.2)
        results += [loss, *stats.values()]
        loss, stats = clipped_value_loss(t["values"], t["old_values"], t["rewards"], keep, 0.2)
        results += [loss, *stats.values()]
        return results

    clean_results, dirty_results = everything(clean), everything(dirty)
    assert len(clean_results) == len(dirty_results) == 19
    for clean_result, dirty_result in zip(clean_results, dirty_results, strict=True):
        assert torch.isfinite(clean_result).all()
        torch.testing.assert_close(dirty_result, clean_result, rtol=0, atol=0)


def test_masked_garbage_gets_zero_gradient():
    generator = torch.Generator().manual_seed(5)
    keep = ragged_mask(5, 4, generator)
    logprobs = with_garbage(torch.randn(5, 4, generator=generator), keep).requires_grad_()
    values = with_garbage(torch.randn(5, 4, generator=generator), keep).requires_grad_()
    zeros = torch.zeros(5, 4)
    policy_loss, _ = clipped_policy_loss(logprobs, zeros, torch.ones(5, 4), keep, 0.2)
    value_loss, _ = clipped_value_loss(values, zeros, torch.ones(5, 4), keep, 0.2)
    (policy_loss + value_loss).backward()
    for grad in (logprobs.grad, values.grad):
        assert torch.isfinite(grad).all()
        assert (grad[~keep] == 0).all()
        assert (grad[keep] != 0).any()


# ------------------------------------------------------------------------------------------------------------
# Logits
# ------------------------------------------------------------------------------------------------------------


def test_entropy_uniform_is_log_vocab():
    logits = torch.full((2, 3, 50), 1.7)
    assert_close(entropy_from_logits(logits), torch.full((2, 3), math.log(50)))


def test_entropy_hand_computed_and_matches_categorical():
    # logits [0, ln 3] give p = [0.25, 0.75]; H = 0.25 * ln 4 + 0.75 * ln(4/3) = 0.3465736 + 0.2157616 = 0.5623351
    assert_close(entropy_from_logits(tensor([0.0, math.log(3.0)])), 0.5623351, rtol=0, atol=1e-7)
    logits = torch.randn(4, 5, 11, generator=torch.Generator().manual_seed(6)) * 3
    expected = torch.distributions.Categorical(logits=logits).entropy()
    assert_close(entropy_from_logits(logits), expected)


def test_logprobs_from_logits_hand_computed():
    logits = tensor([[0.0, math.log(3.0)]])
    labels = torch.tensor([1])
    # T=1: p = 3 / (1 + 3) = 0.75, log 0.75 = -0.2876821
    assert_close(logprobs_from_logits(logits, labels), [-0.2876821], rtol=0, atol=1e-7)
    # T=2: logits / 2 = [0, ln sqrt(3)]; p = 1.7320508 / 2.7320508 = 0.6339746, log = -0.4557464
    assert_close(logprobs_from_logits(logits, labels, temperature=2.0), [-0.4557464], rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(logits, labels, temperature=0.0)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
def test_logprobs_from_logits_matches_log_softmax(temperature: float):
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 5, 13, generator=generator) * 4
    labels = torch.randint(0, 13, (3, 5), generator=generator)
    expected = torch.log_softmax(logits / temperature, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert_close(logprobs_from_logits(logits, labels, temperature=temperature), expected)


# ------------------------------------------------------------------------------------------------------------
# Explained variance
# ------------------------------------------------------------------------------------------------------------


def test_explained_variance():
    returns = tensor([[1.0, 2.0, 3.0, 4.0, 100.0]])
    keep = mask([[True, True, True, True, False]])
    # perfect predictions explain everything
    assert_close(explained_variance(returns, returns, keep), 1.0)
    # predicting the mean 2.5 everywhere explains nothing: Var[R - 2.5] = Var[R]
    assert_close(explained_variance(torch.full_like(returns, 2.5), returns, keep), 0.0)
    # V = [1, 2, 3, 5]: residual [0, 0, 0, -1] has mean -0.25 and variance (3 * 0.0625 + 0.5625) / 4 = 0.1875;
    # Var[R] = 1.25; 1 - 0.1875 / 1.25 = 0.85
    assert_close(explained_variance(tensor([[1.0, 2.0, 3.0, 5.0, -7.0]]), returns, keep), 0.85)
    # constant returns leave nothing to explain
    assert torch.isnan(explained_variance(returns, torch.ones_like(returns), keep))


def test_explained_variance_over_two_shards_equals_the_concatenated_batch():
    gen = torch.Generator().manual_seed(0)
    values, returns = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen) * 3 + 1
    keep = torch.rand(6, 5, generator=gen) > 0.3
    shards = [(values[:2], returns[:2], keep[:2]), (values[2:], returns[2:], keep[2:])]
    whole = explained_variance(values, returns, keep)
    on_ranks = SimulatedRanks(2).run(lambda rank, reduce: explained_variance(*shards[rank], all_reduce=reduce))
    for on_rank in on_ranks:
        assert_close(on_rank, whole)
    assert not torch.allclose(explained_variance(*shards[0]), whole), "one shard alone differs"


# ------------------------------------------------------------------------------------------------------------
# KL controllers
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current_kl", "expected"),
    [
        (9.0, 0.100512),  # 9 / 6 - 1 = 0.5, clipped to 0.2: 0.1 * (1 + 0.2 * 256 / 10000) = 0.1 * 1.00512
        (6.6, 0.100256),  # 6.6 / 6 - 1 = 0.1: 0.1 * (1 + 0.1 * 0.0256) = 0.1 * 1.00256
        (6.0, 0.1),  # on target: no change
        (5.4, 0.099744),  # 5.4 / 6 - 1 = -0.1: 0.1 * (1 - 0.1 * 0.0256) = 0.1 * 0.99744
        (0.0, 0.099488),  # -1 clipped to -0.2: 0.1 * (1 - 0.2 * 0.0256) = 0.1 * 0.99488
    ],
)
def test_adaptive_kl_controller_hand_computed(current_kl: float, expected: float):
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    controller.update(current_kl, n_steps=256)
    assert controller.value == pytest.approx(expected, rel=1e-12)


def test_adaptive_kl_controller_state_round_trip():
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    for _ in range(3):
        controller.update(9.0, n_steps=256)
    restored = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    restored.load_state_dict(controller.state_dict())
    # three clipped-up updates: 0.1 * 1.00512^3 = 0.1015437
    assert restored.value == pytest.approx(0.1 * 1.00512**3, rel=1e-12)
    controller.update(3.0, n_steps=256)
    restored.update(3.0, n_steps=256)
    assert restored.value == controller.value


def test_adaptive_kl_controller_rejects_bad_arguments():
    with pytest.raises(ValueError, match="target must be > 0, got 0.*horizon must be > 0, got -1"):
        AdaptiveKLController(init_kl_coef=0.1, target=0.0, horizon=-1)


def test_fixed_kl_controller():
    controller = FixedKLController(kl_coef=0.02)
    controller.update(100.0, n_steps=256)
    assert controller.value == 0.02
    restored = FixedKLController(kl_coef=0.5)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == 0.02
