"""Read record files and validate records; every error names the file and line (or record).

Sources: JSONL (one object a line), JSON (a list of objects, or ``{"data": [...]}``), Parquet, CSV, and a directory
written by ``datasets.Dataset.save_to_disk``. ``files`` may be a path, a glob or a list of them, as in
``datasets.load_dataset(data_files=...)``.

Record formats (see DESIGN.md):

* SFT: ``{"prompt", "completion"}``; ``{"messages": [{"role", "content"}, ...]}`` whose last message is the
  assistant's answer; Alpaca ``{"instruction", "input", "output"}``.
"""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

Message = dict[str, str]
"""A chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""

ROLES = ("system", "user", "assistant")
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
        prompt: The messages before the answer; the last one has role ``user``.
        completion: The assistant's answer (non-empty).
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


def read_records(files: str | list[str]) -> Iterator[tuple[Any, Source]]:
    """Yield ``(raw_record, source)`` from every file in ``files``; a file with no records is an error."""
    for path in expand_files(files):
        n = 0
        for n, item in enumerate(_read_one(path), start=1):  # noqa: B007
            yield item
        if n == 0:
            raise DataError(f"{path}: file has no records")


def _read_one(path: Path) -> Iterator[tuple[Any, Source]]:
    if path.is_dir():
        yield from _read_saved_dataset(path)
        return
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _read_jsonl(path)
    elif suffix == ".json":
        yield from _read_json(path)
    elif suffix == ".parquet":
        yield from _read_parquet(path)
    elif suffix in (".csv", ".tsv"):
        yield from _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        raise DataError(f"{path}: unknown file type {suffix!r}; use .jsonl, .json, .parquet, .csv or a saved dataset")


def _read_jsonl(path: Path) -> Iterator[tuple[Any, Source]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
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


def parse_sft_record(record: Any, source: Source) -> SFTExample:
    """Turn one raw SFT record (any of the formats in the module docstring) into an :class:`SFTExample`."""
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
        prompt = require_str(record, "prompt", source)
        completion = require_str(record, "completion", source)
        return SFTExample([{"role": "user", "content": prompt}], completion, source)
    raise DataError(
        f"{source}: unknown SFT record with keys {sorted(record)}; expected 'prompt'+'completion', 'messages', "
        "or 'instruction'+'input'+'output'"
    )


T = TypeVar("T")


def load_records(
    files: str | list[str], parse: Callable[[Any, Source], T], on_error: OnError = "error"
) -> tuple[list[T], list[str]]:
    """Read and parse every record of ``files``.

    Args:
        files: A path, glob or list of them.
        parse: Turns a raw record into a typed one, raising :class:`DataError` for a bad record.
        on_error: ``"error"`` stops with every bad record listed (up to 10 shown); ``"skip"`` drops them.

    Returns:
        The parsed records and the messages of the skipped ones.
    """
    parsed: list[T] = []
    errors: list[str] = []
    for raw, source in read_records(files):
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
