"""Instruction tasks with exact answers: the requests the world's users make of the assistant.

Each task is a small string or arithmetic operation. Words are written letter by letter (``c a t``) wherever their
letters matter, so that with a small byte-level BPE every letter is one token and a tiny model can learn the
operation itself rather than the spelling of a multi-letter token.

The world's other requests, truthfulness (``truthfulness.py``) and toxicity (``toxicity.py``), are kinds too
(``FAMILY_KINDS``): ``make_task``, ``canonical_inputs`` and ``sample_tasks`` build them the same way.

The held-out split is a property of the world, not of the seed: a task's canonical input (its kind and operand) is
hashed, and a fixed fraction of inputs is held out. Training data never contains a held-out input, so held-out
accuracy measures generalisation to unseen inputs, not recall.

The same hash splits the training inputs once more, as InstructGPT's SFT, RM and PPO datasets are separate prompt
sets: a share (:data:`RL_FRACTION`) is kept for the RLHF stages (comparison collection and PPO prompts) and never
demonstrated, so the SFT policy meets those prompts unseen, as it meets the held-out ones. Without it the RM and PPO
would work on prompts the SFT model has memorised, where its samples are nearly all right: little for labelers to
rank and nothing for PPO to improve.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

from lit_rlhf.world.constraints import CONSTRAINED_SHARE, CONSTRAINTS, applicable, constrain
from lit_rlhf.world.vocabulary import ANIMALS, PEOPLE, WORDS, Task

HELDOUT_FRACTION = 0.2
"""Share of canonical inputs (per kind) reserved for evaluation."""
RL_FRACTION = 0.25
"""Share of the training-split inputs kept for the RLHF stages (comparisons and PPO prompts), never demonstrated."""
DEV_FRACTION = 0.05
"""Share of all canonical inputs kept as the development slice: never trained on, never evaluated; where settings
(learning rates, the ptx coefficient) are chosen, judged by the training labelers (world version 4)."""
POOLS = ("sft", "rl", "dev", "heldout")
"""Where a canonical input is used: SFT demonstrations, the RLHF stages' prompts, choosing settings, or evaluation."""


def spell(word: str) -> str:
    """Write ``word`` letter by letter: ``"cat"`` -> ``"c a t"``."""
    return " ".join(word)


