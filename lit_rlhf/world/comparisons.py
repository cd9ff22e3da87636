"""Comparison collection, as InstructGPT collects it: sample K responses per prompt from the SFT policy, a labeler
ranks them.

:func:`collect_comparisons` writes ``{"prompt", "completions", "ranking"}`` JSONL (the K-wise format of
``lit_rlhf.data.records``, ranking = indices best first). Identical samples are merged and empty ones left out (a
record needs K >= 2 distinct, non-empty completions); a prompt left with fewer than ``min_distinct`` is dropped.
:func:`agreement_ceiling` is the share of pairs a second, independent labeler orders as the file does: the most an
RM trained on the file can be expected to agree with held-out comparisons of the same labelers.
:func:`collect_world_comparisons` does both for a built world's comparison prompts.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lit_rlhf.data.collate import Template, encode_prompt
from lit_rlhf.data.prompts import parse_prompt_record
from lit_rlhf.data.records import DataError, read_records
from lit_rlhf.world.labelers import Labeler, pair_agreement

log = logging.getLogger(__name__)

CEILING_LABELER_SEED = "ceiling"
"""Seed of the second labeler whose agreement with the recorded rankings is the ceiling."""


@dataclass(frozen=True)
class ComparisonStats:
    """What a collection wrote.

    Attributes:
        n_prompts: Prompts read.
        n_records: Ranking records written.
        n_dropped: Prompts dropped for fewer than ``min_distinct`` distinct, non-empty responses.
        mean_k: Mean K (completions per record).
        n_pairs: Pairs ordered by the rankings, sum of K choose 2.
    """

    n_prompts: int
    n_records: int
    n_dropped: int
    mean_k: float
    n_pairs: int

    @classmethod
    def of(cls, records: Sequence[dict[str, Any]], n_prompts: int, n_dropped: int) -> ComparisonStats:
        """The counts of ranking ``records`` collected from ``n_prompts`` prompts."""
        ks = [len(r["completions"]) for r in records]
        mean_k = sum(ks) / len(ks) if ks else 0.0
        return cls(n_prompts, len(records), n_dropped, mean_k, sum(k * (k - 1) // 2 for k in ks))


def _write_jsonl_atomic(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        tmp.replace(path)  # a file at ``path`` is always complete
    finally:
        tmp.unlink(missing_ok=True)


def _read_prompts(prompts_file: str | Path, max_prompts: int | None) -> list[tuple[dict[str, Any], list[Any]]]:
    out = []
    for record, source in read_records(str(prompts_file)):
        out.append((dict(record), parse_prompt_record(record, source).prompt))
        if max_prompts is not None and len(out) >= max_prompts:
            break
    if not out:
        raise DataError(f"{prompts_file}: no prompts")
    return out


def _labeler_prompt(record: dict[str, Any], messages: list[Any]) -> dict[str, Any]:
    # The labeler reads the user's request (and a reference answer where the record has one).
    return {**record, "prompt": messages[-1]["content"]}


def collect_comparisons(
    policy_dir: str | Path,
    prompts_file: str | Path,
    out_file: str | Path,
    k_min: int = 4,
    k_max: int = 9,
    labeler: Labeler | None = None,
    seed: int = 0,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    oversample: int = 2,
    min_distinct: int = 2,
    max_prompts: int | None = None,
    batch_size: int = 64,
    template: Template = "auto",
    device: str | torch.device = "cpu",
) -> ComparisonStats:
    """Sample K responses per prompt from a policy, have ``labeler`` rank them, write the rankings atomically.

    Args:
        policy_dir: An exported policy directory (model and tokenizer), e.g. the SFT stage's export.
        prompts_file: Prompt records (``{"prompt"}`` or ``{"messages"}``; any other keys, such as a reference
            ``completion``, are shown to the labeler).
        out_file: The JSONL file to write (replaced only once complete).
        k_min: Fewest responses sampled per prompt (InstructGPT: 4).
        k_max: Most (InstructGPT: 9); K is uniform in ``k_min..k_max`` per prompt.
        labeler: Who ranks; a :class:`Labeler` with the default noise when None.
        seed: Seeds K, the sampling and nothing else.
        max_new_tokens: Longest response.
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass.
        oversample: Draw ``oversample x K`` samples and keep the first K distinct ones (a sharp policy repeats
            itself).
        min_distinct: Drop a prompt with fewer distinct, non-empty responses than this (>= 2).
        max_prompts: Use only the first this many prompts; None uses all.
        batch_size: Sequences per ``generate`` call.
        template: Prompt template, as in training (``auto``: the tokenizer's chat template if it has one).
        device: Where the policy runs.

    Returns:
        Counts of what was written.
    """
    _check_settings(k_min, k_max, oversample, min_distinct)
    labeler = labeler or Labeler()
    prompts = _read_prompts(prompts_file, max_prompts)
    # 1. K per prompt, then oversample x K samples of each.
    rng = random.Random(f"{seed}:comparisons")
    ks = [rng.randint(k_min, k_max) for _ in prompts]
    samples = sample_policy(
        policy_dir,
        [messages for _, messages in prompts],
        [oversample * k for k in ks],
        seed,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        batch_size=batch_size,
        template=template,
        device=device,
    )
    # 2. The first K distinct non-empty responses of each prompt, ranked by the labeler.
    records, dropped = rank_samples(prompts, samples, ks, labeler, min_distinct)
    # 3. Written atomically: a file at out_file is always complete.
    _write_jsonl_atomic(Path(out_file), records)
    stats = ComparisonStats.of(records, n_prompts=len(prompts), n_dropped=dropped)
    log.info("comparisons %s: %s", out_file, stats)
    return stats


def _check_settings(k_min: int, k_max: int, oversample: int, min_distinct: int) -> None:
    problems = []
    if not 2 <= k_min <= k_max:
        problems.append(f"need 2 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
    if oversample < 1:
        problems.append(f"oversample must be >= 1, got {oversample}")
    if min_distinct < 2:
        problems.append(f"min_distinct must be >= 2 (a ranking orders at least one pair), got {min_distinct}")
    if problems:
        raise ValueError("bad comparison settings: " + "; ".join(problems))


def sample_policy(
    policy_dir: str | Path,
    prompts: Sequence[list[Any]],
    n_samples: Sequence[int],
    seed: int,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    template: Template,
    device: str | torch.device,
) -> list[list[str]]:
    """``n_samples[i]`` sampled responses to prompt ``i`` (its messages), decoded and stripped.

    Sample ``j`` of prompt ``i`` is drawn from its own stream, seeded with ``sample_seed(seed, i, j)``, so it does not
    depend on ``batch_size`` or on the other prompts.
    """
    from lit_rlhf.generation import sample_in_batches, sample_seed
    from lit_rlhf.models import freeze, load_model, load_tokenizer

    tokenizer = load_tokenizer(str(policy_dir))
    model = freeze(load_model(str(policy_dir), tokenizer)).to(device)
    prompt_ids = [encode_prompt(tokenizer, messages, template) for messages in prompts]
    flat = [ids for ids, n in zip(prompt_ids, n_samples, strict=True) for _ in range(n)]
    seeds = [sample_seed(seed, i, j) for i, n in enumerate(n_samples) for j in range(n)]
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
    texts = iter([tokenizer.decode(s, skip_special_tokens=True).strip() for s in samples])
    return [[next(texts) for _ in range(n)] for n in n_samples]


def rank_samples(
    prompts: Sequence[tuple[dict[str, Any], list[Any]]],
    samples: Sequence[list[str]],
    ks: Sequence[int],
    labeler: Labeler,
    min_distinct: int,
) -> tuple[list[dict[str, Any]], int]:
    """Ranking records of the first ``ks[i]`` distinct, non-empty samples of each prompt, and the number of prompts
    dropped for fewer than ``min_distinct`` of them.

    Args:
        prompts: Each prompt's record and messages.
        samples: Each prompt's sampled responses, in the order drawn.
        ks: How many responses each prompt's record keeps at most.
    """
    records, dropped = [], 0
    for (record, messages), texts, k in zip(prompts, samples, ks, strict=True):
        completions = [t for t in dict.fromkeys(texts) if t][:k]
        if len(completions) < min_distinct:
            dropped += 1
            continue
        ranking = labeler.rank(_labeler_prompt(record, messages), completions)
        prompt = record["prompt"] if isinstance(record.get("prompt"), str) else messages
        records.append({"prompt": prompt, "completions": completions, "ranking": ranking})
    return records, dropped


@dataclass(frozen=True)
class Agreement:
    """How often a second labeler orders a pair as recorded.

    Attributes:
        rate: Share of pairs ordered alike.
        n_pairs: Pairs compared.
    """

    rate: float
    n_pairs: int


def agreement_ceiling(comparison_file: str | Path, labeler: Labeler | None = None) -> Agreement:
    """Agreement of an independent labeler with the rankings in ``comparison_file``, over every ranked pair.

    An RM's accuracy on held-out comparisons of these labelers cannot be expected to exceed it (InstructGPT:
    72.6% agreement, RM accuracy about 72%).

    Args:
        comparison_file: ``{"prompt", "completions", "ranking"}`` records of world prompts.
        labeler: The second labeler; a default-noise labeler with seed :data:`CEILING_LABELER_SEED` when None.
    """
    from lit_rlhf.data.records import parse_ranking_record

    labeler = labeler or Labeler(seed=CEILING_LABELER_SEED)
    agree = total = 0
    for record, source in read_records(str(comparison_file)):
        example = parse_ranking_record(record, source)
        recorded = sorted(range(len(example.ranks)), key=lambda i: example.ranks[i])
        prompt = {**record, "prompt": example.prompt[-1]["content"]}
        a, n = pair_agreement(recorded, labeler.rank(prompt, example.completions))
        agree, total = agree + a, total + n
    if total == 0:
        raise DataError(f"{comparison_file}: no ranked pairs")
    return Agreement(agree / total, total)


def collect_world_comparisons(
    policy_dir: str | Path,
    world_dir: str | Path,
    out_dir: str | Path,
    labeler: Labeler | None = None,
    seed: int = 0,
    **settings: Any,
) -> dict[str, Any]:
    """Comparisons on a world's comparison prompts, written atomically to ``out_dir``.

    Writes ``train.jsonl`` (training-split prompts), ``val.jsonl`` (held-out-split prompts, for RM validation) and
    ``stats.json`` (counts and the agreement ceiling of each; written last, so its presence marks a finished
    directory).

    Args:
        policy_dir: The SFT policy export.
        world_dir: A world built by ``build_world`` (its ``comparisons/*_prompts.jsonl``).
        out_dir: Where to write.
        labeler: Who ranks (default-noise labeler when None).
        seed: Seeds the sampling (the validation file uses ``seed + 1``).
        **settings: Further arguments of :func:`collect_comparisons` (``k_min``, ``max_new_tokens``, ...).

    Returns:
        The content of ``stats.json``.
    """
    from lit_rlhf.models import atomic_directory
    from lit_rlhf.world.build import WorldFiles

    files = WorldFiles.at(world_dir)
    stats: dict[str, Any] = {}
    with atomic_directory(out_dir) as tmp:
        for i, (name, prompts_file) in enumerate(
            (("train", files.comparison_prompts_train), ("val", files.comparison_prompts_val))
        ):
            out_file = tmp / f"{name}.jsonl"
            collected = collect_comparisons(
                policy_dir, prompts_file, out_file, labeler=labeler, seed=seed + i, **settings
            )
            ceiling = agreement_ceiling(out_file).rate if collected.n_pairs else None
            stats[name] = {**asdict(collected), "agreement_ceiling": ceiling}
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


__all__ = [
    "Agreement",
    "ComparisonStats",
    "agreement_ceiling",
    "collect_comparisons",
    "collect_world_comparisons",
]
