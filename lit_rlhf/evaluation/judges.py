"""Judges: which of two responses to one prompt is better.

A judge answers, for each comparison, 1 (the first response is better), 0 (the second is) or 0.5 (a tie), in
batches (:class:`Judge`). Three kinds plug in:

* :class:`RewardModelJudge`: a reward-model directory (``AutoModelForSequenceClassification``, one label); the
  response with the higher score wins. Prompt and response are tokenised exactly as the RM was trained.
* :class:`CallableJudge`: any Python function ``fn(prompt: str, response_a: str, response_b: str) -> float``.
* any object with a ``compare`` method (:class:`Judge`), e.g. the instruction world's held-out labeler panel.

From the command line, :func:`load_judge` resolves ``--judge``: ``rm:DIR`` or a directory is a reward model;
``package.module:name`` (or ``package.module.name``) is imported, so ``--judge lit_rlhf.world.labelers:panel_judge``
plugs in the panel once the world provides it.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from lit_rlhf.data.collate import Template, encode_completion, encode_prompt, fit_to_length, pad_right
from lit_rlhf.data.records import Source
from lit_rlhf.evaluation.prompts import EvalPrompt, as_eval_prompts
from lit_rlhf.evaluation.stats import OUTCOMES
from lit_rlhf.generation import context_length


@runtime_checkable
class Judge(Protocol):
    """Compares two responses to each prompt, in batches."""

    def compare(
        self, prompts: Sequence[EvalPrompt], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        """One outcome per prompt: 1.0 when ``responses_a[i]`` is better, 0.0 when ``responses_b[i]`` is, 0.5 a tie.

        Args:
            prompts: The prompts (messages, text and the raw record, e.g. a reference answer).
            responses_a: The first response to each prompt (text, no EOS).
            responses_b: The second response to each prompt.
        """
        ...


def check_outcomes(outcomes: Sequence[Any], n: int, who: str) -> list[float]:
    """Outcomes as floats in {0, 0.5, 1} (bools accepted), one per comparison, or a ValueError naming ``who``."""
    values = [float(o) for o in outcomes]
    if len(values) != n:
        raise ValueError(f"judge {who} returned {len(values)} outcomes for {n} comparisons")
    bad = sorted({v for v in values if v not in OUTCOMES})
    if bad:
        raise ValueError(f"judge {who} returned {bad[:5]}; a judge answers 1 (first better), 0 or 0.5 (tie)")
    return values


def _check_lengths(prompts: Sequence[Any], responses_a: Sequence[str], responses_b: Sequence[str]) -> None:
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise ValueError(
            f"a judge needs one response of each side per prompt: {len(prompts)} prompts, "
            f"{len(responses_a)} and {len(responses_b)} responses"
        )


class CallableJudge:
    """A judge from a function of one comparison.

    Args:
        fn: ``fn(prompt, response_a, response_b)`` returning 1 / True (first better), 0 / False (second better) or
            0.5 (tie). ``prompt`` is the prompt text (:attr:`EvalPrompt.text`).
        name: Shown in errors and in results; defaults to the function's qualified name.
    """

    def __init__(self, fn: Callable[[str, str, str], float | bool], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"

    def compare(
        self, prompts: Sequence[EvalPrompt], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        _check_lengths(prompts, responses_a, responses_b)
        prompts = as_eval_prompts(prompts)
        outcomes = [self.fn(p.text, a, b) for p, a, b in zip(prompts, responses_a, responses_b, strict=True)]
        return check_outcomes(outcomes, len(prompts), self.name)


class RewardModelJudge:
    """A reward model as judge: the response it scores higher wins.

    Args:
        rm_dir: A reward-model directory (``AutoModelForSequenceClassification`` with one label, as the reward stage
            exports it, or any Hugging Face one).
        batch_size: Sequences scored per forward pass.
        max_length: Longest prompt + response in tokens (at most the model's context); longer ones lose their
            oldest prompt tokens.
        template: Prompt template, as in training (``auto``: the tokenizer's chat template if it has one).
        tie_margin: Scores closer than this count as a tie (0: only exactly equal scores tie).
        device: Where the model runs; None picks CUDA when available.
    """

    def __init__(
        self,
        rm_dir: str | Path,
        batch_size: int = 16,
        max_length: int = 1024,
        template: Template = "auto",
        tie_margin: float = 0.0,
        device: str | torch.device | None = None,
    ) -> None:
        from lit_rlhf.models import freeze, load_model, load_tokenizer

        path = Path(rm_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"reward model {path}: no config.json there; pass a reward-model directory")
        self.name = f"rm:{path}"
        self.tokenizer = load_tokenizer(str(path))
        self.model = freeze(load_model(str(path), self.tokenizer, head="score"))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.batch_size = batch_size
        context = context_length(self.model)  # the positions the model has: a longer sequence cannot be scored
        self.max_length = min(max_length, context) if context is not None else max_length
        self.template = template
        self.tie_margin = tie_margin
        self._cache: dict[tuple[str, str], float] = {}

    def _encode(self, prompt: EvalPrompt, response: str) -> list[int]:
        prompt_ids = encode_prompt(self.tokenizer, prompt.messages, self.template)
        response_ids = encode_completion(self.tokenizer, prompt.messages, response, self.template)
        fitted = fit_to_length(prompt_ids, response_ids, self.max_length, "left_truncate", Source("judge", 0))
        if fitted is None:  # the response alone is too long: score its last max_length tokens
            return response_ids[-self.max_length :]
        return fitted[0] + fitted[1]

    @torch.no_grad()
    def scores(self, prompts: Sequence[EvalPrompt], responses: Sequence[str]) -> list[float]:
        """The RM score of each ``(prompt, response)``, read at the final EOS (cached by prompt and response text)."""
        prompts = as_eval_prompts(prompts)
        keys = [(repr(p.messages), r) for p, r in zip(prompts, responses, strict=True)]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            seqs = [self._encode(prompts[i], responses[i]) for i in chunk]
            input_ids = pad_right(seqs, self.tokenizer.pad_token_id).to(self.device)
            attention_mask = pad_right([[1] * len(s) for s in seqs], 0).to(self.device)
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float().cpu()
            for i, score in zip(chunk, logits.tolist(), strict=True):
                self._cache[keys[i]] = score
        return [self._cache[k] for k in keys]

    def compare(
        self, prompts: Sequence[EvalPrompt], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        _check_lengths(prompts, responses_a, responses_b)
        scores_a = self.scores(prompts, responses_a)
        scores_b = self.scores(prompts, responses_b)
        return [
            0.5 if abs(sa - sb) <= self.tie_margin else float(sa > sb)
            for sa, sb in zip(scores_a, scores_b, strict=True)
        ]


def import_object(path: str) -> Any:
    """Import ``package.module:attr`` or ``package.module.attr`` (attr may be dotted after the colon)."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{path!r} is not an import path; write package.module:name")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import {module_name!r} (from {path!r}): {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{module_name!r} has no attribute {attr!r} (from {path!r})")
        obj = getattr(obj, part)
    return obj


def as_judge(obj: Any, name: str | None = None) -> Judge:
    """An object with ``compare`` as is; a class is instantiated without arguments; a plain function is wrapped."""
    if isinstance(obj, type):
        obj = obj()
    if isinstance(obj, Judge):
        return obj
    if callable(obj):
        return CallableJudge(obj, name)
    raise ValueError(
        f"{name or obj!r} is not a judge: give a function (prompt, a, b) -> 0/0.5/1 or an object "
        "with a compare(prompts, responses_a, responses_b) method"
    )


def load_judge(spec: str | Judge | Callable[..., Any], device: str | torch.device | None = None) -> Judge:
    """Resolve ``--judge``.

    Args:
        spec: ``rm:DIR`` or an existing directory (a reward model); ``package.module:name`` (a function, a
            :class:`Judge` object, or a class built without arguments); or a judge / function itself.
        device: Where a reward-model judge runs.
    """
    if not isinstance(spec, str):
        return as_judge(spec)
    if spec.startswith("rm:"):
        return RewardModelJudge(spec.removeprefix("rm:"), device=device)
    if Path(spec).is_dir():
        return RewardModelJudge(spec, device=device)
    if "/" in spec or spec.startswith("."):
        raise ValueError(f"--judge {spec!r}: no such directory (for a reward model) and not an import path")
    return as_judge(import_object(spec), spec)


def judge_name(judge: Judge) -> str:
    return str(getattr(judge, "name", type(judge).__qualname__))


def judge_pairs(
    judge: Judge,
    prompts: Sequence[EvalPrompt],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    seed: int = 0,
    shuffle_positions: bool = True,
) -> list[float]:
    """Ask ``judge`` about each pair, showing a seeded random half of them in swapped order.

    A judge with a position bias (labelers and LLM judges often prefer the first answer) then biases no policy:
    the swap is undone on the outcome, so the result is always "is ``responses_a[i]`` better".

    Returns:
        One outcome per prompt in {0, 0.5, 1}: 1 when ``responses_a[i]`` is better.
    """
    _check_lengths(prompts, responses_a, responses_b)
    rng = random.Random(seed)
    swapped = [shuffle_positions and rng.random() < 0.5 for _ in prompts]
    first = [b if s else a for a, b, s in zip(responses_a, responses_b, swapped, strict=True)]
    second = [a if s else b for a, b, s in zip(responses_a, responses_b, swapped, strict=True)]
    outcomes = check_outcomes(judge.compare(list(prompts), first, second), len(prompts), judge_name(judge))
    return [1.0 - o if s else o for o, s in zip(outcomes, swapped, strict=True)]


__all__ = [
    "CallableJudge",
    "Judge",
    "RewardModelJudge",
    "as_judge",
    "check_outcomes",
    "import_object",
    "judge_name",
    "judge_pairs",
    "load_judge",
]
