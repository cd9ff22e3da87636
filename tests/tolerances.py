"""Tolerances of float64 runs that add in another order: the bound arithmetic gives, never a value one machine
printed. Used by every 1-vs-N-process and resume-vs-unbroken test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# ------------------------------------------------------------- tolerances of float64 runs that add in another order
# Shared by every 1-vs-N-process and resume-vs-unbroken test (here, test_ppo_ddp.py, test_scale.py, test_ppo_module.py).
#
# A gradient coordinate is a chain of sums: over the batch's tokens (8 x 128 at most) and over each layer's widest
# inner product (vocabulary 320, MLP 256, width 64) on the ~10 layers forward and back: ~4e3 terms, SUMMANDS = 1e4.
# Two orders of a sum of n terms give results within 2 * n * U64 * sum(|terms|); the loss is a mean over tokens of
# per-token gradients of size ~1 at GPT-2's init, so sum(|terms|) ~ 1 and two runs' gradients differ by at most dg =
# GRADIENT_ROUNDOFF. AdamW's step lr * m / (sqrt(v) + eps) has a slope in the gradients of at most ADAM_SLOPE / eps
# (largest at g ~ 0), so each step's update differs by at most ADAM_SLOPE * lr * dg / eps; steps add, weight decay only
# shrinks. Feedback is second order: coordinates whose gradient is ~0 for every input (GPT-2's attention key biases,
# the RM's final LayerNorm bias, which moves all scores alike) stay pure round-off at every step and feed no gradient;
# elsewhere Adam's step is scale-free and moves by lr times a relative round-off of ~SUMMANDS * U64.
# In float32 (U = 6e-8) the bound exceeds lr itself, so no tolerance under Adam's own step could be argued there.
U64 = 2.0**-53  # float64 unit round-off
SUMMANDS = 1e4
GRADIENT_ROUNDOFF = 2 * SUMMANDS * U64  # dg = 2.2e-12
ADAM_EPS = 1e-8  # torch.optim.AdamW's default, which every stage uses
# |m| <= K s by Cauchy-Schwarz over the bias-corrected averages m and s = sqrt(v): K <= 1.17 for betas (0.9, 0.95), 1
# on the first step. So no step moves a weight by more than K lr, and m/(s + eps) moves by at most
# dm/(s + eps) + |m| ds/(s + eps)^2 <= (1 + K/4) dg/eps.
ADAM_STEP = 1.17
ADAM_SLOPE = 1 + ADAM_STEP / 4
SAFETY = 10.0  # for the estimates of SUMMANDS and of the gradient terms' size


def weight_tolerance(steps: int, lr: float) -> float:
    """Largest difference of a weight between two float64 runs that add in another order, after ``steps`` AdamW steps
    of peak learning rate ``lr``: ``SAFETY * steps * ADAM_SLOPE * lr * GRADIENT_ROUNDOFF / ADAM_EPS``.

    4 steps at lr 1e-3: 1.2e-5, where a wrong batch or normalisation changes weights by ~lr = 1e-3 a step."""
    return SAFETY * steps * ADAM_SLOPE * lr * GRADIENT_ROUNDOFF / ADAM_EPS


def loss_tolerance(steps: int, lr: float, n_params: int, scale: float = 10.0) -> float:
    """Largest difference between the two runs of a loss or statistic (of size <= ``scale``) computed after ``steps``
    AdamW steps of ``n_params`` trainable weights.

    ``|dL| <= sum_i |g_i| |dw_i|``, plus the loss's own round-off ``SUMMANDS * U64 * scale``. Adam's update of ``w_i``
    has a slope of at most ``(1 + K) / (|g_i| + eps) <= 2.2 / (|g_i| + eps)`` (for a gradient that keeps its size over
    a few steps), so ``|g_i| |dw_i| <= steps * 2.2 * lr * dg`` whatever ``g_i``: a weight Adam moves erratically is one
    the loss hardly sees. 4 steps at lr 1e-3 of 1.3e5 weights: 2.5e-8."""
    return SAFETY * (n_params * steps * (1 + ADAM_STEP) * lr * GRADIENT_ROUNDOFF + SUMMANDS * U64 * scale)


def assert_weights_close(actual: dict, expected: dict, atol: float | dict[str, float]) -> float:
    """Every tensor of ``actual`` within ``atol`` (one for all, or per name) of ``expected``, both float64 with the
    same names; returns the largest difference."""
    assert set(actual) == set(expected)
    assert {t.dtype for t in [*actual.values(), *expected.values()]} == {torch.float64}, "float64 end to end"
    for name in expected:
        tol = atol[name] if isinstance(atol, dict) else atol
        torch.testing.assert_close(actual[name], expected[name], atol=tol, rtol=0, msg=name)
    return max(float((actual[n] - expected[n]).abs().max()) for n in expected)


def n_weights(weights: dict) -> int:
    return sum(t.numel() for t in weights.values())


def assert_reward_models_close(one: Path, two: Path, atol: dict[str, float], mean_tol: float) -> float:
    """Two exported RM directories: reference means within ``mean_tol``, weights within ``atol`` (per name, before
    normalisation); returns the largest weight difference.

    Normalising adds ``-mean * w / (w . w)`` to the final LayerNorm's bias (GPT-2's head ``w`` has no bias), so that
    bias also differs by the means' difference times ``|w_j| / (w . w)``."""
    w1, w2 = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    norm1, norm2 = (json.loads((d / "config.json").read_text())["reward_normalization"] for d in (one, two))
    assert norm1["stored_in"] == norm2["stored_in"] == "final_norm.bias"
    assert norm2["mean_before"] == pytest.approx(norm1["mean_before"], rel=0, abs=mean_tol)
    head, bias = w1["score.weight"][0], "transformer.ln_f.bias"
    atol = {**atol, bias: atol[bias] + mean_tol * float(head.abs().max() / head.dot(head))}
    return assert_weights_close(w2, w1, atol)
