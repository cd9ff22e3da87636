"""Critic-free estimators (RLOO, GRPO, Dr. GRPO, REINFORCE++) as options of PPOModule.

The math first: each estimator's advantages and its loss's gradient against slow float64 loops written from the
papers, on random inputs with ragged masks; the leave-one-out baseline of a constant group is 0 and a sample's
own reward never enters its baseline. Then the module: no value model is built or checkpointed, every knob
changes something, impossible batch combinations are refused naming the flags, RLOO and GRPO raise a rule-based
reward, and (slow) two processes train as one.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from lit_rlhf.ppo import core
from tests import test_ppo_module
from tests.test_ppo_module import letter_reward, make, trainer

model_dirs, data_files = test_ppo_module.model_dirs, test_ppo_module.data_files  # PPO's fixtures, shared

# --------------------------------------------------------------------------------------------------------------
# Oracles: plain float64 loops, one episode and one token at a time
# --------------------------------------------------------------------------------------------------------------


def loop_returns(scores, logprobs, ref_logprobs, mask, kl_coef):
    """Sequence return of each episode: its score minus beta x its summed k1 KL (Ahmadian et al. 2024, eq. 2)."""
    out = []
    for i in range(len(scores)):
        kl = sum(float(logprobs[i, t] - ref_logprobs[i, t]) for t in range(mask.shape[1]) if mask[i, t])
        out.append(float(scores[i]) - kl_coef * kl)
    return out


def loop_group_advantages(returns, k, estimator, eps=1e-6):
    adv = []
    for g in range(len(returns) // k):
        group = returns[g * k : (g + 1) * k]
        mean = sum(group) / k
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (k - 1))
        for i, r in enumerate(group):
            if estimator == "rloo":  # Kool et al. 2019: the mean of the other k - 1 samples
                adv.append(r - sum(o for j, o in enumerate(group) if j != i) / (k - 1))
            elif estimator == "grpo":  # Shao et al. 2024, outcome supervision
                adv.append((r - mean) / (std + eps))
            else:  # dr_grpo, Liu et al. 2025
                adv.append(r - mean)
    return adv


def loop_reinforce_pp(scores, logprobs, ref_logprobs, mask, kl_coef, gamma):
    """Hu 2025: r_t = -beta KL_t (+ score at the last token), G_t = sum_{s >= t} gamma^(s-t) r_s, whitened over all
    counted tokens of the batch (population variance, eps 1e-8)."""
    n, length = mask.shape
    returns = {}
    for i in range(n):
        steps = [t for t in range(length) if mask[i, t]]
        rewards = [-kl_coef * float(logprobs[i, t] - ref_logprobs[i, t]) for t in steps]
        if steps:
            rewards[-1] += float(scores[i])
        g = 0.0
        for t, r in reversed(list(zip(steps, rewards, strict=True))):
            g = r + gamma * g
            returns[i, t] = g
    values = list(returns.values())
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    out = torch.zeros(n, length, dtype=torch.float64)
    for (i, t), v in returns.items():
        out[i, t] = (v - mean) / math.sqrt(var + 1e-8)
    return out


def loop_policy_loss(logprobs, old_logprobs, advantages, mask, clip, aggregation, max_len):
    """The clipped surrogate, per token, then reduced as the aggregation says (a float64 scalar tensor)."""
    per_row, total, count = [], 0.0, 0
    for i in range(mask.shape[0]):
        row = []
        for t in range(mask.shape[1]):
            if not mask[i, t]:
                continue
            ratio = torch.exp(logprobs[i, t] - old_logprobs[i, t])
            a = advantages[i, t]
            row.append(torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip, 1 + clip)))
        per_row.append(row)
        total = total + sum(row)
        count += len(row)
    if aggregation == "token_mean":
        return total / count
    if aggregation == "seq_mean_token_mean":
        return sum(sum(row) / len(row) for row in per_row) / len(per_row)
    return total / (max_len * mask.shape[0])


def ragged(n, length, generator):
    """(n, length) bool response masks with every length from 1 to ``length`` (right-padded responses)."""
    lengths = torch.randint(1, length + 1, (n,), generator=generator)
    lengths[0], lengths[1] = 1, length
    return torch.arange(length) < lengths[:, None]


def random_rollout(n, length, seed):
    g = torch.Generator().manual_seed(seed)
    mask = ragged(n, length, g)
    logprobs = -torch.rand(n, length, generator=g, dtype=torch.float64) * 3
    ref_logprobs = -torch.rand(n, length, generator=g, dtype=torch.float64) * 3
    scores = torch.randn(n, generator=g, dtype=torch.float64)
    # garbage where the mask is False: it must never reach a result
    logprobs = logprobs.masked_fill(~mask, float("nan"))
    ref_logprobs = ref_logprobs.masked_fill(~mask, float("inf"))
    return scores, logprobs, ref_logprobs, mask


# --------------------------------------------------------------------------------------------------------------
# The math
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["rloo", "grpo", "dr_grpo"])
@pytest.mark.parametrize("k", [2, 4])
def test_group_advantages_equal_the_papers_loops(estimator, k):
    scores, logprobs, ref_logprobs, mask = random_rollout(4 * k, 7, seed=k)
    rewards, _ = core.kl_rewards(logprobs, ref_logprobs, scores, mask, kl_coef=0.1)
    advantages = core.critic_free_advantages(rewards, mask, estimator, k)
    expected = loop_group_advantages(loop_returns(scores, logprobs, ref_logprobs, mask, 0.1), k, estimator)
    for i in range(len(scores)):
        assert advantages[i][mask[i]].tolist() == pytest.approx([expected[i]] * int(mask[i].sum()), abs=1e-12)
        assert (advantages[i][~mask[i]] == 0).all()


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_pp_advantages_equal_the_papers_loop(gamma):
    scores, logprobs, ref_logprobs, mask = random_rollout(6, 9, seed=3)
    rewards, _ = core.kl_rewards(logprobs, ref_logprobs, scores, mask, kl_coef=0.05)
    advantages = core.critic_free_advantages(rewards, mask, "reinforce_pp", samples_per_prompt=1, gamma=gamma)
    expected = loop_reinforce_pp(scores, logprobs, ref_logprobs, mask, 0.05, gamma)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-12)


def test_leave_one_out_baseline_of_a_constant_group_is_zero():
    returns = torch.tensor([0.7, 0.7, 0.7, -2.0, -2.0, -2.0])  # two groups of 3, each constant
    for estimator in ("rloo", "grpo", "dr_grpo"):
        assert core.group_advantages(returns, 3, estimator).tolist() == [0.0] * 6, estimator
    all_equal, std = core.group_reward_stats(returns, 3)
    assert all_equal.tolist() == [True, True] and std.tolist() == [0.0, 0.0]


def test_a_samples_own_reward_never_enters_its_baseline():
    # RLOO's baseline of sample i is R_i - A_i. Moving R_0 by 10 must leave sample 0's baseline exactly where it was
    # and move the others' by 10 / (k - 1) (a baseline over all k, or the group mean, fails both).
    returns = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    baseline = returns - core.group_advantages(returns, 4, "rloo")
    moved = returns.clone()
    moved[0] += 10.0
    moved_baseline = moved - core.group_advantages(moved, 4, "rloo")
    assert moved_baseline[0] == baseline[0] == (2.0 + 4.0 + 8.0) / 3  # bit for bit: R_0 is multiplied by 0
    torch.testing.assert_close(moved_baseline[1:] - baseline[1:], torch.full((3,), 10.0 / 3, dtype=torch.float64))
    # and a prompt's baseline reads only its own group: another prompt's rewards change nothing
    two = torch.cat([returns, torch.tensor([5.0, 5.0, 9.0, 1.0], dtype=torch.float64)])
    assert torch.equal(core.group_advantages(two, 4, "rloo")[:4], core.group_advantages(returns, 4, "rloo"))


def test_group_advantages_refuse_a_batch_that_is_not_groups_of_k():
    with pytest.raises(ValueError, match="k >= 2 dividing the batch"):
        core.group_advantages(torch.zeros(5), 2, "rloo")
    with pytest.raises(ValueError, match="k >= 2"):
        core.group_advantages(torch.zeros(4), 1, "grpo")


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "constant"])
@pytest.mark.parametrize("kl_in_loss", [False, True])
def test_loss_and_its_gradient_equal_the_loop(aggregation, kl_in_loss):
    scores, old_logprobs, ref_logprobs, mask = random_rollout(6, 8, seed=11)
    g = torch.Generator().manual_seed(12)
    logprobs = (old_logprobs + 0.3 * torch.randn(old_logprobs.shape, generator=g, dtype=torch.float64)).detach()
    logprobs.requires_grad_(True)
    rewards, _ = core.kl_rewards(old_logprobs, ref_logprobs, scores, mask, 0.0 if kl_in_loss else 0.1)
    advantages = core.critic_free_advantages(rewards, mask, "rloo", 3)
    loss, _ = core.clipped_policy_loss(logprobs, old_logprobs, advantages, mask, 0.2, aggregation, max_len=10)
    if kl_in_loss:
        loss = loss + 0.1 * core.aggregate_loss(core.kl_penalty(logprobs, ref_logprobs, mask, "k3"), mask,
                                                aggregation, 10)  # fmt: skip
    (grad,) = torch.autograd.grad(loss, logprobs)

    oracle_logprobs = logprobs.detach().clone().requires_grad_(True)
    expected = loop_policy_loss(oracle_logprobs, old_logprobs, advantages, mask, 0.2, aggregation, 10)
    if kl_in_loss:  # k3 = (r - 1) - log r, r = p_ref / p (Schulman 2020), one token at a time
        per_row = []
        for i in range(mask.shape[0]):
            row = []
            for t in range(mask.shape[1]):
                if mask[i, t]:
                    log_r = ref_logprobs[i, t] - oracle_logprobs[i, t]
                    row.append(torch.exp(log_r) - 1 - log_r)
            per_row.append(row)
        n_tokens = sum(len(r) for r in per_row)
        if aggregation == "token_mean":
            kl = sum(sum(r) for r in per_row) / n_tokens
        elif aggregation == "seq_mean_token_mean":
            kl = sum(sum(r) / len(r) for r in per_row) / len(per_row)
        else:
            kl = sum(sum(r) for r in per_row) / (10 * len(per_row))
        expected = expected + 0.1 * kl
    (expected_grad,) = torch.autograd.grad(expected, oracle_logprobs)
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)
    assert (grad[~mask] == 0).all()


def test_each_aggregation_weighs_tokens_differently():
    # two responses of 1 and 3 tokens, per-token losses [[3], [1, 1, 1]]:
    # token_mean (3 + 3) / 4 = 1.5; seq_mean_token_mean (3 + 1) / 2 = 2; constant (3 + 3) / (4 x 2) = 0.75
    per_token = torch.tensor([[3.0, 9.0, 9.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    got = {m: float(core.aggregate_loss(per_token, mask, m, max_len=4)) for m in core.LOSS_AGGREGATIONS}
    assert got == {"token_mean": 1.5, "seq_mean_token_mean": 2.0, "constant": 0.75}


# --------------------------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eos_dirs(tmp_path_factory, model_dirs, data_files, tokenizer_dir):
    """The tiny policy fitted to short texts that end with EOS (the random one almost never stops), and the RM."""
    import json

    from tests.test_ppo_module import pretrain

    texts = [json.loads(line)["text"] for line in open(data_files[1])]
    torch.manual_seed(0)
    return pretrain(model_dirs[0], tokenizer_dir, texts, tmp_path_factory.mktemp("eos") / "sft", steps=30), model_dirs[
        1
    ]


def critic_free(model_dirs, data_files, tokenizer_dir, **options):
    # no_eos_score=None: the tiny random policy rarely ends with EOS, and k equal penalties give no gradient
    defaults = {"advantage_estimator": "rloo", "samples_per_prompt": 2, "minibatch_size": 8, "micro_batch_size": 4,
                "no_eos_score": None}  # fmt: skip
    return make(model_dirs, data_files, tokenizer_dir, batch_size=4, **{**defaults, **options})


def test_no_value_model_is_built_trained_or_checkpointed(tmp_path, model_dirs, data_files, tokenizer_dir):
    from lightning.pytorch.utilities.model_summary import ModelSummary

    module, data = critic_free(model_dirs, data_files, tokenizer_dir)
    run = trainer(tmp_path, iterations=1, enable_checkpointing=True)
    run.fit(module, data)
    assert module.value_model is None and module.value_head is None
    assert set(ModelSummary(module).layer_names) == {"model", "ref_model", "reward_model"}
    keys = module.state_dict().keys()
    assert keys and not any(k.startswith(("value_model", "value_head")) for k in keys)
    optimizer = module.optimizers().optimizer
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(module.model.parameters()))
    (checkpoint,) = (tmp_path / "checkpoints").glob("*.ckpt")
    saved = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert saved.keys() == keys
    assert (tmp_path / "hf" / "model.safetensors").exists()


def test_samples_per_prompt_gives_k_distinct_seeded_samples_per_prompt(tmp_path, model_dirs, data_files, tokenizer_dir):
    rollouts = []

    class Keep(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            original = pl_module.collect_rollout

            def keep(b):
                out = original(b)
                rollouts.append((b, out[0]))
                return out

            pl_module.collect_rollout = keep

    module, data = critic_free(model_dirs, data_files, tokenizer_dir, samples_per_prompt=4, minibatch_size=16)
    trainer(tmp_path, iterations=1, callbacks=[Keep()]).fit(module, data)
    batch, rollout = rollouts[0]
    assert len(rollout) == 16  # 4 prompts x 4 samples
    assert batch["index"].tolist() == [i for i in batch["index"][::4].tolist() for _ in range(4)]  # together
    assert batch["sample"].tolist() == [0, 1, 2, 3] * 4
    responses = rollout.query_responses[:, -rollout.response_len :]
    distinct = {tuple(r.tolist()) for r in responses[:4]}
    assert len(distinct) > 1, "the k samples of a prompt come from different streams"


def test_one_step_per_rollout_skips_the_old_logprob_forward(tmp_path, model_dirs, data_files, tokenizer_dir):
    calls = []
    module, data = critic_free(model_dirs, data_files, tokenizer_dir, kl_coef=0.0, trim_padding=True)
    original = module._policy_outputs
    module._policy_outputs = lambda *a: calls.append(1) or original(*a)
    trainer(tmp_path, iterations=1).fit(module, data)
    assert module.reuse_update_logprobs and not calls, "no no-grad policy forward"
    assert module.ref_model is None, "kl_coef=0: no reference model"
    (stats,) = module.minibatch_stats
    assert stats["ratio_mean"] == 1.0 and stats["clipfrac"] == 0.0  # old log-probs are the update's own
    # two minibatches (or KL in the reward): the rollout's log-probs are kept and the ratio moves on step 2
    calls.clear()
    module, data = critic_free(model_dirs, data_files, tokenizer_dir, minibatch_size=4, trim_padding=False)
    module._policy_outputs = lambda *a, m=module._policy_outputs: calls.append(1) or m(*a)
    trainer(tmp_path / "two", iterations=1).fit(module, data)
    assert not module.reuse_update_logprobs and calls and module.ref_model is not None
    assert module.minibatch_stats[0]["ratio_mean"] == 1.0 and module.minibatch_stats[1]["approxkl"] > 0


def _trained_weights(module, data, tmp_path) -> torch.Tensor:
    """The policy's weights after one iteration."""
    trainer(tmp_path, iterations=1).fit(module, data)
    return torch.cat([p.detach().flatten() for p in module.model.parameters()])