def _unit_hash(key: str) -> float:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_heldout(key: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """Whether the canonical input ``key`` belongs to the held-out split (a stable hash, independent of seeds)."""
    return _unit_hash(key) < fraction


def input_pool(key: str) -> str:
    """The pool of :data:`POOLS` the canonical input ``key`` belongs to (a stable hash, independent of seeds).

    ``"heldout"`` exactly where :func:`is_heldout`; of the rest, :data:`RL_FRACTION` is ``"rl"``, a further
    :data:`DEV_FRACTION` of all inputs ``"dev"`` and the others ``"sft"``.
    """
    u = _unit_hash(key)
    if u < HELDOUT_FRACTION:
        return "heldout"
    rl_end = HELDOUT_FRACTION + RL_FRACTION * (1 - HELDOUT_FRACTION)
    return "rl" if u < rl_end else "dev" if u < rl_end + DEV_FRACTION else "sft"


def _word_difficulty(word: str) -> int:
    return 1 if len(word) <= 3 else 2 if len(word) == 4 else 3


# Each kind: (operand sampler, answer from operand, prompt templates, difficulty). Operands are words or
# (a, b) number pairs; templates are filled with ``{w}`` (the spelled word) or ``{a}``, ``{b}``.
_STRING_KINDS: dict[str, tuple[Callable[[str], str], tuple[str, ...]]] = {
    "reverse": (
        lambda w: spell(w[::-1]),
        ("Reverse the letters {w}.", "Write {w} backwards."),
    ),
    "uppercase": (
        lambda w: spell(w.upper()),
        ("Write {w} in capital letters.", "Make {w} uppercase."),
    ),
    "repeat": (
        lambda w: spell(w) + " " + spell(w),
        ("Repeat {w} twice.", "Say {w} two times."),
    ),
    "sort": (
        lambda w: spell("".join(sorted(w))),
        ("Sort the letters {w}.", "Put the letters {w} in alphabetical order."),
    ),
    "first_letter": (
        lambda w: w[0],
        ("What is the first letter of {w}?", "Which letter does {w} start with?"),
    ),
    "last_letter": (
        lambda w: w[-1],
        ("What is the last letter of {w}?", "Which letter does {w} end with?"),
    ),
    "length": (
        lambda w: str(len(w)),
        ("How many letters are in {w}?", "Count the letters in {w}."),
    ),
}

_NUMBER_KINDS: dict[str, tuple[Callable[[int, int], int], tuple[str, ...]]] = {
    "add": (
        lambda a, b: a + b,
        ("What is {a} plus {b}?", "Add {a} and {b}."),
    ),
    "subtract": (
        lambda a, b: a - b,
        ("What is {a} minus {b}?", "Subtract {b} from {a}."),
    ),
}

TASK_KINDS: tuple[str, ...] = tuple(_STRING_KINDS) + tuple(_NUMBER_KINDS)
DEFAULT_KINDS: tuple[str, ...] = tuple(k for k in TASK_KINDS if k != "subtract")
"""The kinds a default world holds. Subtraction is left out: a scratch model of the SFT stage's size, trained on every
kind, solved none of its 11 held-out pairs of 0..9; ``kinds`` in ``build_world`` can bring it back."""
FAMILY_KINDS: tuple[str, ...] = ("closed_qa", "unanswerable", "toxicity", "toxicity_respectful")
"""The other request families: truthfulness (``truthfulness.py``) and toxicity (``toxicity.py``)."""
WORLD_KINDS: tuple[str, ...] = TASK_KINDS + FAMILY_KINDS
"""Every kind of prompt the world makes: the operations of ``TASK_KINDS`` and the families of ``FAMILY_KINDS``."""
MAX_NUMBER = 9
"""Arithmetic operands are 0..MAX_NUMBER (subtraction keeps the result non-negative)."""


def string_answer(kind: str, word: str) -> str:
    """The exact answer of string task ``kind`` on ``word`` (letters spelled out)."""
    return _STRING_KINDS[kind][0](word)


def number_answer(kind: str, a: int, b: int) -> str:
    """The exact answer of arithmetic task ``kind`` on ``a`` and ``b``."""
    return str(_NUMBER_KINDS[kind][0](a, b))


def _family(kind: str) -> Any:
    # Imported here: the family modules build on this one.
    if kind in ("closed_qa", "unanswerable"):
        from lit_rlhf.world import truthfulness

        return truthfulness
    from lit_rlhf.world import toxicity

    return toxicity


def canonical_inputs(kind: str) -> list[str]:
    """Every canonical input of ``kind``, as the ``key`` strings used for the split."""
    if kind in FAMILY_KINDS:
        return _family(kind).canonical_inputs(kind)
    if kind in _STRING_KINDS:
        return [f"{kind}:{w}" for w in WORDS]
    if kind == "add":
        return [f"add:{a},{b}" for a in range(MAX_NUMBER + 1) for b in range(MAX_NUMBER + 1)]
    if kind == "subtract":
        return [f"subtract:{a},{b}" for a in range(MAX_NUMBER + 1) for b in range(a + 1)]
    raise ValueError(f"unknown task kind {kind!r}; use one of {WORLD_KINDS}")


def split_inputs(kind: str, heldout: bool, pool: str | None = None) -> list[str]:
    """The canonical inputs of ``kind`` in the held-out split (``heldout=True``) or the training split.

    Args:
        pool: With ``heldout=False``, only the training inputs of this pool (``"sft"``, ``"rl"`` or ``"dev"``).
    """
    if pool is not None and (heldout or pool not in ("sft", "rl", "dev")):
        raise ValueError(f"pool {pool!r} is not a part of the {'held-out' if heldout else 'training'} split")
    return [
        key
        for key in canonical_inputs(kind)
        if is_heldout(key) == heldout and (pool is None or input_pool(key) == pool)
    ]


def make_task(key: str, template_index: int = 0, constraint: str | None = None, instruction_index: int = 0) -> Task:
    """Build the task for canonical input ``key`` (``"reverse:cat"``, ``"add:3,4"``) with one of its templates.

    Keys of ``FAMILY_KINDS`` (``"closed_qa:<question>"``, ``"unanswerable:name,cat"``, ``"toxicity:lazy,pig"``) are
    built by their family's module.

    Args:
        key: The canonical input.
        template_index: Which of the kind's phrasings.
        constraint: A name of ``constraints.CONSTRAINTS`` whose instruction ends the prompt; None for none.
        instruction_index: Which of the constraint's phrasings.
    """
    task = _make_plain_task(key, template_index)
    return task if constraint is None else constrained(task, constraint, instruction_index)


def constrained(task: Task, constraint: str, instruction_index: int = 0) -> Task:
    """``task`` with constraint ``constraint``'s instruction appended and its answer in the required form."""
    if constraint not in CONSTRAINTS:
        raise ValueError(f"unknown constraint {constraint!r}; use one of {sorted(CONSTRAINTS)}")
    if task.constraint is not None:
        raise ValueError(f"{task.prompt!r} already carries the constraint {task.constraint!r}")
    form = CONSTRAINTS[constraint]
    answer = task.answer if form.follows(task.answer) else form.apply(task.answer)
    prompt = constrain(task.prompt, constraint, instruction_index)
    return Task(task.kind, prompt, answer, task.difficulty, task.key, constraint, task.answer)


def _make_plain_task(key: str, template_index: int) -> Task:
    kind, operand = key.split(":", 1)
    if kind in FAMILY_KINDS:
        return _family(kind).make_task(key, template_index)
    if kind in _STRING_KINDS:
        templates = _STRING_KINDS[kind][1]
        prompt = templates[template_index % len(templates)].format(w=spell(operand))
        return Task(kind, prompt, string_answer(kind, operand), _word_difficulty(operand), key)
    if kind in _NUMBER_KINDS:
        a, b = (int(x) for x in operand.split(","))
        templates = _NUMBER_KINDS[kind][1]
        prompt = templates[template_index % len(templates)].format(a=a, b=b)
        difficulty = 1 if max(a, b) <= 3 else 2 if max(a, b) <= 6 else 3
        return Task(kind, prompt, number_answer(kind, a, b), difficulty, key)
    raise ValueError(f"unknown task kind {kind!r} in {key!r}; use one of {WORLD_KINDS}")


def _input_pools(kinds: tuple[str, ...], heldout: bool, pool: str | None) -> dict[str, list[str]]:
    pools = {kind: split_inputs(kind, heldout, pool) for kind in kinds}
    empty = [kind for kind, inputs in pools.items() if not inputs]
    if empty:
        where = "held-out" if heldout else f"{pool} pool" if pool else "training"
        raise ValueError(f"no {where} inputs for kinds {empty}")
    return pools


def _maybe_constrained(task: Task, rng: random.Random, constrained_share: float) -> Task:
    # One draw decides whether; two more which constraint (of those the answer does not already satisfy) and phrasing.
    if rng.random() >= constrained_share:
        return task
    return constrained(task, rng.choice(applicable(task.answer)), rng.randrange(2))


def sample_tasks(
    rng: random.Random,
    n: int,
    heldout: bool,
    kinds: tuple[str, ...] = TASK_KINDS,
    pool: str | None = None,
    constrained_share: float = CONSTRAINED_SHARE,
) -> list[Task]:
    """Draw ``n`` tasks, kinds uniformly, each with a uniform input of its split and a uniform template; a share of
    them carry an explicit constraint (``constraints.py``). Prompts may repeat.

    Args:
        rng: The only source of randomness.
        n: How many tasks.
        heldout: Draw from the held-out split instead of the training split.
        kinds: The task kinds to draw from.
        pool: With ``heldout=False``, draw only from this pool of the training split (``"sft"``, ``"rl"``, ``"dev"``).
        constrained_share: Probability that a task carries a constraint (a uniform one of those its answer does not
            already satisfy, in a uniform phrasing).
    """
    pools = _input_pools(kinds, heldout, pool)
    tasks = []
    for _ in range(n):
        kind = rng.choice(kinds)
        task = make_task(rng.choice(pools[kind]), rng.randrange(2))
        tasks.append(_maybe_constrained(task, rng, constrained_share))
    return tasks


Phrasing = tuple[int, str | None, int]
"""How an input is asked: its template, its constraint (None for none) and the constraint's phrasing."""


def _variants(key: str) -> tuple[list[Phrasing], list[Phrasing]]:
    # Every phrasing of input ``key``: (template, constraint, constraint phrasing), unconstrained and constrained.
    plain = [(t, None, 0) for t in range(2)]
    constrained_ = [(t, c, i) for t in range(2) for c in applicable(make_task(key, t).answer) for i in range(2)]
    return plain, constrained_


def count_distinct_prompts(kinds: tuple[str, ...], heldout: bool, pool: str | None = None) -> int:
    """How many distinct prompts the inputs of ``kinds`` in a split (and pool) make: :func:`sample_distinct_tasks`
    draws at most this many."""
    return sum(
        len(p) + len(c) for kind in kinds for key in split_inputs(kind, heldout, pool) for p, c in [_variants(key)]
    )


def sample_distinct_tasks(
    rng: random.Random,
    n: int,
    heldout: bool,
    kinds: tuple[str, ...] = TASK_KINDS,
    pool: str | None = None,
    constrained_share: float = CONSTRAINED_SHARE,
) -> list[Task]:
    """Like :func:`sample_tasks`, but no prompt twice and the inputs of a kind used as evenly as they can be.

    Each draw first decides whether the prompt carries a constraint (probability ``constrained_share``), then a
    kind uniformly among those with such a prompt left, then the kind's next input in a shuffled round robin (every
    input once before any twice) with one of its unused phrasings. An evaluation set of distinct prompts on inputs
    spread this way is what makes its per-prompt outcomes nearly independent, as a confidence interval assumes. Only
    when one sort of prompt (constrained or not) has run out in every kind is the other drawn instead.

    Raises:
        ValueError: Fewer than ``n`` distinct prompts exist for these kinds (:func:`count_distinct_prompts`).
    """
    available = count_distinct_prompts(kinds, heldout, pool)
    if n > available:
        raise ValueError(f"only {available} distinct prompts exist for kinds {list(kinds)}, {n} asked for")
    # Per kind, its inputs in a shuffled round robin, each with its unused phrasings (unconstrained, constrained).
    queues: dict[str, list[tuple[str, list[Phrasing], list[Phrasing]]]] = {}
    for kind, inputs in _input_pools(kinds, heldout, pool).items():
        queues[kind] = [
            (key, *(rng.sample(v, len(v)) for v in _variants(key))) for key in rng.sample(inputs, len(inputs))
        ]
    tasks: list[Task] = []
    while len(tasks) < n:
        want = int(rng.random() < constrained_share) + 1  # the index of the phrasings wanted in a queue entry
        live = [kind for kind in kinds if any(entry[want] for entry in queues[kind])]
        if not live:  # none of that sort is left in any kind: the other sort
            want = 3 - want
            live = [kind for kind in kinds if any(entry[want] for entry in queues[kind])]
        queue = queues[rng.choice(live)]
        entry = queue.pop(next(i for i, e in enumerate(queue) if e[want]))
        tasks.append(make_task(entry[0], *entry[want].pop()))
        if entry[1] or entry[2]:
            queue.append(entry)
    return tasks


def human_mistake(task: Task, rng: random.Random) -> str:
    """A plausible wrong answer a careless labeler might write: two letters swapped, a letter dropped, off by one.

    Always differs from ``task.plain_answer`` (the content; a demonstration applies any required form after).
    """
    answer = task.plain_answer
    if answer.lstrip("-").isdigit():
        return str(int(answer) + rng.choice((-1, 1)))
    letters = answer.split(" ")
    if len(letters) == 1:
        # A single letter: a neighbouring one in the alphabet.
        c = letters[0]
        base = ord("a") if c.islower() else ord("A")
        return chr(base + (ord(c) - base + rng.choice((1, 25))) % 26)
    options = [i for i in range(len(letters) - 1) if letters[i] != letters[i + 1]]
    if options and rng.random() < 0.5:
        i = rng.choice(options)
        letters[i], letters[i + 1] = letters[i + 1], letters[i]
    else:
        del letters[rng.randrange(len(letters))]
    return " ".join(letters)


__all__ = [
    "ANIMALS",
    "FAMILY_KINDS",
    "HELDOUT_FRACTION",
    "DEFAULT_KINDS",
    "DEV_FRACTION",
    "POOLS",
    "RL_FRACTION",
    "PEOPLE",
    "WORLD_KINDS",
    "TASK_KINDS",
    "WORDS",
    "Task",
    "canonical_inputs",
    "human_mistake",
    "constrained",
    "count_distinct_prompts",
    "input_pool",
    "is_heldout",
    "make_task",
    "number_answer",
    "sample_distinct_tasks",
    "sample_tasks",
    "spell",
    "split_inputs",
    "string_answer",
]
