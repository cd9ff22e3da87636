"""Errors for people: what ``lit-rlhf`` prints for bad data, a bad option or a missing path, in a line or a few.

jsonargparse's parse errors lose their dump of union subtypes and gain "did you mean" (:func:`parse_error_message`);
our own errors are unwrapped from the exceptions jsonargparse and Lightning put around them
(:func:`user_error_message`). Anything else is a bug, and keeps its traceback.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
import textwrap
from argparse import ArgumentError, _SubParsersAction
from pathlib import Path
from typing import NoReturn

from jsonargparse import ArgumentParser
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser

from lit_rlhf.data.records import DataError

DEBUG_ENV = "LIT_RLHF_DEBUG"
"""Set to 1 (or pass ``--debug``) to see the traceback of a data, option or path error instead of one line."""
_PACKAGE_DIR = Path(__file__).resolve().parent  # lit_rlhf/


class CommandLineError(ArgumentError):
    """A parse error, with the parser that found it (its flags are the candidates for "did you mean")."""

    def __init__(self, message: str, parser: ArgumentParser) -> None:
        super().__init__(None, message)
        self.parser = parser


class RaisingParser(LightningArgumentParser):
    """Raises :class:`CommandLineError` where jsonargparse would print its usage and exit 2: main() reports it."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # a parser jsonargparse made to raise: as it would
            super().error(message, ex)
        raise CommandLineError(message, getattr(ex, "subcommand_parser", None) or self) from ex


def user_error_message(error: BaseException) -> str | None:
    """What to tell the user about ``error`` in a line or a few: a parse error, bad data, a missing path, a bad option
    (a ValueError raised by lit_rlhf, or Lightning's MisconfigurationException); None for anything else, a bug whose
    traceback is wanted. An error jsonargparse wraps while instantiating a class is unwrapped."""
    if isinstance(error, CommandLineError):
        return parse_error_message(str(error), error.parser)
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, DataError | FileNotFoundError | MisconfigurationException):
            return str(cause)
        if isinstance(cause, ValueError) and _raised_by_lit_rlhf(cause):
            return str(cause)
        cause = cause.__cause__
    return None


def _raised_by_lit_rlhf(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)


def parse_error_message(message: str, parser: ArgumentParser) -> str:
    """jsonargparse's parse error without the union dump: the flag, what is wrong and the nearest known flag."""
    unrecognized = re.search(r"unrecognized arguments: (.*)", message)
    not_accepted = re.search(r"does not accept option '([^']+)'", message)  # a key of a config file
    flags = [a.split("=")[0] for a in unrecognized[1].split() if a.startswith("--")] if unrecognized else []
    flags += [f"--{not_accepted[1]}"] if not_accepted else []
    if flags:
        return "; ".join(unknown_flag(flag, parser_flags(parser)) for flag in flags)
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        close = difflib.get_close_matches(choice[1], re.findall(r"'([^']*)'", choice[2]), n=1)
        return f"{message}; did you mean {close[0]}?" if close else message
    keyed = re.match(r'Parser key "([^"]+)":\s*(.*)', message, re.S)
    if keyed is None:
        return _without_dump(message)
    return _value_error("-c/--config" if keyed[1] == "config" else f"--{keyed[1]}", keyed[2])


def _value_error(flag: str, text: str) -> str:
    """What jsonargparse found wrong with the value of ``flag``, following nested classes down to the option."""
    problem = _class_problem(text)
    if problem is None:
        return f"{flag}: {_expected(text)}"
    class_path, inner = problem
    option = re.match(r"Option '([^']+)' is not accepted", inner)
    if option:
        known = [k for k in class_flags(class_path, flag.removeprefix("--")) if k.startswith(f"{flag}.")]
        return unknown_flag(f"{flag}.{option[1]}", known, f" ({class_path} has no such option)")
    nested = re.match(r'Parser key "([^"]+)":\s*(.*)', inner, re.S)
    if nested:
        return _value_error(f"{flag}.{nested[1]}", nested[2])
    return f"{flag}: {class_path}: {_without_dump(inner)}"


