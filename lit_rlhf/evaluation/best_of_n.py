"""Best-of-n: sample n responses, keep the one a reward model scores highest.

A policy in its own right (``lit-rlhf evaluate --best_of_n``) and the first curve of the over-optimisation study
(:mod:`.overoptimization`). Its KL from the policy it samples has the closed form :func:`best_of_n_kl`, and its
expected score at every n follows from one draw of N >= n samples per prompt (:func:`expected_best_of_n`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedTokenizerBase

from lit_rlhf.data.collate import Template
from lit_rlhf.evaluation import metrics as M
from lit_rlhf.evaluation.prompts import EvalPrompt
from lit_rlhf.generation import sample_seed


def best_of_n_kl(n: int) -> float:
    """``log n - (n - 1) / n``: the standard formula for the KL (nats) of best-of-n from the policy it samples.

    It is exact when the n samples' scores are distinct almost surely and an upper bound in general (Beirami et al.
    2024, "Theoretical guarantees on the best-of-n alignment policy"); 0 at n = 1.
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def pick_best(scores: Sequence[float]) -> int:
    """The index of the highest score; on a tie the earliest sample."""
    if not scores:
        raise ValueError("best-of-n: no scores to pick from")
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def subset_max_weights(n_samples: int, n: int) -> list[float]:
    """For samples sorted by score, ascending: the chance that each is the best of a uniform random n-subset.

    The i-th (1-based) is the maximum of an n-subset of the ``n_samples`` exactly when the subset holds it and n - 1
    of the i - 1 below it: ``C(i - 1, n - 1) / C(n_samples, n)``. The weights sum to 1.

    Args:
        n_samples: N, the samples drawn for a prompt.
        n: The subset size, 1 <= n <= N.

    Returns:
        N weights, the i-th for the i-th lowest score.
    """
    if not 1 <= n <= n_samples:
        raise ValueError(f"best-of-n from {n_samples} samples needs 1 <= n <= {n_samples}, got n={n}")
    total = math.comb(n_samples, n)
    return [math.comb(i - 1, n - 1) / total for i in range(1, n_samples + 1)]


def expected_best_of_n(scores: Sequence[float], values: Sequence[float], n: int) -> float:
    """The expected ``value`` of the best of n of a prompt's samples, by ``scores``, over all n-subsets of them.

    The unbiased estimator over every n-subset of the N samples drawn (lower variance than taking the first n):
    ``sum_i w_i values_(i)`` with the samples ordered by score and ``w`` from :func:`subset_max_weights`. Equal
    scores are ordered as :func:`pick_best` breaks ties (the earlier sample counts as the higher).

    Args:
        scores: Each sample's score by the selecting reward model (the proxy).
        values: What is averaged for each sample: the gold score, the proxy score itself, a win indicator, ...
        n: The n of best-of-n.
    """
    if len(scores) != len(values):
        raise ValueError(f"best-of-n: {len(scores)} scores but {len(values)} values")
    order = sorted(range(len(scores)), key=lambda i: (scores[i], -i))
    weights = subset_max_weights(len(scores), n)
    return sum(w * values[i] for w, i in zip(weights, order, strict=True))


def sample_n(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[EvalPrompt],
    n: int,
    *,
    indices: Sequence[int] | None = None,
    seed: int = 0,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    template: Template = "auto",
) -> list[list[M.Generation]]:
    """n samples per prompt at temperature 1 and top-p 1 (where the KL of :func:`best_of_n_kl` holds).

    Sample k of prompt i comes from its own stream, seeded by ``sample_seed(seed, k)`` and i (through
    :func:`lit_rlhf.evaluation.metrics.generate`): the same in a rerun, in any batch, on any process.

    Args:
        indices: Each prompt's index in the whole evaluation set; 0, 1, ... when None.

    Returns:
        Per prompt, its n generations in stream order.
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    draws = [
        M.generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            seed=sample_seed(seed, k),
            indices=indices,
            batch_size=batch_size,
            template=template,
        )
        for k in range(n)
    ]
    return [list(samples) for samples in zip(*draws, strict=True)]


__all__ = ["best_of_n_kl", "expected_best_of_n", "pick_best", "sample_n", "subset_max_weights"]
