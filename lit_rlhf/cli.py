"""``lit-rlhf``: one LightningCLI for every stage.

    lit-rlhf fit -c configs/sft/tiny.yaml                 # a stage, from YAML
    lit-rlhf fit -c configs/sft/tiny.yaml --print_config  # the full, re-runnable config
    lit-rlhf fit --model.help SFTModule                   # every option of a module, explained

The model and data classes are chosen in YAML (``class_path``); ``--trainer.*`` flags choose devices, strategy,
precision and logger. Stage-independent subcommands (``pipeline``, ``evaluate``) are methods of
:class:`LitRLHFTrainer`.

A shipped config's top-level ``world:`` section (:class:`WorldSection`) makes the instruction world its default data:
without ``--data.train_files`` the CLI builds the world and fills in its files; with them, the world plays no part.
The stages and DataModules below know nothing of the world: this module (above the world) is where they meet.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import json
import logging
import os
import re
import sys
import textwrap
from argparse import ArgumentError, _SubParsersAction
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from filelock import FileLock
from jsonargparse import ArgumentParser, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lit_rlhf.data.records import DataError
from lit_rlhf.pipeline import pipeline_command
from lit_rlhf.stage_cli import StageCLI, StageTrainer
from lit_rlhf.world import build_world
from lit_rlhf.world.rankings import write_world_rankings

log = logging.getLogger(__name__)
_DESCRIPTION = __doc__.split("\n\n")[0]


class LitRLHFTrainer(StageTrainer):
    """lit_rlhf's Trainer with every ``lit-rlhf`` subcommand: Lightning's, ``evaluate`` and ``pipeline``."""

    pipeline = pipeline_command


@dataclass
class WorldSection:
    """The instruction world as a config's embedded data source: the top-level ``world:`` section.

    It is used only when the config names no training data (no ``--data.train_files``): then the world is built
    and ``defaults`` name its files. Given ``--data.train_files``, the section is ignored entirely: nothing is
    built and nothing of ``defaults`` applies (no validation files, tokenizer or callback files from the world).

    Args:
        dir: The world directory; built there first (seeded, atomic, skipped when built with these parameters).
        seed: The world's seed.
        rankings: Also write the simulated labelers' K-wise rankings (``<dir>/rm/train.jsonl``, ``rm/val.jsonl``),
            the reward model's data.
        build: Further arguments of ``lit_rlhf.world.build_world`` (``n_train``, ``kinds``, ``demo_error_rate``, ...).
        defaults: Config values that name the world's files, in the config's own layout (``model``, ``data``,
            ``trainer``); the config file and the command line override them.
    """

    dir: str
    seed: int = 0
    rankings: bool = False
    build: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = [name for name in inspect.signature(build_world).parameters if name not in ("out_dir", "seed")]
        unknown = sorted(set(self.build) - set(known))
        if unknown:
            raise ValueError(f"--world.build: unknown world parameters {unknown}; use --world.seed and {known}")


def _plain(value: Any) -> Any:
    """``value`` with every jsonargparse Namespace in it turned into a dict."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def world_in_use(config: Namespace) -> WorldSection | None:
    """The config's ``world`` section when it applies, that is when the config names no ``data.init_args.train_files``."""
    section = config.get("world")
    train_files = config.get("data.init_args.train_files") if config.get("data") is not None else None
    if section is None or train_files is not None:
        return None
    return WorldSection(**_plain(section))


def world_defaults_config(world: WorldSection, config: Namespace) -> dict[str, Any]:
    """``world.defaults`` as a config to parse before the user's: with the class of the model and the DataModule the
    user chose, so that their own ``init_args`` merge over the world's."""
    defaults = copy.deepcopy(world.defaults)
    for key in ("model", "data"):
        class_path = config.get(f"{key}.class_path") if config.get(key) is not None else None
        if isinstance(defaults.get(key), dict) and "class_path" not in defaults[key] and class_path:
            defaults[key] = {"class_path": class_path, **defaults[key]}
    return defaults


def prepare_world(world: WorldSection) -> None:
    """Build the world (and its rankings) unless already built.

    Every process of a run gets here before it reads a file: torchrun and SLURM start them together, and Lightning's
    launcher re-runs the command line in the other ranks. The first to take the lock builds; the others wait, then
    find the world built (a build is atomic, and skipped when the directory holds one with the same parameters).
    """
    root = Path(world.dir)
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.with_name(root.name + ".lock"))):
        build_world(root, seed=world.seed, **world.build)
        if world.rankings:
            write_world_rankings(root, seed=world.seed)


