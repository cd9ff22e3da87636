"""Few-shot probes of the corpus skills: the "alignment tax" on the capability pretraining gave the base model.

Each probe is raw text in the corpus's own phrasing: three training-split statements of one skill ("c a t backwards
is t a c."), then a held-out operand's statement cut before its answer ("... d o g backwards is"). A pretrained LM
continues the pattern; fine-tuning that costs the skill shows up as lower few-shot accuracy. Held-out operands never
appear in the corpus (``corpus.py``), so the probe measures the skill, not recall.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

from lit_rlhf.world.corpus import _skill_sentence, skill_statement
from lit_rlhf.world.tasks import DEFAULT_KINDS, split_inputs

N_SHOTS = 3
"""Training-split statements before each held-out one."""


def fewshot_probes(n: int, seed: int = 0, kinds: tuple[str, ...] = DEFAULT_KINDS) -> list[dict[str, str]]:
    """``n`` few-shot probes, kinds drawn uniformly, each on a uniform held-out operand of its kind.

    Args:
        n: How many probes.
        seed: Seeds the one ``random.Random`` that draws kinds, operands and shots.
        kinds: Skill kinds (operations of ``TASK_KINDS``).

    Returns:
        ``{"prompt", "completion", "kind"}`` records: the prompt ends where the answer starts (no trailing space);
        the completion is the rest of the held-out sentence without its period (the answer; for ``length``,
        ``"<n> letters"``).
    """
    rng = random.Random(f"fewshot:{seed}")
    pools = {kind: split_inputs(kind, heldout=True) for kind in kinds}
    empty = [kind for kind, pool in pools.items() if not pool]
    if empty:
        raise ValueError(f"no held-out inputs for kinds {empty}")
    probes = []
    for _ in range(n):
        kind = rng.choice(kinds)
        shots = [_skill_sentence(rng, kind) for _ in range(N_SHOTS)]
        sentence = skill_statement(kind, rng.choice(pools[kind]).split(":", 1)[1])
        head, rest = _split_answer(kind, sentence)
        probes.append({"prompt": " ".join([*shots, head]), "completion": rest, "kind": kind})
    return probes


_ANSWER_AFTER = {
    "add": " is ",
    "subtract": " is ",
    "reverse": " backwards is ",
    "uppercase": " in capitals is ",
    "repeat": " said twice is ",
    "sort": " in order are ",
    "first_letter": " starts with ",
    "last_letter": " ends with ",
    "length": " has ",
}
"""The words of each ``skill_statement`` after which its answer starts."""


def _split_answer(kind: str, sentence: str) -> tuple[str, str]:
    head, sep, rest = sentence.rpartition(_ANSWER_AFTER[kind])
    if not sep:
        raise ValueError(f"no {_ANSWER_AFTER[kind]!r} in the {kind} statement {sentence!r}")
    return head + sep.rstrip(), rest.removesuffix(".")


def write_fewshot_probes(
    path: str | os.PathLike, n: int = 200, seed: int = 0, kinds: tuple[str, ...] = DEFAULT_KINDS
) -> Path:
    """Write :func:`fewshot_probes` as JSONL at ``path``, atomically (a temporary file in the same directory, then
    ``os.replace``); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for record in fewshot_probes(n, seed, kinds):
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the probes are ordinary shared data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


__all__ = ["N_SHOTS", "fewshot_probes", "write_fewshot_probes"]
