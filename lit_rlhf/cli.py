"""``lit-rlhf``: one LightningCLI for every stage; ``lit-rlhf label --help``: the labeling app for people.

    lit-rlhf fit -c configs/sft/tiny.yaml                 # a stage, from YAML
    lit-rlhf fit -c configs/sft/tiny.yaml --print_config  # the full, re-runnable config
    lit-rlhf fit --model.help SFTModule                   # every option of a module, explained

The model and data classes are chosen in YAML (``class_path``); ``--trainer.*`` flags choose devices, strategy,
precision and logger. Stage-independent subcommands (``pipeline``, ``evaluate``, ``overoptimization``) are methods of
:class:`LitRLHFTrainer`.

A shipped config's top-level ``world:`` section (:class:`WorldSection`) makes the instruction world its default data:
without ``--data.train_files`` the CLI builds the world and fills in its files; with them, the world plays no part.
The stages and DataModules below know nothing of the world: this module (above the world) is where they meet.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lit_rlhf.cli_errors import RaisingParser, take_debug_flag, user_error_message
from lit_rlhf.evaluation.command import overoptimization_command
from lit_rlhf.pipeline import pipeline_command
from lit_rlhf.stage_cli import StageCLI, StageTrainer
from lit_rlhf.world import build_world
from lit_rlhf.world.rankings import write_world_rankings

log = logging.getLogger(__name__)
_DESCRIPTION = __doc__.split("\n\n")[0]


class LitRLHFTrainer(StageTrainer):
    """lit_rlhf's Trainer with every ``lit-rlhf`` subcommand: Lightning's, ``evaluate``, ``overoptimization`` and
    ``pipeline``."""

    pipeline = pipeline_command
    overoptimization = overoptimization_command


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


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of the values in a nested dict (a list or a scalar is a value), ``class_path`` left out."""
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict):
            keys += _leaves(value, f"{prefix}{key}.")
        elif key != "class_path":
            keys.append(prefix + key)
    return keys


def world_fill_config(defaults: dict[str, Any], config: Namespace) -> dict[str, Any] | None:
    """The part of ``defaults`` (:func:`world_defaults_config`) whose values ``config`` leaves at None, as a config
    to parse last; None when there is none.

    The world's defaults are parsed first, so a config or flag that names a value overrides them; but a config that
    writes ``train_files: null`` (what ``--print_config`` prints for an option nobody set) would override them with
    null too. A None means "not given" wherever it comes from: the world's value fills it.
    """
    unset = [key for key in _leaves(defaults) if config.get(key) is None]
    if not unset:
        return None
    fill: dict[str, Any] = {}
    for key in unset:
        *parents, name = key.split(".")
        source, target = defaults, fill
        for parent in parents:
            source = source[parent]
            target = target.setdefault(parent, {"class_path": source["class_path"]} if "class_path" in source else {})
        target[name] = copy.deepcopy(source[name])
    return fill


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
        "overoptimization": {"model", "datamodule"},
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
            return  # `pipeline` has a world: section of its own (build_world's options); `evaluate` and others none
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
        defaults = world_defaults_config(self.world, self.subcommand_config())
        args[at:at] = ["--config", json.dumps(defaults)]
        self.config = parser.parse_args(args)
        # What is still None (absent, or an explicit null as --print_config writes it) takes the world's value.
        fill = world_fill_config(defaults, self.subcommand_config())
        if fill is not None:
            self.config = parser.parse_args([*args, "--config", json.dumps(fill)])

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


class _CommandLineCLI(LitRLHFCLI):
    """``lit-rlhf`` as :func:`main` runs it: parse errors raise instead of printing the usage of every option."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["parser_class"] = RaisingParser
        super().__init__(*args, **kwargs)


def main(args: list[str] | None = None) -> None:
    """Run ``lit-rlhf`` on ``args`` (default: the command line).

    Bad data, a bad option or a missing path prints ``lit-rlhf: error: <what>`` (with the file:line, the flag or the
    path) and exits 2, with no traceback unless ``--debug`` is given or ``LIT_RLHF_DEBUG=1`` is set. Every rank of a
    multi-process run does the same.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["label"]:  # the labeling app: argparse, not LightningCLI (it trains nothing)
        from lit_rlhf.label.cli import main as label_main

        return label_main(argv[1:])
    args, debug = take_debug_flag(args)
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