class LitRLHFCLI(StageCLI):
    """The stage CLI plus the ``pipeline`` subcommand and the ``world:`` section of the shipped configs."""

    MODEL_FREE_SUBCOMMANDS: dict[str, set[str]] = {
        **StageCLI.MODEL_FREE_SUBCOMMANDS,
        "pipeline": {"model", "datamodule"},
    }
    DESCRIPTION = _DESCRIPTION
    world: WorldSection | None = None
    """The world this run reads, None when its data are the user's."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument(
            "--world",
            type=WorldSection | None,
            default=None,
            help="The instruction world, used only when no --data.train_files is given (see lit_rlhf.cli.WorldSection)",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str] | None) -> None:
        super().parse_arguments(parser, args)
        if self.config.get("subcommand") in self.MODEL_FREE_SUBCOMMANDS:
            return  # `pipeline` has a world: section of its own (build_world's options); `evaluate` none
        self.world = world_in_use(self.subcommand_config())
        if self.world is None or not self.world.defaults:
            return
        # Parse again with the world's defaults as the first config file: the user's config files and flags,
        # parsed after it, override them.
        if isinstance(args, dict | Namespace):
            raise ValueError("a config with a world: section is parsed from command-line arguments, not from a dict")
        args = list(sys.argv[1:] if args is None else args)
        subcommand = self.config.get("subcommand")
        at = args.index(subcommand) + 1 if subcommand else 0
        args[at:at] = ["--config", json.dumps(world_defaults_config(self.world, self.subcommand_config()))]
        self.config = parser.parse_args(args)

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        if self.subcommand in self.MODEL_FREE_SUBCOMMANDS:
            return
        config = self.subcommand_config()
        if "world" in config:
            config["world"] = None  # consumed here; the saved config names the world's files themselves
        if self.world is not None:
            log.info("no --data.train_files: reading the instruction world in %s", self.world.dir)
            prepare_world(self.world)


def build_cli(args: list[str] | None = None, run: bool = True) -> LitRLHFCLI:
    """The ``lit-rlhf`` CLI; ``run=False`` only instantiates model, data and trainer (benchmarks, notebooks)."""
    return LitRLHFCLI.build(LitRLHFTrainer, args, run)


# --------------------------------------------------------------------------- errors for people

DEBUG_ENV = "LIT_RLHF_DEBUG"
"""Set to 1 (or pass ``--debug``) to see the traceback of a data, option or path error instead of one line."""
_PACKAGE_DIR = Path(__file__).resolve().parent


class CommandLineError(ArgumentError):
    """A parse error, with the parser that found it (its flags are the candidates for "did you mean")."""

    def __init__(self, message: str, parser: ArgumentParser) -> None:
        super().__init__(None, message)
        self.parser = parser


class _RaisingParser(LightningArgumentParser):
    """Raises :class:`CommandLineError` where jsonargparse would print its usage and exit 2: main() reports it."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # a parser jsonargparse made to raise: as it would
            super().error(message, ex)
        raise CommandLineError(message, getattr(ex, "subcommand_parser", None) or self) from ex


class _CommandLineCLI(LitRLHFCLI):
    """``lit-rlhf`` as :func:`main` runs it: parse errors raise instead of printing the usage of every option."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["parser_class"] = _RaisingParser
        super().__init__(*args, **kwargs)


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


def _take_debug_flag(args: list[str] | None) -> tuple[list[str] | None, bool]:
    """``args`` without ``--debug``, and whether tracebacks are wanted (``--debug`` or ``LIT_RLHF_DEBUG=1``)."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if args is not None:
        return [a for a in args if a != "--debug"], debug or "--debug" in args
    if "--debug" in sys.argv:
        sys.argv = [a for a in sys.argv if a != "--debug"]
        os.environ[DEBUG_ENV] = "1"  # the ranks Lightning's launcher starts re-run sys.argv: this reaches them
        debug = True
    return None, debug


def main(args: list[str] | None = None) -> None:
    """Run ``lit-rlhf`` on ``args`` (default: the command line).

    Bad data, a bad option or a missing path prints ``lit-rlhf: error: <what>`` (with the file:line, the flag or the
    path) and exits 2, with no traceback unless ``--debug`` is given or ``LIT_RLHF_DEBUG=1`` is set. Every rank of a
    multi-process run does the same.
    """
    args, debug = _take_debug_flag(args)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        _CommandLineCLI.build(LitRLHFTrainer, args)
    except Exception as error:
        message = None if debug else user_error_message(error)
        if message is None:
            raise
        rank = getattr(rank_zero_only, "rank", 0)
        print(f"lit-rlhf: error: {f'[rank {rank}] ' if rank else ''}{message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
