"""Evaluation prompts: the records a policy answers and a judge sees.

A prompt file holds PPO prompt records (``{"prompt": str}`` or ``{"messages": [...]}``, see DESIGN.md); any other
keys of a record (a reference answer, a task kind) are kept in :attr:`EvalPrompt.record` for judges and response
metrics that need them, e.g. the instruction world's held-out tasks ``{"prompt", "completion", "kind", ...}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lit_rlhf.data.collate import render_plain
from lit_rlhf.data.prompts import parse_prompt_record
from lit_rlhf.data.records import DataError, Message, Source, read_records


@dataclass(frozen=True)
class EvalPrompt:
    """One held-out prompt.

    Attributes:
        messages: The conversation so far, ending with the user's turn (what the policy is prompted with).
        record: The raw record, every key kept (e.g. a reference answer for a judge).
        source: Where the record came from.
    """

    messages: list[Message]
    record: dict[str, Any] = field(default_factory=dict)
    source: Source | None = None

    @property
    def text(self) -> str:
        """The prompt as one string: the user's text of a one-turn prompt, else the HH rendering of all turns."""
        return prompt_text(self.messages)


def prompt_text(messages: Sequence[Message]) -> str:
    """A one-user-turn prompt as its text; longer conversations in the plain HH format (without the final cue)."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return render_plain(messages).removesuffix("\n\nAssistant:")


def load_eval_prompts(files: str | list[str], max_examples: int | None = None) -> list[EvalPrompt]:
    """Read prompt records (the first ``max_examples`` of them); a bad record stops with ``path:line``.

    Args:
        files: Path, glob or list of them (JSONL, JSON, Parquet, CSV, saved dataset).
        max_examples: Keep only the first this many prompts; None keeps all.
    """
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be >= 1 or None, got {max_examples}")
    out: list[EvalPrompt] = []
    for record, source in read_records(files):
        example = parse_prompt_record(record, source)
        out.append(EvalPrompt(example.prompt, dict(record), source))
        if max_examples is not None and len(out) >= max_examples:
            break
    if not out:
        raise DataError(f"{files}: no prompts")
    return out


def as_eval_prompts(prompts: Sequence[EvalPrompt | str | Sequence[Message]]) -> list[EvalPrompt]:
    """Accept prompts as :class:`EvalPrompt`, plain strings (one user turn) or message lists."""
    out = []
    for p in prompts:
        if isinstance(p, EvalPrompt):
            out.append(p)
        elif isinstance(p, str):
            out.append(EvalPrompt([{"role": "user", "content": p}], {"prompt": p}))
        else:
            out.append(EvalPrompt(list(p), {"messages": list(p)}))
    return out


__all__ = ["EvalPrompt", "as_eval_prompts", "load_eval_prompts", "prompt_text"]
