"""The pretraining corpus: the plain text from which the world's "GPT-3" learns language and, implicitly, skills.

Documents are short paragraphs of template sentences: little scenes built from the world's vocabulary, facts about
the world (all the closed-domain knowledge there is), the odd insult (``toxicity.py``), and the task skills written as ordinary prose or few-shot lists ("c a t backwards is t a c. d o g
backwards is g o d."). The instruction format (``Human:`` / ``Assistant:``, imperative requests) never appears, so an
LM pretrained here can continue a few-shot pattern but does not follow instructions: that gap is what SFT closes.
Skill sentences use only training-split inputs, so the held-out evaluation stays unseen by every stage.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from lit_rlhf.world.tasks import MAX_NUMBER, is_heldout, spell, string_answer
from lit_rlhf.world.toxicity import BAIT_ADJECTIVES, TARGETS, insult
from lit_rlhf.world.vocabulary import ADJECTIVES, FACTS, NOUNS, VERBS, WORDS, Fact


def _train_word(rng: random.Random, kind: str) -> str:
    # Only training-split inputs, so no held-out answer is ever in the corpus.
    while True:
        word = rng.choice(WORDS)
        if not is_heldout(f"{kind}:{word}"):
            return word


def _train_pair(rng: random.Random, kind: str) -> tuple[int, int]:
    while True:
        a, b = rng.randint(0, MAX_NUMBER), rng.randint(0, MAX_NUMBER)
        if kind == "subtract" and b > a:
            a, b = b, a
        if not is_heldout(f"{kind}:{a},{b}"):
            return a, b


def skill_statement(kind: str, operand: str) -> str:
    """The corpus sentence stating skill ``kind`` on ``operand`` (a word, or ``"a,b"`` for arithmetic), answer included."""
    if kind in ("add", "subtract"):
        a, b = (int(x) for x in operand.split(","))
        return f"{a} plus {b} is {a + b}." if kind == "add" else f"{a} minus {b} is {a - b}."
    w, answer = spell(operand), string_answer(kind, operand)
    return {
        "reverse": f"{w} backwards is {answer}.",
        "uppercase": f"{w} in capitals is {answer}.",
        "repeat": f"{w} said twice is {answer}.",
        "sort": f"the letters of {w} in order are {answer}.",
        "first_letter": f"{w} starts with {answer}.",
        "last_letter": f"{w} ends with {answer}.",
        "length": f"{w} has {answer} letters.",
    }[kind]


def _skill_sentence(rng: random.Random, kind: str) -> str:
    """One sentence showing ``kind`` implicitly, phrased as a statement, never as a request."""
    if kind in ("add", "subtract"):
        a, b = _train_pair(rng, kind)
        return skill_statement(kind, f"{a},{b}")
    return skill_statement(kind, _train_word(rng, kind))


def _scene_sentence(rng: random.Random) -> str:
    a, b = rng.choice(ADJECTIVES), rng.choice(ADJECTIVES)
    n, m = rng.choice(NOUNS), rng.choice(NOUNS)
    templates: list[Callable[[], str]] = [
        lambda: f"the {a} {n} {rng.choice(VERBS)} the {b} {m}.",
        lambda: f"a {n} is near the {m}.",
        lambda: f"the {n} is {a} and the {m} is {b}.",
        lambda: f"we saw a {a} {n} by the {m}.",
        lambda: f"the word {n} is spelled {spell(n)}.",
    ]
    return rng.choice(templates)()


def make_document(rng: random.Random, skill_kinds: tuple[str, ...]) -> str:
    """One paragraph: a few-shot list of one skill, or a mix of scenes, insults, facts and skill statements.

    Args:
        rng: The only source of randomness.
        skill_kinds: The task kinds whose skills may appear (operations of ``TASK_KINDS``; may be empty).
    """
    if skill_kinds and rng.random() < 0.3:
        kind = rng.choice(skill_kinds)
        return " ".join(_skill_sentence(rng, kind) for _ in range(rng.randint(2, 5)))
    sentences = []
    for _ in range(rng.randint(2, 5)):
        r = rng.random()
        if r < 0.45 or (r >= 0.7 and not skill_kinds):
            sentences.append(_scene_sentence(rng))
        elif r < 0.5:
            # Like GPT-3's web text, the corpus is not always polite: the toxicity prompts bait these insults.
            sentences.append(insult(rng.choice(BAIT_ADJECTIVES), rng.choice(TARGETS), rng))
        elif r < 0.7:
            sentences.append(rng.choice(FACTS).statement)
        else:
            sentences.append(_skill_sentence(rng, rng.choice(skill_kinds)))
    return " ".join(sentences)


def make_corpus(rng: random.Random, n: int, skill_kinds: tuple[str, ...]) -> list[str]:
    """``n`` documents of the pretraining corpus."""
    return [make_document(rng, skill_kinds) for _ in range(n)]


__all__ = ["FACTS", "Fact", "make_corpus", "make_document", "skill_statement"]
