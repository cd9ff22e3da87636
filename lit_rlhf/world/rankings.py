"""Ranked completions for the reward model: the exact answer and perturbed answers whose order is known.

For each task the simulated labeler ranks K = 4..9 answers: the exact answer first, then answers with strictly
increasing damage. Damage is measured, not assumed: for a number answer it is the distance from the true value;
for a spelled answer (``"t a c"``) it is the letter-level edit distance to the exact answer. A new answer is
accepted only if its damage is larger than the previous one's, so the ranking is the true quality order (an edit
that happens to undo an earlier one is rejected). Completions are written in shuffled order with
``ranking`` = their indices, best first, the K-wise format of ``lit_rlhf.data.records``.

Layout written into a world directory::

    rm/train.jsonl   {"prompt", "completions", "ranking"} on training-split inputs
    rm/val.jsonl     the same on held-out inputs (the RM's validation measures unseen inputs)
"""

from __future__ import annotations

import json
import os
import random
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lit_rlhf.world.constraints import CONSTRAINTS
from lit_rlhf.world.labelers import quality, world_task
from lit_rlhf.world.tasks import Task, sample_tasks
from lit_rlhf.world.text import edit_distance
from lit_rlhf.world.text import is_number as _is_number

K_MIN, K_MAX = 4, 9
"""InstructGPT labelers ranked K = 4..9 responses per prompt."""


def damage(answer: str, candidate: str) -> int:
    """How far ``candidate`` is from the exact ``answer``: numeric distance for numbers, else letter edit distance."""
    if _is_number(answer) and _is_number(candidate):
        return abs(int(candidate) - int(answer))
    return edit_distance(answer.split(" "), candidate.split(" "))


def _random_edit(tokens: list[str], rng: random.Random) -> list[str]:
    """One random letter-level edit: swap two neighbours, drop, replace or insert a letter."""
    tokens = list(tokens)
    alphabet = string.ascii_uppercase if any(t.isupper() for t in tokens) else string.ascii_lowercase
    op = rng.choice(("swap", "drop", "replace", "insert") if len(tokens) > 1 else ("replace", "insert"))
    i = rng.randrange(len(tokens))
    if op == "swap":
        i = rng.randrange(len(tokens) - 1)
        tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
    elif op == "drop":
        del tokens[i]
    elif op == "replace":
        tokens[i] = rng.choice(alphabet)
    else:
        tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(alphabet))
    return tokens


def damaged_answers(answer: str, k: int, rng: random.Random, max_tries: int = 200) -> list[str]:
    """``k`` distinct answers, best first: ``answer`` itself, then ``k - 1`` of strictly increasing damage.

    Args:
        answer: The exact answer (a number, or letters separated by spaces).
        k: How many answers (>= 2).
        rng: The only source of randomness.
        max_tries: Random edits tried per answer before giving up (never reached in practice).
    """
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    if _is_number(answer):
        # Off by 1, 2, 3, ... in a random direction: the further from the truth, the worse.
        value = int(answer)
        return [answer] + [str(value + d * rng.choice((-1, 1))) for d in range(1, k)]
    out = [answer]
    tokens = answer.split(" ")
    for _ in range(k - 1):
        for attempt in range(max_tries):
            # One edit usually suffices; a short, fully wrong answer needs several (inserts) to get worse.
            candidate = tokens
            for _ in range(1 + attempt // 10):
                candidate = _random_edit(candidate, rng) if candidate else [rng.choice(string.ascii_lowercase)]
            text = " ".join(candidate)
            if candidate and text not in out and damage(answer, text) > damage(answer, out[-1]):
                break
        else:
            raise RuntimeError(f"could not damage {answer!r} further after {max_tries} tries")
        tokens = candidate
        out.append(text)
    return out


def ranking_record(task: Task, k: int, rng: random.Random, flip_prob: float = 0.0) -> dict[str, Any]:
    """One K-wise record: ``{"prompt", "completions" (shuffled), "ranking" (indices, best first)}``.

    The completions are the exact content and answers of increasing damage (:func:`damaged_answers`); on a prompt
    with an explicit constraint the exact content comes both in the required form and without it, and each damaged
    answer in it on a fair coin, so the ranking teaches form as well as content. The ranking is the order of the hidden ``labelers.quality`` (the damage order
    among equals).

    Args:
        task: The task (its prompt and exact answer).
        k: How many completions.
        rng: The only source of randomness.
        flip_prob: Chance that the labeler swaps each pair of neighbouring ranks (human-like disagreement);
            0 gives the true order.
    """
    ordered = _dressed(task, damaged_answers(task.plain_answer, k - (task.constraint is not None), rng), rng)
    ordered = sorted(ordered, key=lambda text: -quality(task, text))  # stable: damage order among equals
    order = list(range(k))
    rng.shuffle(order)  # completions[i] = ordered[order[i]]
    completions = [ordered[j] for j in order]
    ranking = sorted(range(k), key=lambda i: order[i])
    for i in range(k - 1):
        if rng.random() < flip_prob:
            ranking[i], ranking[i + 1] = ranking[i + 1], ranking[i]
    return {"prompt": task.prompt, "completions": completions, "ranking": ranking}


def _dressed(task: Task, answers: list[str], rng: random.Random) -> list[str]:
    # The exact content both in the required form and without it; every damaged answer in it on a fair coin.
    if task.constraint is None:
        return answers
    form = CONSTRAINTS[task.constraint]
    exact, *damaged = answers
    dressed = [form.apply(a) if rng.random() < 0.5 and not form.follows(a) else a for a in damaged]
    return [task.answer, exact, *dressed]


def make_rankings(
    tasks: Iterable[Task | Mapping[str, str]],
    rng: random.Random,
    k_min: int = K_MIN,
    k_max: int = K_MAX,
    flip_prob: float = 0.0,
) -> list[dict[str, Any]]:
    """K-wise records for ``tasks`` (``Task`` objects, or world prompt records, ``{"prompt", ...}``).

    K is drawn uniformly from ``k_min..k_max`` for each task.
    """
    return [ranking_record(world_task(t), rng.randint(k_min, k_max), rng, flip_prob) for t in tasks]


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    tmp.replace(path)  # atomic: a file at ``path`` is always complete


def write_world_rankings(
    world_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = 3000,
    n_val: int = 200,
    k_min: int = K_MIN,
    k_max: int = K_MAX,
    flip_prob: float = 0.0,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``rm/train.jsonl`` (training-split inputs) and ``rm/val.jsonl`` (held-out inputs) into ``world_dir``.

    Same arguments give identical files; existing files are kept unless ``overwrite``.

    Returns:
        The train and validation paths.
    """
    root = Path(world_dir)
    train_path, val_path = root / "rm" / "train.jsonl", root / "rm" / "val.jsonl"
    if train_path.exists() and val_path.exists() and not overwrite:
        return train_path, val_path
    for path, n, heldout in ((train_path, n_train, False), (val_path, n_val, True)):
        rng = random.Random(f"{seed}:rankings:{'val' if heldout else 'train'}")
        tasks = sample_tasks(rng, n, heldout=heldout)
        _write_jsonl(path, make_rankings(tasks, rng, k_min, k_max, flip_prob))
    return train_path, val_path


__all__ = ["damage", "damaged_answers", "edit_distance", "make_rankings", "ranking_record", "write_world_rankings"]