@pytest.mark.parametrize(
    "knob",
    [
        {"advantage_estimator": "grpo"},
        {"advantage_estimator": "dr_grpo"},
        {"advantage_estimator": "reinforce_pp"},
        {"kl_in_loss": True},
        {"loss_aggregation": "seq_mean_token_mean"},
        {"loss_aggregation": "constant"},
        {"samples_per_prompt": 4, "minibatch_size": 16},
        {"ppo_epochs": 2},
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()),
)
def test_every_knob_changes_the_trained_policy(tmp_path, eos_dirs, data_files, tokenizer_dir, knob):
    # the same rollout seed and data: only the knob differs from RLOO, k=2, KL 0.1 in the reward, token mean, two
    # minibatches (Adam's first step is blind to the loss's scale; the second sees two minibatches' relative scale).
    # The policy ends responses with EOS, so lengths differ and the aggregations weigh tokens differently.
    base = {"kl_coef": 0.1, "learning_rate": 1e-2, "minibatch_size": 4, "micro_batch_size": 2}
    module, data = critic_free(eos_dirs, data_files, tokenizer_dir, **base)
    lengths = []
    module.ppo_update = lambda rollout, update=module.ppo_update: (
        lengths.append(rollout.response_mask.sum(1)) or update(rollout)
    )
    reference = _trained_weights(module, data, tmp_path / "base")
    assert len(set(lengths[0].tolist())) > 2, "ragged responses"
    module, data = critic_free(eos_dirs, data_files, tokenizer_dir, **{**base, **knob})
    changed = _trained_weights(module, data, tmp_path / "knob")
    assert (changed - reference).abs().max() > 1e-6, knob


