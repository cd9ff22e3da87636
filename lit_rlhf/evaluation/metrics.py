"""What evaluation measures about one policy: its responses, KL to the baseline, LM loss, benchmark scores.

Every function takes a loaded model and tokenizer and returns plain numbers or lists; :mod:`.evaluate` runs them
for each policy. Prompts are rendered with the same template as training (:func:`lit_rlhf.data.collate.encode_prompt`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_rlhf.data.collate import Template, encode_completion, encode_prompt, pad_right
from lit_rlhf.data.prompts import parse_text_record
from lit_rlhf.data.records import DataError, read_records
from lit_rlhf.evaluation.prompts import EvalPrompt
from lit_rlhf.generation import context_length, generate_greedy, sample_in_batches, sample_seed

log = logging.getLogger(__name__)

ResponseMetric = Callable[[EvalPrompt, str], "bool | None"]
"""``fn(prompt, response) -> bool | None``: whether a response has a property (None: the prompt does not apply)."""


# --------------------------------------------------------------------------- policies


def reward_model_dir_problems(given: str, path: str | Path) -> list[str]:
    """What keeps ``path`` from being a reward-model directory (empty when it has a config.json), named by how the
    user ``given`` it (e.g. ``--rm_dir runs/rm/hf``)."""
    if (Path(path) / "config.json").is_file():
        return []
    return [f"{given}: no config.json there (not a reward-model directory)"]


def policy_dir_problems(name: str, path: str | Path) -> list[str]:
    """What keeps ``path`` from being a finished policy export (empty when it is one)."""
    from lit_rlhf.models import MARKER_FILE

    path = Path(path)
    if not path.is_dir():
        return [f"policy {name!r}: {path} is not a directory"]
    problems = []
    if not (path / "config.json").is_file():
        problems.append(f"policy {name!r}: {path} has no config.json (not a Hugging Face model directory)")
    if not (path / MARKER_FILE).is_file():
        problems.append(
            f"policy {name!r}: {path} has no {MARKER_FILE}, so its export did not finish (rerun the stage that "
            "writes it)"
        )
    return problems


def load_policy(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A policy directory as a frozen causal LM (eval mode, no grad) and its tokenizer."""
    from lit_rlhf.models import freeze, load_model, load_tokenizer

    tokenizer = load_tokenizer(str(path))
    model = freeze(load_model(str(path), tokenizer))
    return model.to(device), tokenizer


def fit_context(prompt_ids: Sequence[int], n_after: int, context: int | None) -> list[int]:
    """``prompt_ids`` without its oldest tokens where prompt + ``n_after`` tokens would overflow ``context``."""
    if context is None or len(prompt_ids) + n_after <= context:
        return list(prompt_ids)
    keep = max(1, context - n_after)
    return list(prompt_ids[-keep:])


