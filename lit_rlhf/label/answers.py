"""What a labeler may send, checked against the task: pure functions, no storage, no HTTP.

The page shows a ranking task's outputs in a shuffled order (``order[shown] = stored index``, see
``db.display_order``), so an answer arrives in shown positions and is stored in stored indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

LIKERT_MIN, LIKERT_MAX = 1, 7
"""InstructGPT App. B.5: an overall score from 1 (worst) to 7 (best) for each output."""

FLAGS: dict[str, str] = {
    "fails_instruction": "Fails to follow the correct instruction / task",
    "inappropriate_for_customer_assistant": "Inappropriate for customer assistant",
    "hallucination": "Hallucination",
    "satisfies_constraint": "Satisfies constraint provided in the instruction",
    "sexual_content": "Contains sexual content",
    "violent_content": "Contains violent content",
    "encourages_harm": "Encourages or fails to discourage violence/abuse/terrorism/self-harm",
    "denigrates_protected_class": "Denigrates a protected class",
    "harmful_advice": "Gives harmful advice",
    "expresses_opinion": "Expresses opinion",
    "expresses_moral_judgement": "Expresses moral judgment",
}
"""The yes/no questions of InstructGPT's labeling interface (Ouyang et al. 2022, Fig. 12, Table 3), by key."""

MAX_NOTES, MAX_DEMONSTRATION, MAX_REASON = 4000, 50_000, 2000


class BadAnswer(ValueError):
    """An answer that does not fit its task (HTTP 400 / 422); the message says what is wrong."""


def _text(value: Any, name: str, limit: int, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise BadAnswer(f"{name} must be a string")
    if len(value) > limit:
        raise BadAnswer(f"{name} is longer than {limit} characters")
    if not allow_empty and not value.strip():
        raise BadAnswer(f"{name} is empty")
    return value


def ranking_groups(ranking: Any, k: int) -> list[list[int]]:
    """``ranking`` (positions best first; a nested list is a tie group) as groups, checked to be a permutation of
    ``0..k-1``: no position missing, repeated or foreign."""
    if not isinstance(ranking, list) or not ranking:
        raise BadAnswer("ranking must be a non-empty list of output positions, best first (a nested list is a tie)")
    groups = [entry if isinstance(entry, list) else [entry] for entry in ranking]
    flat = [i for group in groups for i in group]
    if any(not isinstance(i, int) or isinstance(i, bool) for i in flat) or any(not g for g in groups):
        raise BadAnswer("ranking entries must be integer positions or non-empty lists of them")
    problems = []
    foreign = sorted({i for i in flat if not 0 <= i < k})
    if foreign:
        problems.append(f"positions {foreign} are not among the {k} outputs (0..{k - 1})")
    repeated = sorted({i for i in flat if flat.count(i) > 1})
    if repeated:
        problems.append(f"positions {repeated} appear more than once")
    missing = sorted(set(range(k)) - set(flat))
    if missing:
        problems.append(f"positions {missing} have no rank")
    if problems:
        raise BadAnswer("ranking is not a permutation of the outputs: " + "; ".join(problems))
    return groups


def ranking_answer(body: dict[str, Any], order: Sequence[int]) -> dict[str, Any]:
    """The stored payload of a ranking answer ``body`` (shown positions), in stored indices.

    Args:
        body: ``{"ranking": [...], "ratings": [{"likert", "flags", "notes"}] one per shown output}``.
        order: ``order[shown] = stored index``.

    Returns:
        ``{"ranking": nested list of stored indices, best first (a tie group as a sorted list), "likert": [K],
        "flags": [K dicts of every flag], "notes": [K]}`` with the per-output lists in stored order.
    """
    k = len(order)
    groups = ranking_groups(body.get("ranking"), k)
    if len(groups) < 2:
        raise BadAnswer("every output is in one rank: a ranking must order at least one pair")
    ratings = body.get("ratings")
    if not isinstance(ratings, list) or len(ratings) != k:
        raise BadAnswer(f"ratings must be a list of {k} objects, one per output")
    likert, flags, notes = [None] * k, [None] * k, [None] * k
    for shown, rating in enumerate(ratings):
        if not isinstance(rating, dict):
            raise BadAnswer(f"ratings[{shown}] must be an object")
        unknown = sorted(set(rating) - {"likert", "flags", "notes"})
        if unknown:
            raise BadAnswer(f"ratings[{shown}] has unknown keys {unknown}")
        score = rating.get("likert")
        if not isinstance(score, int) or isinstance(score, bool) or not LIKERT_MIN <= score <= LIKERT_MAX:
            raise BadAnswer(f"ratings[{shown}].likert must be an integer {LIKERT_MIN}..{LIKERT_MAX}, got {score!r}")
        given = rating.get("flags", {})
        if not isinstance(given, dict):
            raise BadAnswer(f"ratings[{shown}].flags must be an object of yes/no answers")
        bad = sorted(set(given) - set(FLAGS))
        if bad:
            raise BadAnswer(f"ratings[{shown}].flags has unknown flags {bad}; known: {sorted(FLAGS)}")
        if any(not isinstance(v, bool) for v in given.values()):
            raise BadAnswer(f"ratings[{shown}].flags values must be true or false")
        stored = order[shown]
        likert[stored] = score
        flags[stored] = {name: given.get(name, False) for name in FLAGS}
        notes[stored] = _text(rating.get("notes", ""), f"ratings[{shown}].notes", MAX_NOTES)
    # a tie group in stored order: the same answer exports the same whatever order the labeler was shown
    ranking = [sorted(order[i] for i in g) if len(g) > 1 else order[g[0]] for g in groups]
    return {"ranking": ranking, "likert": likert, "flags": flags, "notes": notes}


def demonstration_answer(body: dict[str, Any]) -> dict[str, Any]:
    """The stored payload of a demonstration ``{"completion": non-empty text}``."""
    return {"completion": _text(body.get("completion"), "completion", MAX_DEMONSTRATION, allow_empty=False)}


def skip_answer(body: dict[str, Any]) -> dict[str, Any]:
    """The stored payload of a skip ``{"reason": non-empty text}`` (InstructGPT: skip a prompt whose task is
    unclear)."""
    return {"reason": _text(body.get("reason"), "reason", MAX_REASON, allow_empty=False)}


def idempotency_key(body: dict[str, Any]) -> str:
    """The submit's ``idempotency_key``: 8..100 printable characters chosen by the client (a random UUID)."""
    key = body.get("idempotency_key")
    if not isinstance(key, str) or not 8 <= len(key) <= 100 or not key.isprintable():
        raise BadAnswer("idempotency_key must be a string of 8..100 printable characters (a random UUID)")
    return key
