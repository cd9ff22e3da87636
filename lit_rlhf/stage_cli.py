"""The LightningCLI of one stage: ``fit|validate|test|predict`` (and ``evaluate``) from YAML, with lit_rlhf's defaults.

It knows the stages, their DataModules and the evaluation, nothing above them: the pipeline runs each of its stages
through it, and ``lit-rlhf`` (:mod:`lit_rlhf.cli`) extends it with the ``pipeline`` subcommand and the shipped
configs' embedded default data.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from jsonargparse import lazy_instance
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

# Importing the modules registers them as choices for --model and --data.
from lit_rlhf import data as _data  # noqa: F401
from lit_rlhf import distributed as _distributed  # noqa: F401  (registers --trainer.strategy=fsdp2)
from lit_rlhf.data.modules import PreferenceDataModule, SFTDataModule  # noqa: F401
from lit_rlhf.data.prompts import PromptDataModule  # noqa: F401
from lit_rlhf.distributed import strategy_problem
from lit_rlhf.dpo import DPOModule  # noqa: F401
from lit_rlhf.evaluation.command import evaluate_command
from lit_rlhf.loggers import WandbLogger
from lit_rlhf.ppo.module import PPOModule  # noqa: F401
from lit_rlhf.reward import RewardModule  # noqa: F401
from lit_rlhf.sft import SFTModule  # noqa: F401
from lit_rlhf.trainer import Trainer


class StageTrainer(Trainer):
    """lit_rlhf's Trainer; subcommands beyond Lightning's are its methods, so LightningCLI can dispatch them."""

    evaluate = evaluate_command


def _tokenizer_of(model_name_or_path: str | None, tokenizer_name_or_path: str | None) -> str | None:
    return tokenizer_name_or_path or model_name_or_path


class StageCLI(LightningCLI):
    """LightningCLI with lit_rlhf's defaults: W&B logging (offline without a key) and linked tokenizer options."""

    MODEL_FREE_SUBCOMMANDS: dict[str, set[str]] = {"evaluate": {"model", "datamodule"}}
    """Extra subcommands (methods of the trainer class) with the arguments they skip; they take no --model/--data."""
    DESCRIPTION = "One Lightning stage of lit_rlhf (SFT, reward model, PPO) or its evaluation, from YAML."
    """The first line of ``--help``."""

    @classmethod
    def subcommands(cls) -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), **cls.MODEL_FREE_SUBCOMMANDS}

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs) -> LightningArgumentParser:
        if subcommand not in self.MODEL_FREE_SUBCOMMANDS:
            return super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        # Only --seed_everything, --trainer.* (logger, accelerator) and the method's own arguments.
        parser = self.init_parser(**kwargs)
        self.add_default_arguments_to_parser(parser)
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        added = parser.add_method_arguments(klass, subcommand, skip=set(self.subcommands()[subcommand]))
        self._subcommand_method_arguments[subcommand] = added
        return parser

    def _set_seed(self) -> None:
        # The model-free subcommands (pipeline, evaluate, ...) take a --seed of their own and seed what they run
        # (the pipeline passes it to every stage as seed_everything). LightningCLI's default seed_everything=true
        # seeds them with 0 and prints "No seed found, seed set to 0": the same seed here, without the message (the
        # seed itself stays, so every earlier figure reproduces). A stage's own run keeps Lightning's behaviour.
        config = self.subcommand_config()
        if self.subcommand in self.MODEL_FREE_SUBCOMMANDS and config.get("seed_everything") is True:
            config["seed_everything"] = seed_everything(0, workers=True, verbose=False)
            return
        super()._set_seed()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The DataModule encodes with the model's tokenizer: given once, on the model (link_arguments).
        parser.link_arguments(
            ("model.init_args.model_name_or_path", "model.init_args.tokenizer_name_or_path"),
            "data.init_args.tokenizer_name_or_path",
            compute_fn=_tokenizer_of,
        )

    def subcommand_config(self) -> Any:
        """The parsed config of the subcommand being run (the whole config when there is none, ``run=False``)."""
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def before_instantiate_classes(self) -> None:
        trainer = self.subcommand_config().get("trainer")
        if trainer is None:
            return
        # Before Lightning builds the Trainer: on a CPU it would refuse `fsdp` or `deepspeed` with its own message.
        strategy = trainer.get("strategy")
        problem = strategy_problem(strategy) if isinstance(strategy, str) else None
        if problem is not None:
            raise ValueError(problem)
        root = trainer.get("default_root_dir") or os.getcwd()
        logger = trainer.get("logger")
        loggers = logger if isinstance(logger, list) else [logger]
        for lg in loggers:
            # Our WandbLogger writes under the run's root unless told otherwise.
            if getattr(lg, "class_path", None) == "lit_rlhf.loggers.WandbLogger" and not lg.init_args.get("save_dir"):
                lg.init_args.save_dir = str(root)

    @classmethod
    def build(cls, trainer_class: type[L.Trainer], args: list[str] | None = None, run: bool = True) -> StageCLI:
        """Parse ``args`` (default: the command line), instantiate model, data and trainer, and run the subcommand;
        ``run=False`` takes no subcommand and only instantiates (the pipeline, benchmarks, notebooks)."""
        return cls(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_class=trainer_class,
            trainer_defaults={"logger": lazy_instance(WandbLogger)},
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,  # each stage builds its own optimiser and schedule (--optimizer is unused)
            parser_kwargs={"description": cls.DESCRIPTION},
            args=args,
            run=run,
        )


def build_stage_cli(args: list[str] | None = None, run: bool = True) -> StageCLI:
    """A stage's CLI: ``fit|validate|test|predict|evaluate`` on ``args``; ``run=False`` only instantiates."""
    return StageCLI.build(StageTrainer, args, run)