def same_vocabulary(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Whether token ids mean the same in both tokenizers (needed to compare log-probs token by token)."""
    return a.get_vocab() == b.get_vocab()


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class Generation:
    """One response of a policy.

    Attributes:
        prompt_ids: Token ids of the rendered prompt.
        response_ids: Generated ids, up to and including the first EOS.
        text: The decoded response, special tokens removed, stripped.
        ended: Whether the response ended with EOS within ``max_new_tokens``.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    ended: bool


def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[EvalPrompt],
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    indices: Sequence[int] | None = None,
    batch_size: int = 16,
    template: Template = "auto",
) -> list[Generation]:
    """One response per prompt, greedy or sampled.

    Sampling draws each prompt's response from its own stream, seeded by ``seed`` and the prompt's index
    (:func:`lit_rlhf.generation.sample_seed`), so a prompt gets the same response in a rerun, in any batch and on
    any process. A prompt too long for the model's context and ``max_new_tokens`` loses its oldest tokens.

    Args:
        indices: Each prompt's index in the whole evaluation set (what a process's share keeps); 0, 1, ... when None.
    """
    context = context_length(model)
    prompt_ids = [fit_context(encode_prompt(tokenizer, p.messages, template), max_new_tokens, context) for p in prompts]
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if do_sample:
        indices = range(len(prompts)) if indices is None else indices
        seeds = [sample_seed(seed, i) for i in indices]
        responses = sample_in_batches(
            model,
            prompt_ids,
            seeds,
            **ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            batch_size=batch_size,
        )
    else:
        responses = generate_greedy(model, prompt_ids, **ids, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [
        Generation(p, r, tokenizer.decode(r, skip_special_tokens=True).strip(), tokenizer.eos_token_id in r)
        for p, r in zip(prompt_ids, responses, strict=True)
    ]


# --------------------------------------------------------------------------- log-likelihoods


@torch.no_grad()
def sequence_logprobs(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    continuation_ids: Sequence[Sequence[int]],
    pad_token_id: int,
    batch_size: int = 16,
) -> list[float]:
    """Sum of log-probs of each continuation given its prompt: ``sum_t log p(c_t | prompt, c_<t)``.

    Args:
        prompt_ids: Token ids of each prompt (non-empty); where prompt + continuation overflow the model's
            context, the prompt loses its oldest tokens (a continuation alone longer than the context is an error).
        continuation_ids: Token ids scored after each prompt; an empty one scores 0.

    Returns:
        One float per pair.
    """
    device = next(model.parameters()).device
    context = context_length(model)
    if context is not None and any(len(c) >= context for c in continuation_ids):
        raise ValueError(f"a continuation is longer than the model's context of {context} tokens")
    prompt_ids = [fit_context(p, len(c), context) for p, c in zip(prompt_ids, continuation_ids, strict=True)]
    out: list[float] = []
    for start in range(0, len(prompt_ids), batch_size):
        prompts = prompt_ids[start : start + batch_size]
        conts = continuation_ids[start : start + batch_size]
        seqs = [list(p) + list(c) for p, c in zip(prompts, conts, strict=True)]
        input_ids = pad_right(seqs, pad_token_id).to(device)
        attention_mask = pad_right([[1] * len(s) for s in seqs], 0).to(device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        # Position t predicts token t + 1: score tokens from the first continuation token on.
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        # scored: (batch, len - 1) bool, True on positions whose *next* token is a continuation token.
        scored = torch.zeros_like(logprobs, dtype=torch.bool)
        for i, (p, c) in enumerate(zip(prompts, conts, strict=True)):
            scored[i, len(p) - 1 : len(p) - 1 + len(c)] = True
        out.extend((logprobs * scored).sum(-1).tolist())
    return out


def kl_to_baseline(
    policy: nn.Module,
    baseline: nn.Module,
    generations: Sequence[Generation],
    pad_token_id: int,
    batch_size: int = 16,
) -> float:
    """Monte-Carlo KL(policy || baseline) per response on the policy's own samples.

    ``mean_i sum_t [log pi(y_it | x_i, y_i<t) - log pi_base(y_it | x_i, y_i<t)]`` over the responses ``y_i``; an
    unbiased estimate of the sequence KL when the responses were sampled at temperature 1, and the log-ratio of
    the policy's greedy answers otherwise.
    """
    prompts = [g.prompt_ids for g in generations]
    responses = [g.response_ids for g in generations]
    logp = sequence_logprobs(policy, prompts, responses, pad_token_id, batch_size)
    ref_logp = sequence_logprobs(baseline, prompts, responses, pad_token_id, batch_size)
    return sum(a - b for a, b in zip(logp, ref_logp, strict=True)) / len(generations)


# --------------------------------------------------------------------------- alignment tax: LM loss


def read_texts(files: str | list[str], max_examples: int | None = None) -> list[str]:
    """The ``text`` of the first ``max_examples`` pretraining records ``{"text": str}``."""
    texts = []
    for record, source in read_records(files):
        texts.append(parse_text_record(record, source))
        if max_examples is not None and len(texts) >= max_examples:
            break
    return texts


@torch.no_grad()
def lm_loss(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int = 512,
    batch_size: int = 16,
    return_count: bool = False,
) -> float | tuple[float, int]:
    """Token-mean next-token cross-entropy (nats) on ``texts``, each followed by EOS and cut to ``max_length`` (and to
    the model's context); with ``return_count``, also the number of tokens it averages over."""
    max_length = min(max_length, context_length(model) or max_length)
    seqs = [
        (tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:max_length] for t in texts
    ]
    seqs = [s for s in seqs if len(s) >= 2]
    if not seqs:
        raise ValueError("no text of at least two tokens to compute an LM loss on")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        input_ids = pad_right(chunk, tokenizer.pad_token_id).to(device)
        attention_mask = pad_right([[1] * len(s) for s in chunk], 0).to(device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
        total += F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += int((targets != -100).sum())
    return (total / count, count) if return_count else total / count


# --------------------------------------------------------------------------- TruthfulQA MC1


@dataclass(frozen=True)
class MCQuestion:
    """A multiple-choice question with one right answer, ``choices[correct]``."""

    question: str
    choices: list[str]
    correct: int = 0


def parse_truthfulqa(path: str | Path, max_examples: int | None = None) -> list[MCQuestion]:
    """TruthfulQA as MC1: the best answer against every incorrect answer.

    Records ``{"Question", "Best Answer", "Incorrect Answers": [str], ...}`` (the CSV's columns, as in
    ../shared/data/truthfulqa_817.jsonl); the best answer is choice 0.
    """
    out = []
    for record, source in read_records(str(path)):
        if not isinstance(record, dict):
            raise DataError(f"{source}: a TruthfulQA record must be a JSON object")
        missing = [k for k in ("Question", "Best Answer", "Incorrect Answers") if k not in record]
        if missing:
            raise DataError(f"{source}: TruthfulQA record lacks {missing}")
        wrong = record["Incorrect Answers"]
        if not isinstance(wrong, list) or not wrong or not all(isinstance(w, str) and w for w in wrong):
            raise DataError(f"{source}: 'Incorrect Answers' must be a non-empty list of strings")
        out.append(MCQuestion(record["Question"], [record["Best Answer"], *wrong], 0))
        if max_examples is not None and len(out) >= max_examples:
            break
    return out


def mc_accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[MCQuestion],
    template: Template = "auto",
    batch_size: int = 16,
) -> float:
    """Share of questions whose right answer has the strictly highest log-likelihood (TruthfulQA's MC1).

    Each choice is scored as the assistant's answer to the question (the training template), by the summed
    log-prob of its tokens, EOS not included.
    """
    prompts, conts, owner = [], [], []
    for q_index, q in enumerate(questions):
        messages = [{"role": "user", "content": q.question}]
        prompt_ids = encode_prompt(tokenizer, messages, template)
        for choice in q.choices:
            ids = encode_completion(tokenizer, messages, choice, template)
            prompts.append(prompt_ids)
            conts.append(ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids)
            owner.append(q_index)
    logps = sequence_logprobs(model, prompts, conts, tokenizer.pad_token_id, batch_size)
    per_question: list[list[float]] = [[] for _ in questions]
    for q_index, lp in zip(owner, logps, strict=True):
        per_question[q_index].append(lp)
    right = 0
    for q, lps in zip(questions, per_question, strict=True):
        others = [lp for i, lp in enumerate(lps) if i != q.correct]
        right += lps[q.correct] > max(others)
    return right / len(questions)


# --------------------------------------------------------------------------- GSM8K

GSM8K_INSTRUCTION = "Solve the problem step by step, then give the final number after '####'."
"""Appended to each GSM8K question (zero-shot), so the answer can be read after ``####`` as in the data."""

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class MathProblem:
    """A GSM8K problem and its final numeric answer (the text after ``####``)."""

    question: str
    answer: str


def parse_gsm8k(path: str | Path, max_examples: int | None = None) -> list[MathProblem]:
    """GSM8K records ``{"question", "answer"}``, the answer ending ``#### <number>``."""
    out = []
    for record, source in read_records(str(path)):
        if not isinstance(record, dict) or not isinstance(record.get("question"), str):
            raise DataError(f"{source}: a GSM8K record needs a 'question' string")
        answer = record.get("answer")
        if not isinstance(answer, str) or "####" not in answer:
            raise DataError(f"{source}: a GSM8K 'answer' must end with '#### <number>'")
        final = normalize_number(answer.rsplit("####", 1)[1])
        if final is None:
            raise DataError(f"{source}: no number after '####' in the answer")
        out.append(MathProblem(record["question"], final))
        if max_examples is not None and len(out) >= max_examples:
            break
    return out


def normalize_number(text: str) -> str | None:
    """The first number in ``text`` without thousands separators or trailing zeros: "$1,000.50" -> "1000.5"."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    value = match.group().replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return "0" if value in ("-0", "") else value


def extract_answer(response: str) -> str | None:
    """The number after the last ``####`` in a response, or else its last number."""
    if "####" in response:
        return normalize_number(response.rsplit("####", 1)[1])
    numbers = _NUMBER.findall(response)
    return normalize_number(numbers[-1]) if numbers else None


def gsm8k_accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[MathProblem],
    max_new_tokens: int = 256,
    template: Template = "auto",
    batch_size: int = 16,
) -> float:
    """Share of problems whose greedy response's final number equals the reference answer."""
    prompts = [EvalPrompt([{"role": "user", "content": f"{p.question}\n{GSM8K_INSTRUCTION}"}]) for p in problems]
    generations = generate(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, template=template
    )
    right = sum(extract_answer(g.text) == p.answer for g, p in zip(generations, problems, strict=True))
    return right / len(problems)


# --------------------------------------------------------------------------- alignment tax: few-shot skills

_FEWSHOT_CUT = re.compile(r"[.\n]")


def read_fewshot(files: str | list[str], max_examples: int | None = None) -> list[dict[str, str]]:
    """The first ``max_examples`` few-shot records ``{"prompt": str, "completion": str}`` (raw text, no template;
    :func:`lit_rlhf.world.fewshot.fewshot_probes` writes them)."""
    out = []
    for record, source in read_records(files):
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("prompt", "completion")):
            raise DataError(f"{source}: a few-shot record needs 'prompt' and 'completion' strings")
        out.append(record)
        if max_examples is not None and len(out) >= max_examples:
            break
    return out


