"""Read record files and validate records; every error names the file and line (or record).

Sources: JSONL (one object a line), JSON (a list of objects, or ``{"data": [...]}``), Parquet, CSV, and a directory
written by ``datasets.Dataset.save_to_disk``. ``files`` may be a path, a glob or a list of them, as in
``datasets.load_dataset(data_files=...)``.

Record formats (see DESIGN.md):

* SFT: ``{"prompt", "completion"}``; ``{"messages": [{"role", "content"}, ...]}`` whose last message is the
  assistant's answer; Alpaca ``{"instruction", "input", "output"}``; where asked for (``allow_text``), plain text
  ``{"text"}`` (pretraining: an empty prompt, so the loss is on every token).
* RM: pairs ``{"prompt", "chosen", "rejected"}``; hh-rlhf ``{"chosen", "rejected"}`` dialogues; K-wise
  ``{"prompt", "completions", "ranking"}`` (see :func:`parse_ranking_record`).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

Message = dict[str, str]
"""A chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""

ROLES = ("system", "user", "assistant")
Files = str | list[str] | None
"""Record files: a path, a glob or a list of them; None when not given."""

OnError = Literal["error", "skip"]
MAX_ERRORS_SHOWN = 10


class DataError(ValueError):
    """A record file or record is unusable; the message starts with ``path:line:``."""


@dataclass(frozen=True)
class Source:
    """Where a record came from, for error messages: ``path:line`` (JSONL, CSV) or ``path:record N``."""

    path: str
    line: int
    unit: str = "line"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.unit == "line" else f"{self.path}:{self.unit} {self.line}"


@dataclass(frozen=True)
class SFTExample:
    """One demonstration: the conversation so far (ending with the user's turn) and the answer to learn.

    Attributes:
        prompt: The messages before the answer; the last one has role ``user``. Empty for a plain-text record
            ``{"text"}``, whose text is all completion (language modelling on every token, as in pretraining).
        completion: The assistant's answer, or the plain text (non-empty).
        source: Where the record came from.
    """

    prompt: list[Message]
    completion: str
    source: Source


# --------------------------------------------------------------------------- files


def expand_files(files: str | list[str] | tuple[str, ...]) -> list[Path]:
    """Expand a path, glob or list of them into existing paths, in a stable order."""
    patterns = [files] if isinstance(files, (str, Path)) else list(files)
    if not patterns:
        raise DataError("no data files given")
    out: list[Path] = []
    for pattern in patterns:
        pattern = str(pattern)
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise DataError(f"{pattern}: no file matches this pattern")
            out.extend(Path(m) for m in matches)
        else:
            path = Path(pattern)
            if not path.exists():
                raise DataError(f"{pattern}: no such file or directory")
            out.append(path)
    return out


def read_records(files: str | list[str], unreadable: list[str] | None = None) -> Iterator[tuple[Any, Source]]:
    """Yield ``(raw_record, source)`` from every file in ``files``; a file with no records is an error.

    Args:
        files: A path, glob or list of them.
        unreadable: Where the errors of JSONL lines that are not valid JSON go, reading on past them; None raises
            the first one.
    """
    for path in expand_files(files):
        n_unreadable = len(unreadable) if unreadable is not None else 0
        n = 0
        for n, item in enumerate(_read_one(path, unreadable), start=1):  # noqa: B007
            yield item
        if n == 0 and (unreadable is None or len(unreadable) == n_unreadable):
            raise DataError(f"{path}: file has no records")


def _read_one(path: Path, unreadable: list[str] | None) -> Iterator[tuple[Any, Source]]:
    if path.is_dir():
        yield from _read_saved_dataset(path)
        return
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _read_jsonl(path, unreadable)
    elif suffix == ".json":
        yield from _read_json(path)
    elif suffix == ".parquet":
        yield from _read_parquet(path)
    elif suffix in (".csv", ".tsv"):
        yield from _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        raise DataError(f"{path}: unknown file type {suffix!r}; use .jsonl, .json, .parquet, .csv or a saved dataset")


