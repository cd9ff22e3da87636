"""Create a labeling project: demonstration tasks from prompts, ranking tasks with K completions per prompt.

Prompts come from any PPO-prompt record file (``{"prompt"}``, ``{"messages"}``, or the prompt of an SFT or preference
record: ``lit_rlhf.data.prompts.parse_prompt_record``). A ranking task's K completions are sampled from a policy
directory with the project's seeded sampler (``lit_rlhf.generation.sample_in_batches``; sample ``j`` of prompt ``i``
from the stream ``sample_seed(seed, i, j)``, so a project is the same whatever the batch size), stored with the policy
path and seed; or read from a file of ``{"prompt", "completions"}`` records (a ``ranking`` there is ignored).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_rlhf.data.prompts import parse_prompt_record
from lit_rlhf.data.records import DataError, Message, prompt_messages, read_records
from lit_rlhf.label import db

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    """A prompt as read: the value to export (the record's own ``prompt`` string, else its messages), the messages the
    page shows, and where it came from."""

    value: Any
    messages: list[Message]
    source: str


def read_prompts(files: str, max_prompts: int | None = None) -> list[Prompt]:
    """The prompts of any PPO-prompt record file (errors name ``file:line``)."""
    out = []
    for record, source in read_records(files):
        messages = parse_prompt_record(record, source).prompt
        value = record["prompt"] if isinstance(record.get("prompt"), str) else messages
        out.append(Prompt(value, messages, str(source)))
        if max_prompts is not None and len(out) >= max_prompts:
            break
    return out


def read_completions(files: str, max_prompts: int | None = None) -> list[tuple[Prompt, list[str]]]:
    """``{"prompt", "completions"}`` records: each prompt with its K >= 2 distinct, non-empty completions."""
    out = []
    for record, source in read_records(files):
        if not isinstance(record, dict) or not isinstance(record.get("completions"), list):
            raise DataError(f"{source}: a completions record needs 'prompt' and a list 'completions'")
        key = "prompt" if "prompt" in record else "messages"
        messages = prompt_messages(record.get(key), source, key)
        texts = record["completions"]
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise DataError(f"{source}: every completion must be a non-empty string")
        if len(set(texts)) != len(texts) or len(texts) < 2:
            raise DataError(f"{source}: 'completions' must hold K >= 2 distinct strings")
        value = record["prompt"] if isinstance(record.get("prompt"), str) else messages
        out.append((Prompt(value, messages, str(source)), texts))
        if max_prompts is not None and len(out) >= max_prompts:
            break
    return out


def sample_completions(
    policy_dir: str,
    prompts: list[Prompt],
    k: int,
    seed: int,
    *,
    oversample: int = 2,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    template: str = "auto",
    device: str = "cpu",
) -> list[list[str]]:
    """Up to ``k`` distinct, non-empty samples of each prompt: ``oversample x k`` drawn, the first distinct kept.

    Sample ``j`` of prompt ``i`` comes from its own stream ``sample_seed(seed, i, j)``.
    """
    from lit_rlhf.data.collate import encode_prompt
    from lit_rlhf.generation import context_length, sample_in_batches, sample_seed
    from lit_rlhf.models import freeze, load_model, load_tokenizer

    tokenizer = load_tokenizer(policy_dir)
    model = freeze(load_model(policy_dir, tokenizer)).to(device)
    n = oversample * k
    ids = [encode_prompt(tokenizer, p.messages, template) for p in prompts]
    context = context_length(model)
    too_long = [i for i, x in enumerate(ids) if context is not None and len(x) + max_new_tokens > context]
    if too_long:  # the model has no positions for them: refuse before sampling, naming the first
        first = too_long[0]
        raise DataError(
            f"{prompts[first].source}: the prompt is {len(ids[first])} tokens; with --max_new_tokens "
            f"{max_new_tokens} it does not fit {policy_dir}'s context of {context} tokens ({len(too_long)} of the "
            f"{len(prompts)} prompts do not); drop or shorten them, or sample fewer new tokens"
        )
    flat = [x for x in ids for _ in range(n)]
    seeds = [sample_seed(seed, i, j) for i in range(len(prompts)) for j in range(n)]
    samples = sample_in_batches(
        model,
        flat,
        seeds,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        batch_size=batch_size,
    )
    texts = [tokenizer.decode(s, skip_special_tokens=True).strip() for s in samples]
    return [[t for t in dict.fromkeys(texts[i * n : (i + 1) * n]) if t][:k] for i in range(len(prompts))]


def create_project(
    db_path: str | Path,
    prompts: str | None = None,
    completions: str | None = None,
    policy: str | None = None,
    demonstrations: int | None = None,
    k: int = 4,
    seed: int = 0,
    overlap: float = 0.1,
    overlap_labelers: int = 2,
    max_prompts: int | None = None,
    sampling: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Create the project file ``db_path`` with its tasks; returns the count of each kind.

    Args:
        db_path: The SQLite file to create (refused when it exists).
        prompts: Prompt records. Without ``policy``, every prompt becomes a demonstration task; with it, the first
            ``demonstrations`` do, and the rest become ranking tasks of ``k`` samples of the policy.
        completions: ``{"prompt", "completions"}`` records, each a ranking task.
        policy: A policy directory (an SFT export) to sample ranking tasks' completions from.
        demonstrations: How many prompts become demonstration tasks (default: all without a policy, none with one).
        k: Completions per ranking task sampled from ``policy`` (InstructGPT: 4..9).
        seed: Seeds the sampling and the choice of overlap tasks.
        overlap: Share of ranking tasks given to ``overlap_labelers`` labelers each, for agreement.
        overlap_labelers: How many labelers rank each overlap task (>= 2).
        max_prompts: Read only this many records of each file.
        sampling: Further arguments of :func:`sample_completions` (``max_new_tokens``, ``temperature``, ...).
    """
    problems = []
    if prompts is None and completions is None:
        problems.append("give --prompts (demonstrations, or ranking tasks with --policy) and/or --completions")
    if policy is not None and prompts is None:
        problems.append("--policy samples completions for --prompts; give --prompts too")
    if not 0.0 <= overlap <= 1.0:
        problems.append(f"--overlap is a share in [0, 1], got {overlap}")
    if overlap_labelers < 2:
        problems.append(f"--overlap_labelers must be >= 2 (agreement needs two people), got {overlap_labelers}")
    if k < 2:
        problems.append(f"--k must be >= 2 (a ranking orders at least one pair), got {k}")
    if Path(db_path).exists():
        problems.append(f"{db_path}: already exists; choose another project file or delete this one")
    if problems:
        raise ValueError("; ".join(problems))

    tasks: list[dict[str, Any]] = []
    if prompts is not None:
        read = read_prompts(prompts, max_prompts)
        n_demo = len(read) if demonstrations is None and policy is None else (demonstrations or 0)
        for p in read[:n_demo]:
            tasks.append(
                {"kind": "demonstration", "prompt": p.value, "display": p.messages, "source": {"at": p.source}}
            )
        if policy is not None and read[n_demo:]:
            to_rank = read[n_demo:]
            sampled = sample_completions(str(policy), to_rank, k, seed, **(sampling or {}))
            dropped = 0
            for i, (p, texts) in enumerate(zip(to_rank, sampled, strict=True)):
                if len(texts) < 2:
                    dropped += 1
                    continue
                source = {"at": p.source, "policy": str(Path(policy).resolve()), "seed": seed, "prompt_index": i}
                tasks.append(_ranking_task(p, texts, source))
            if dropped:
                log.warning("%d prompt(s) left out: fewer than 2 distinct, non-empty samples", dropped)
    if completions is not None:
        for p, texts in read_completions(completions, max_prompts):
            tasks.append(_ranking_task(p, texts, {"at": p.source}))
    rng = random.Random(f"{seed}:overlap")
    for task in tasks:
        if task["kind"] == "ranking" and rng.random() < overlap:
            task["replicas"] = overlap_labelers
    settings = {
        "prompts": prompts,
        "completions": completions,
        "policy": policy,
        "k": k,
        "seed": seed,
        "overlap": overlap,
        "overlap_labelers": overlap_labelers,
    }
    conn = db.create(db_path, settings)
    try:
        db.add_tasks(conn, tasks)
    finally:
        conn.close()
    return {
        "demonstration": sum(t["kind"] == "demonstration" for t in tasks),
        "ranking": sum(t["kind"] == "ranking" for t in tasks),
        "overlap": sum(t.get("replicas", 1) > 1 for t in tasks),
    }


def _ranking_task(p: Prompt, texts: list[str], source: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "ranking", "prompt": p.value, "display": p.messages, "completions": texts, "source": source}
