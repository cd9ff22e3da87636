"""Two measures of an answer's text, shared by the labelers' quality (``labelers.py``) and the synthetic rankings
(``rankings.py``): letter-level edit distance and whether a text is a whole number."""

from __future__ import annotations


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two token lists (insert, delete, substitute each cost 1)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i]
        for j, y in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def is_number(text: str) -> bool:
    """Whether ``text`` is a whole number (``"12"``, ``"-3"``)."""
    return text.lstrip("-").isdigit()


__all__ = ["edit_distance", "is_number"]