def test_impossible_combinations_are_refused_naming_the_flags(tmp_path, model_dirs, data_files, tokenizer_dir):
    from lit_rlhf.ppo.module import PPOModule

    with pytest.raises(ValueError) as err:
        PPOModule("x", reward_model_path="y", advantage_estimator="rloo", samples_per_prompt=1, value_model="shared",
                  kl_in_loss=True, kl_coef=0.0, loss_aggregation="sum")  # fmt: skip
    message = str(err.value)
    for flag in ("--model.advantage_estimator=rloo needs a group: --model.samples_per_prompt >= 2",
                 "drop --model.value_model", "--model.kl_in_loss needs --model.kl_coef > 0",
                 "--model.loss_aggregation must be one of"):  # fmt: skip
        assert flag in message
    PPOModule("x", reward_model_path="y", advantage_estimator="reinforce_pp")  # k = 1 is fine for REINFORCE++

    module, data = critic_free(model_dirs, data_files, tokenizer_dir, samples_per_prompt=3, minibatch_size=8)
    with pytest.raises(ValueError, match=r"--model.minibatch_size=8 must divide the rollout batch --data.batch_size=4 "
                                         r"x --model.samples_per_prompt=3 \(12 episodes per process"):  # fmt: skip
        trainer(tmp_path, iterations=1).fit(module, data)


@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_critic_free_raises_a_rule_based_reward(tmp_path, model_dirs, data_files, tokenizer_dir, estimator):
    torch.manual_seed(0)
    module, data = make(model_dirs, data_files, tokenizer_dir, reward_fn=letter_reward, batch_size=8,
                        advantage_estimator=estimator, samples_per_prompt=4, minibatch_size=32, micro_batch_size=16,
                        learning_rate=3e-3, kl_coef=0.02, no_eos_score=None)  # fmt: skip
    scores, kls = [], []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            scores.append(float(trainer.callback_metrics["ppo/score_mean"]))
            kls.append(float(trainer.callback_metrics["ppo/kl"]))

    trainer(tmp_path, iterations=4, callbacks=[Record()], max_epochs=3).fit(module, data)
    start, end = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert end > start + 0.1, scores
    assert all(math.isfinite(k) for k in kls) and max(kls) < 10.0, kls