def _read_jsonl(path: Path, unreadable: list[str] | None) -> Iterator[tuple[Any, Source]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                error = f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})"
                if unreadable is None:
                    raise DataError(error) from None
                unreadable.append(error)
                continue
            yield record, Source(str(path), lineno)


def _read_json(path: Path) -> Iterator[tuple[Any, Source]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json file must hold a list of records (or {{'data': [...]}})")
    for i, record in enumerate(data):
        yield record, Source(str(path), i, unit="record")


def _read_parquet(path: Path) -> Iterator[tuple[Any, Source]]:
    import pyarrow.parquet as pq

    for i, record in enumerate(pq.read_table(path).to_pylist()):
        yield record, Source(str(path), i, unit="record")


def _read_csv(path: Path, delimiter: str) -> Iterator[tuple[Any, Source]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        for record in reader:
            yield dict(record), Source(str(path), reader.line_num)


def _read_saved_dataset(path: Path) -> Iterator[tuple[Any, Source]]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError as e:
        raise DataError(f"{path}: a directory must be a dataset saved with `save_to_disk` ({e})") from None
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: a saved DatasetDict needs a 'train' split; it has {list(ds)}")
        ds = ds["train"]
    for i, record in enumerate(ds):
        yield record, Source(str(path), i, unit="record")


# --------------------------------------------------------------------------- validation helpers


HH_ASSISTANT_CUE = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant|System):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant", "System": "system"}


def require_str(record: dict[str, Any], key: str, source: Source, allow_empty: bool = False) -> str:
    """``record[key]`` as a string, or a DataError naming the source, the key and what is wrong."""
    if key not in record or record[key] is None:
        raise DataError(f"{source}: missing key {key!r} (keys: {sorted(record)})")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{source}: {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{source}: {key!r} is empty")
    return value


def parse_messages(value: Any, source: Source, key: str = "messages") -> list[Message]:
    """Validate a list of ``{"role", "content"}`` chat messages."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{source}: {key!r} must be a non-empty list of {{'role', 'content'}} messages")
    messages: list[Message] = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{source}: {key}[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"{source}: {key}[{i}].role is {m['role']!r}; use one of {list(ROLES)}")
        if not isinstance(m["content"], str):
            raise DataError(f"{source}: {key}[{i}].content must be a string")
        messages.append({"role": m["role"], "content": m["content"]})
    return messages


def parse_sft_record(record: Any, source: Source, allow_text: bool = False) -> SFTExample:
    """Turn one raw SFT record (any of the formats in the module docstring) into an :class:`SFTExample`.

    Args:
        allow_text: Accept plain text ``{"text"}`` as an example with an empty prompt (pretraining). Off by
            default: a text record in demonstrations is more likely a wrong file than a wish to learn every token.
    """
    if not isinstance(record, dict):
        raise DataError(f"{source}: a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = parse_messages(record["messages"], source)
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{source}: the last message must be the assistant's answer to learn")
        if len(messages) < 2 or messages[-2]["role"] != "user":
            raise DataError(f"{source}: the answer must follow a user message")
        if not messages[-1]["content"].strip():
            raise DataError(f"{source}: the assistant's answer is empty")
        return SFTExample(messages[:-1], messages[-1]["content"], source)
    if "instruction" in record:
        instruction = require_str(record, "instruction", source)
        extra = require_str(record, "input", source, allow_empty=True) if "input" in record else ""
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return SFTExample([{"role": "user", "content": prompt}], require_str(record, "output", source), source)
    if "prompt" in record or "completion" in record:
        if "prompt" not in record:
            raise DataError(f"{source}: missing 'prompt'")
        prompt = prompt_messages(record["prompt"], source, "prompt")
        completion = require_str(record, "completion", source)
        if isinstance(record["prompt"], str) and _HH_TURN.match(record["prompt"]) and completion.startswith(" "):
            completion = completion[1:]  # the space after "Assistant:" is the format's, as in hh-rlhf pairs
        return SFTExample(prompt, completion, source)
    if "text" in record and allow_text:
        return SFTExample([], require_str(record, "text", source), source)
    hint = "; plain 'text' needs --data.plain_text=true" if "text" in record else ""
    raise DataError(
        f"{source}: unknown SFT record with keys {sorted(record)}; expected 'prompt'+'completion', 'messages', "
        f"or 'instruction'+'input'+'output'{hint}"
    )


T = TypeVar("T")


def load_records(
    files: str | list[str], parse: Callable[[Any, Source], T], on_error: OnError = "error"
) -> tuple[list[T], list[str]]:
    """Read and parse every record of ``files``.

    Args:
        files: A path, glob or list of them.
        parse: Turns a raw record into a typed one, raising :class:`DataError` for a bad record.
        on_error: ``"error"`` stops with every bad record listed (up to 10 shown); ``"skip"`` drops them. A JSONL
            line that is not valid JSON is a bad record too.

    Returns:
        The parsed records and the messages of the skipped ones.
    """
    parsed: list[T] = []
    errors: list[str] = []  # in file order: read_records appends the unreadable lines as it meets them
    for raw, source in read_records(files, unreadable=errors):
        try:
            parsed.append(parse(raw, source))
        except DataError as e:
            errors.append(str(e))
    if errors and on_error == "error":
        shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise DataError(
            f"{len(errors)} bad record(s); fix them or set on_bad_record='skip' (--data.on_bad_record=skip):\n  "
            f"{shown}{more}"
        )
    if not parsed:
        raise DataError(f"{files}: no usable records ({len(errors)} skipped)")
    return parsed, errors


# --------------------------------------------------------------------------- preference and ranking records

TiePolicy = Literal["error", "drop"]
"""What a tie in a ranking means: ``error`` stops; ``drop`` keeps the record, tied completions form no pair."""


@dataclass(frozen=True)
class RankingExample:
    """One prompt and K >= 2 distinct completions ranked by quality (a pair is K = 2).

    Attributes:
        prompt: The messages before the answers; rendered with the same template as SFT.
        completions: The K answers, in file order.
        ranks: The rank of each completion, 0 = best; equal ranks are ties (only with tie policy ``drop``).
        source: Where the record came from.
    """

    prompt: list[Message]
    completions: list[str]
    ranks: list[int]
    source: Source


def parse_hh_dialogue(text: str, source: Source, key: str = "prompt") -> list[Message]:
    """Split an HH-format dialogue (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) into messages.

    A trailing empty ``"\\n\\nAssistant:"`` (the cue for the answer) is dropped, so
    ``render_plain(parse_hh_dialogue(p))`` gives back ``p`` (plus the cue when ``p`` had none). One space after each
    ``Role:`` is part of the format, not of the content.
    """
    if not _HH_TURN.match(text):
        raise DataError(f"{source}: {key!r} is not an HH dialogue (it must start with '\\n\\nHuman:')")
    parts = _HH_TURN.split(text)[1:]  # [role, content, role, content, ...]
    messages = [
        {"role": _HH_ROLES[role], "content": content[1:] if content.startswith(" ") else content}
        for role, content in zip(parts[::2], parts[1::2], strict=True)
    ]
    if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    if not messages or messages[-1]["role"] != "user":
        raise DataError(f"{source}: {key!r} must end with a Human turn (or the '\\n\\nAssistant:' cue after one)")
    return messages


def prompt_messages(value: Any, source: Source, key: str) -> list[Message]:
    """The one way every stage reads a prompt: a list of messages, an HH dialogue (``"\\n\\nHuman: ..."``, split into
    its turns, never wrapped again), or plain text (one user message)."""
    if isinstance(value, list):
        messages = parse_messages(value, source, key)
        if messages[-1]["role"] != "user":
            raise DataError(f"{source}: the last message of {key!r} must be the user's")
        return messages
    if isinstance(value, str) and not value.strip():
        raise DataError(f"{source}: {key!r} is empty")
    if not isinstance(value, str):
        raise DataError(f"{source}: {key!r} must be a string or a list of messages, got {type(value).__name__}")
    if _HH_TURN.match(value):
        return parse_hh_dialogue(value, source, key)
    return [{"role": "user", "content": value}]


def split_hh_pair(chosen: str, rejected: str, source: Source) -> tuple[list[Message], str, str]:
    """Split two hh-rlhf dialogues into the shared prompt and the two final answers.

    The prompt is the common prefix of both, cut back to its last ``"\\n\\nAssistant:"``; each answer is the rest
    (without the one space the format puts after ``Assistant:``). An answer may be empty: hh-rlhf has a few
    rejected answers in which the assistant said nothing, a real (bad) response that the RM scores.
    """
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(HH_ASSISTANT_CUE)
    if cut < 0:
        raise DataError(f"{source}: 'chosen' and 'rejected' share no prefix ending in '\\n\\nAssistant:'")
    prompt_text = chosen[: cut + len(HH_ASSISTANT_CUE)]
    answers = []
    for text in (chosen, rejected):
        answer = text[len(prompt_text) :]
        answers.append(answer[1:] if answer.startswith(" ") else answer)
    return parse_hh_dialogue(prompt_text, source), answers[0], answers[1]


def _completion_text(value: Any, source: Source, key: str, allow_empty: bool = False) -> str:
    """A completion given as a string or as a one-message assistant list (TRL's conversational format)."""
    if isinstance(value, list):
        messages = parse_messages(value, source, key)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise DataError(f"{source}: {key!r} as messages must be exactly one assistant message")
        value = messages[0]["content"]
    if not isinstance(value, str):
        raise DataError(f"{source}: {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{source}: {key!r} is empty")
    return value


def _split_message_pair(chosen: Any, rejected: Any, source: Source) -> tuple[list[Message], Any, Any]:
    """Full conversations as message lists: the prompt is the common leading messages."""
    chosen_m = parse_messages(chosen, source, "chosen")
    rejected_m = parse_messages(rejected, source, "rejected")
    n = 0
    while n < min(len(chosen_m), len(rejected_m)) - 1 and chosen_m[n] == rejected_m[n]:
        n += 1
    if n == 0:
        raise DataError(f"{source}: 'chosen' and 'rejected' conversations share no prompt messages")
    return prompt_messages(chosen_m[:n], source, "chosen"), chosen_m[n:], rejected_m[n:]


def parse_ranks(ranking: Any, k: int, source: Source, ties: TiePolicy = "error") -> list[int]:
    """Turn ``ranking`` (indices into the K completions, best first) into a rank per completion.

    An entry may be a list of indices: a tie group (allowed with ``ties="drop"``). Every index 0..K-1 must appear
    exactly once. Returns ``ranks[i]``, the rank of completion ``i`` (0 = best).
    """
    if not isinstance(ranking, list) or not ranking:
        raise DataError(f"{source}: 'ranking' must be a non-empty list of completion indices, best first")
    groups = [entry if isinstance(entry, list) else [entry] for entry in ranking]
    flat = [i for group in groups for i in group]
    problems = []
    if any(not isinstance(i, int) or isinstance(i, bool) for i in flat):
        raise DataError(f"{source}: 'ranking' entries must be integer indices (or lists of them for ties)")
    if len(flat) != k:
        problems.append(f"'ranking' has {len(flat)} indices but there are K = {k} completions")
    out_of_range = sorted({i for i in flat if not 0 <= i < k})
    if out_of_range:
        problems.append(f"'ranking' holds {out_of_range}, not indices of the {k} completions (0..{k - 1})")
    repeated = sorted({i for i in flat if flat.count(i) > 1})
    if repeated:
        problems.append(f"'ranking' repeats index {repeated}")
    missing = sorted(set(range(k)) - set(flat))
    if missing:
        problems.append(f"'ranking' misses index {missing}")
    if problems:
        raise DataError(f"{source}: " + "; ".join(problems))
    tied = [group for group in groups if len(group) > 1]
    if tied and ties == "error":
        raise DataError(
            f"{source}: 'ranking' has ties {tied}; set the tie policy to 'drop' (--data.ties=drop) to keep the "
            "record with tied completions unpaired"
        )
    if len(groups) < 2:
        raise DataError(f"{source}: every completion is tied: the ranking orders no pair")
    ranks = [0] * k
    for rank, group in enumerate(groups):
        for i in group:
            ranks[i] = rank
    return ranks


def parse_ranking_record(record: Any, source: Source, ties: TiePolicy = "error") -> RankingExample:
    """Turn one raw preference record into a :class:`RankingExample`.

    Formats: ``{"prompt", "chosen", "rejected"}`` (K = 2); hh-rlhf ``{"chosen", "rejected"}`` full dialogues
    (prompt = the common prefix through the last ``"\\n\\nAssistant:"``); ``{"prompt", "completions", "ranking"}``
    (indices best first; a nested list is a tie group). ``prompt`` may be a string, an HH dialogue string or a list
    of messages (``messages`` is accepted as its name); ``chosen`` and ``rejected`` may also be message lists
    (a one-message assistant answer after ``prompt``, or full conversations sharing the prompt messages).
    """
    if not isinstance(record, dict):
        raise DataError(f"{source}: a record must be a JSON object, got {type(record).__name__}")
    prompt_key = "prompt" if "prompt" in record else "messages" if "messages" in record else None
    if "completions" in record or "ranking" in record:
        if prompt_key is None:
            raise DataError(f"{source}: a ranking record needs 'prompt' (keys: {sorted(record)})")
        prompt = prompt_messages(record[prompt_key], source, prompt_key)
        values = record.get("completions")
        if not isinstance(values, list):
            raise DataError(f"{source}: 'completions' must be a list of K >= 2 strings")
        if len(values) < 2:
            raise DataError(f"{source}: K = {len(values)} completion(s); a ranking needs K >= 2")
        completions = [_completion_text(v, source, f"completions[{i}]") for i, v in enumerate(values)]
        ranks = parse_ranks(record.get("ranking"), len(completions), source, ties)
    elif "chosen" in record and "rejected" in record:
        chosen, rejected = record["chosen"], record["rejected"]
        hh_dialogues = prompt_key is None and isinstance(chosen, str) and isinstance(rejected, str)
        if prompt_key is not None:
            prompt = prompt_messages(record[prompt_key], source, prompt_key)
        elif hh_dialogues:
            prompt, chosen, rejected = split_hh_pair(chosen, rejected, source)
        elif isinstance(chosen, list) and isinstance(rejected, list):
            prompt, chosen, rejected = _split_message_pair(chosen, rejected, source)
        else:
            raise DataError(f"{source}: without 'prompt', 'chosen' and 'rejected' must be full dialogues")
        completions = [
            _completion_text(chosen, source, "chosen", allow_empty=hh_dialogues),
            _completion_text(rejected, source, "rejected", allow_empty=hh_dialogues),
        ]
        ranks = [0, 1]
    else:
        raise DataError(
            f"{source}: unknown preference record with keys {sorted(record)}; expected 'prompt'+'chosen'+'rejected', "
            "hh-rlhf 'chosen'+'rejected' dialogues, or 'prompt'+'completions'+'ranking'"
        )
    seen: dict[str, int] = {}
    for i, text in enumerate(completions):
        if text in seen:
            raise DataError(
                f"{source}: completions {seen[text]} and {i} are the same string; a ranking needs distinct ones"
            )
        seen[text] = i
    return RankingExample(prompt, completions, ranks, source)