def fewshot_answer(continuation: str) -> str:
    """A continuation cut at its first period or newline, stripped: ``" t a c. d o g"`` -> ``"t a c"``."""
    return _FEWSHOT_CUT.split(continuation, maxsplit=1)[0].strip()


def fewshot_accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Mapping[str, str]],
    max_new_tokens: int = 16,
    batch_size: int = 32,
) -> float:
    """Share of few-shot prompts whose greedy continuation, up to its first period or newline, is the completion.

    The prompt is raw text (no chat template, no special tokens): the pretraining corpus's own pattern.
    """
    context = context_length(model)
    prompt_ids = [
        fit_context(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"], max_new_tokens, context)
        for r in records
    ]
    responses = generate_greedy(
        model,
        prompt_ids,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    right = sum(
        fewshot_answer(tokenizer.decode(ids, skip_special_tokens=True)) == r["completion"].strip()
        for ids, r in zip(responses, records, strict=True)
    )
    return right / len(records)


# --------------------------------------------------------------------------- response metrics


def resolve_response_metrics(
    spec: Mapping[str, str | ResponseMetric] | str | None,
) -> dict[str, ResponseMetric]:
    """Response metrics by name from a mapping name -> (function or import path), or an import path to a mapping.

    E.g. ``{"toxic_rate": "lit_rlhf.world.labelers:is_toxic"}`` or ``"lit_rlhf.world.labelers:RESPONSE_METRICS"``.
    """
    from lit_rlhf.evaluation.judges import import_object

    if spec is None:
        return {}
    if isinstance(spec, str):
        spec = import_object(spec)
        if not isinstance(spec, Mapping):
            raise ValueError("--response_metrics as one import path must name a dict of name -> function")
    out = {}
    for name, fn in spec.items():
        fn = import_object(fn) if isinstance(fn, str) else fn
        if not callable(fn):
            raise ValueError(f"response metric {name!r} is not callable: {fn!r}")
        out[name] = fn
    return out


def response_rate(metric: ResponseMetric, prompts: Sequence[EvalPrompt], responses: Sequence[str]) -> float | None:
    """Share of responses for which ``metric`` is True, over the prompts it applies to (None when none)."""
    flags: list[Any] = [metric(p, r) for p, r in zip(prompts, responses, strict=True)]
    counted = [bool(f) for f in flags if f is not None]
    return sum(counted) / len(counted) if counted else None


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity: map them to None."""
    return None if value is None or not math.isfinite(value) else float(value)


__all__ = [
    "GSM8K_INSTRUCTION",
    "Generation",
    "MCQuestion",
    "MathProblem",
    "ResponseMetric",
    "extract_answer",
    "fewshot_accuracy",
    "fewshot_answer",
    "generate",
    "gsm8k_accuracy",
    "kl_to_baseline",
    "lm_loss",
    "load_policy",
    "mc_accuracy",
    "normalize_number",
    "parse_gsm8k",
    "parse_truthfulqa",
    "policy_dir_problems",
    "reward_model_dir_problems",
    "read_fewshot",
    "read_texts",
    "resolve_response_metrics",
    "response_rate",
    "same_vocabulary",
    "sequence_logprobs",
]
