"""Explicit constraints: what a prompt asks of an answer's form, beyond its content (world version 4).

InstructGPT's labelers reward "following explicit constraints in the instruction" (§4.1, Figure 4): a global
behaviour, satisfiable on any prompt by a surface change that needs no new skill. The world's constraints are of
that kind: each appends one sentence to a prompt and asks for one fixed form of the answer,

* ``prefix``: "Start with 'Answer:'." -> ``Answer: t a c``
* ``full_stop``: "End with a full stop." -> ``t a c.``
* ``brackets``: "Put the answer in brackets." -> ``[t a c]``
* ``quotes``: "Put the answer in quotes." -> ``"t a c"``

and :func:`follows` checks the form, :func:`strip_forms` removes every form (asked for or not) so the content is
judged alone. A constraint a kind's answer already satisfies (a full stop after "I do not know.") is never asked of
that kind (:func:`applicable`).
"""

from __future__ import annotations

from dataclasses import dataclass

CONSTRAINED_SHARE = 0.6
"""Share of the world's prompts, of every kind, that carry a constraint."""


@dataclass(frozen=True)
class Constraint:
    """One required form of an answer.

    Args:
        name: Its key (``"prefix"``, ``"full_stop"``, ``"brackets"``, ``"quotes"``).
        instructions: The sentences that ask for it (a prompt carries one, appended after a space).
        start: What the answer must start with.
        end: What the answer must end with.
    """

    name: str
    instructions: tuple[str, ...]
    start: str = ""
    end: str = ""

    def apply(self, answer: str) -> str:
        """``answer`` in this form."""
        sep = " " if self.start.endswith(":") else ""
        return f"{self.start}{sep}{answer}{self.end}"

    def follows(self, text: str) -> bool:
        """Whether ``text`` (a response, filler phrases removed) has this form."""
        text = text.strip()
        return len(text) > len(self.start) + len(self.end) and text.startswith(self.start) and text.endswith(self.end)


CONSTRAINTS: dict[str, Constraint] = {
    c.name: c
    for c in (
        Constraint("prefix", ("Start with 'Answer:'.", "Begin your reply with 'Answer:'."), start="Answer:"),
        Constraint("full_stop", ("End with a full stop.", "Finish your reply with a full stop."), end="."),
        Constraint("brackets", ("Put the answer in brackets.", "Answer inside square brackets."), "[", "]"),
        Constraint("quotes", ("Put the answer in quotes.", "Answer inside double quotes."), '"', '"'),
    )
}
"""Every constraint, by name."""


def applicable(answer: str) -> tuple[str, ...]:
    """The constraints that ask something of ``answer``: those it does not satisfy already."""
    return tuple(name for name, c in CONSTRAINTS.items() if not c.follows(answer))


def constrain(prompt: str, name: str, instruction_index: int = 0) -> str:
    """``prompt`` with constraint ``name``'s instruction appended."""
    instructions = CONSTRAINTS[name].instructions
    return f"{prompt} {instructions[instruction_index % len(instructions)]}"


def split_constraint(prompt: str) -> tuple[str, str | None]:
    """The prompt without its constraint sentence, and the constraint's name (None when it has none)."""
    for name, constraint in CONSTRAINTS.items():
        for instruction in constraint.instructions:
            if prompt.endswith(" " + instruction):
                return prompt[: -len(instruction) - 1], name
    return prompt, None


def strip_forms(text: str) -> str:
    """``text`` without the forms: an ``Answer:`` prefix, enclosing brackets or quotes, a final full stop.

    The content left is what correctness is judged on, so a form never earns or costs content credit. Each form comes
    off once, in whatever order they were nested (``[Answer: t a c.]`` -> ``t a c``); a form repeated
    (``Answer: Answer: t a c``) leaves its copy in the content, which then no longer matches.
    """
    text, removed = text.strip(), set()
    while True:
        for name, (start, end) in _FORMS.items():
            if (
                name not in removed
                and len(text) >= len(start) + len(end)
                and text.startswith(start)
                and text.endswith(end)
            ):
                text = text[len(start) : len(text) - len(end)].strip()
                removed.add(name)
                break
        else:
            return text


_FORMS = {c.name: (c.start, c.end) for c in CONSTRAINTS.values()}


__all__ = [
    "CONSTRAINED_SHARE",
    "CONSTRAINTS",
    "Constraint",
    "applicable",
    "constrain",
    "split_constraint",
    "strip_forms",
]