def _class_problem(text: str) -> tuple[str, str] | None:
    """The class path and the indented block under jsonargparse's first ``Problem with given class_path '...':``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.search(r"Problem with given class_path '([^']+)':", line)
        if match is None:
            continue
        indent = len(line) - len(line.lstrip())
        block = []
        for below in lines[i + 1 :]:
            if below.strip() and len(below) - len(below.lstrip()) <= indent:
                break
            block.append(below)
        return match[1], textwrap.dedent("\n".join(block)).strip()
    return None


def unknown_flag(flag: str, known: list[str], detail: str = "") -> str:
    """``unknown option --x.y`` and the closest of ``known``, matched whole or by its first part (``--modle.x``)."""
    text = f"unknown option {flag}{detail}"
    head = flag.split(".")[0]
    heads = {k.split(".")[0] for k in known}
    if head in heads:
        close = difflib.get_close_matches(flag, known, n=1)
    else:  # a misspelt group: --modle.x means --model.x
        close = [h + flag[len(head) :] for h in difflib.get_close_matches(head, sorted(heads), n=1)]
    return f"{text}; did you mean {close[0]}?" if close else text


def parser_flags(parser: ArgumentParser) -> list[str]:
    """Every ``--flag`` of ``parser`` and of its subcommands' parsers."""
    flags = []
    for action in parser._actions:
        flags += [s for s in action.option_strings if s.startswith("--")]
        if isinstance(action, _SubParsersAction):
            flags += [f for sub in action.choices.values() for f in parser_flags(sub)]
    return list(dict.fromkeys(flags))


def class_flags(class_path: str, key: str) -> list[str]:
    """The ``--key.*`` flags of the class at ``class_path`` (its own and those it passes on with ``**kwargs``)."""
    module, _, name = class_path.rpartition(".")
    parser = LightningArgumentParser(exit_on_error=False)
    try:
        parser.add_class_arguments(getattr(importlib.import_module(module), name), key, fail_untyped=False)
    except (ImportError, AttributeError, TypeError, ValueError):  # no suggestion then; the error is still reported
        return []
    return parser_flags(parser)


def _expected(text: str) -> str:
    """``Expected a <class 'float'>. Got value: abc`` (or a union of them) as ``expected float, got 'abc'``."""
    types = [_type_name(t) for t in re.findall(r"Expected an? (.+?)(?:\. Got value:.*)?$", text, re.M)]
    value = re.search(r"(?:Got value|Given value): (.*)", text)
    if not types or value is None:
        return _without_dump(text)
    return f"expected {' or '.join(dict.fromkeys(types))}, got {value[1]!r}"


def _type_name(hint: str) -> str:
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", hint)
    if literal:
        return f"one of {literal[1]}"
    name = re.fullmatch(r"<class '(?:\w+\.)*(\w+)'>", hint)
    return ("None" if name[1] == "NoneType" else name[1]) if name else hint


def _without_dump(text: str) -> str:
    """``text`` without jsonargparse's lines about union subtypes and the given value."""
    drop = ("Does not validate against", "Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType'>")
    lines = [line for line in text.strip().splitlines() if not line.strip().startswith(drop)]
    return textwrap.dedent("\n".join(lines)).strip()


def take_debug_flag(args: list[str] | None) -> tuple[list[str] | None, bool]:
    """``args`` without ``--debug``, and whether tracebacks are wanted (``--debug`` or ``LIT_RLHF_DEBUG=1``)."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if args is not None:
        return [a for a in args if a != "--debug"], debug or "--debug" in args
    if "--debug" in sys.argv:
        sys.argv = [a for a in sys.argv if a != "--debug"]
        os.environ[DEBUG_ENV] = "1"  # the ranks Lightning's launcher starts re-run sys.argv: this reaches them
        debug = True
    return None, debug
