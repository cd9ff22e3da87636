"""``lit-rlhf pipeline``: the whole InstructGPT recipe, one stage after another, on the instruction world or on your
model and files.

    world:  world -> pretrain -> sft -> comparisons -> rm -> [dpo] -> ppo, ppo_ptx, [rloo], [grpo] -> base_prompted
            -> evaluate -> [overoptimization]
    data:   data -> [pretrain] -> sft -> rm, gold_rm -> [dpo] -> ppo[, ppo_ptx], [rloo], [grpo] -> evaluate
            -> [overoptimization]

DPO (``dpo:``, optional) trains the SFT policy directly on the comparisons the RM learns from; the evaluation then
judges it beside PPO (and a best-of-n policy, when the evaluate config names one) on the same prompts. RLOO and GRPO
(``rloo:``, ``grpo:``, optional) are PPO's stage with a critic-free estimator, wired as PPO is. The
over-optimisation curve (``overoptimization:``, optional; :mod:`lit_rlhf.evaluation.overoptimization`) measures gold
and proxy scores against sqrt(KL) for best-of-n of SFT and for PPO's exports along training
(``--model.export_every_n_iterations`` in the PPO stage); gold is the world's hidden quality, or the judge on your
data.

Every training stage runs the stage's own YAML (``configs/<stage>/<size>.yaml``, the file ``lit-rlhf fit -c`` takes)
with the same LightningModule and DataModule, in this process. The pipeline only merges the pipeline config's
``overrides`` into it and wires the paths: every file a stage reads is named explicitly (the world's files, or those
the data step wrote from yours), the previous stage's export, ``default_root_dir`` and loggers; a stage config's
``world:`` section (the CLI's default data) plays no part. The merged file is written to
``runs/<name>/configs/<stage>.yaml``, so ``lit-rlhf fit -c`` on it reruns a stage alone. Outputs go to
``runs/<name>/<stage>/`` (Hugging Face exports in ``<stage>/hf``, CSV metrics in ``<stage>/metrics.csv``, the
evaluation in ``evaluate/results.json``).

A stage whose complete output exists is skipped (an export's ``lit_rlhf.json`` is written last; the comparisons'
``stats.json``, the data step's ``split.json`` and the evaluation's ``results.json`` likewise), unless a stage it
reads from was run again in this invocation. So a rerun after an interruption continues with the interrupted stage.
"""

from __future__ import annotations

import copy
import gc
import json
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lit_rlhf.models import MARKER_FILE, atomic_directory, read_export_metadata
from lit_rlhf.pipeline_data import DataFiles, PipelineData, eval_prompt_files, prepare_data, split_lines

STAGES = (
    "world", "pretrain", "sft", "comparisons", "rm", "dpo", "ppo", "ppo_ptx", "rloo", "grpo", "base_prompted",
    "evaluate", "overoptimization",
)  # fmt: skip
"""Every stage of the world pipeline, in the order they run."""

INPUTS: dict[str, tuple[str, ...]] = {
    "world": (),
    "pretrain": ("world",),
    "sft": ("world", "pretrain"),
    "comparisons": ("world", "sft"),
    "rm": ("world", "sft", "comparisons"),
    "dpo": ("world", "sft", "comparisons"),  # only with a dpo: stage
    "ppo": ("world", "sft", "rm"),
    "ppo_ptx": ("world", "sft", "rm"),
    "rloo": ("world", "sft", "rm"),  # only with a rloo: stage
    "grpo": ("world", "sft", "rm"),  # only with a grpo: stage
    "base_prompted": ("world", "pretrain"),
    "evaluate": ("world", "pretrain", "base_prompted", "sft", "rm", "dpo", "ppo", "ppo_ptx", "rloo", "grpo"),
    "overoptimization": ("world", "sft", "rm", "ppo"),  # only with an overoptimization: stage
}
"""The stages whose outputs each world stage reads: when one of them runs again, so does the stage."""

OWN_DATA_INPUTS: dict[str, tuple[str, ...]] = {
    "data": (),
    "pretrain": ("data",),  # only without --model_name_or_path: a tokenizer and a base LM on your text
    "sft": ("data", "pretrain"),
    "rm": ("data", "sft"),
    "gold_rm": ("data", "sft"),  # only without --judge_model_path
    "dpo": ("data", "sft"),  # only with a dpo: stage; on the RM's half of the preferences
    "ppo": ("data", "sft", "rm"),
    "ppo_ptx": ("data", "sft", "rm"),  # only with --data.pretraining_files
    "rloo": ("data", "sft", "rm"),  # only with a rloo: stage
    "grpo": ("data", "sft", "rm"),  # only with a grpo: stage
    "evaluate": ("data", "sft", "rm", "gold_rm", "dpo", "ppo", "ppo_ptx", "rloo", "grpo"),
    "overoptimization": ("data", "sft", "rm", "gold_rm", "ppo"),  # only with an overoptimization: stage
}
"""The stages of the own-data pipeline, in order, and the stages each reads."""

STAGE_CONFIG_WORLD = "runs/world"
"""Where the stage configs expect the world; the world pipeline points every such path at its own world."""

PANEL_JUDGE = "lit_rlhf.world.labelers:panel_judge"
TRUE_QUALITY = "lit_rlhf.world.labelers:true_reward"
CRITIC_FREE_STAGES = ("rloo", "grpo")
"""RL stages with a critic-free estimator (PPOModule's ``advantage_estimator``): PPO's wiring, no value model."""
OPTIONAL_STAGES = ("dpo", *CRITIC_FREE_STAGES, "overoptimization")
"""Stages that run only when the pipeline config names them."""
POLICY_STAGES = ("sft", "dpo", "ppo", "ppo_ptx", *CRITIC_FREE_STAGES)
"""The trained policies the evaluation judges, each named for its stage (and so for its method)."""
WORLD_METRICS = "lit_rlhf.world.labelers:RESPONSE_METRICS"


@dataclass
class StageSpec:
    """One training or evaluation stage of the pipeline.

    Args:
        config: The stage's own YAML, the one its command takes (``lit-rlhf fit -c``, ``lit-rlhf evaluate -c``).
        overrides: Nested keys merged into that YAML before the pipeline wires the paths, e.g.
            ``{trainer: {max_steps: 300}}`` or ``{model: {learning_rate: 3e-5}}`` (into the model's ``init_args``,
            as ``--model.learning_rate`` does); a list replaces the list it meets.
    """

    config: str
    overrides: dict[str, Any] = field(default_factory=dict)


def without_stages(table: dict[str, tuple[str, ...]], absent: set[str]) -> dict[str, tuple[str, ...]]:
    """``table`` (stage -> the stages it reads) less the ``absent`` stages, as keys and as inputs."""
    return {s: tuple(i for i in inputs if i not in absent) for s, inputs in table.items() if s not in absent}


def starting_from(export: str | Path, **more: Any) -> dict[str, Any]:
    """The model options of a stage that starts from an earlier stage's ``export``: its weights and its tokenizer, not
    the stage config's scratch model; ``more`` options beside them."""
    return {"model_name_or_path": str(export), "tokenizer_name_or_path": str(export), "model_config": None, **more}


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in, recursively for mappings; lists and scalars are replaced (copies).

    Where ``base`` has a ``class_path`` and ``update`` names neither ``class_path`` nor ``init_args``, ``update``
    goes into ``init_args``, as ``--model.learning_rate`` does on the command line: ``{model: {learning_rate: 3e-5}}``
    overrides ``model.init_args.learning_rate``.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            if "class_path" in out[key] and not {"class_path", "init_args"} & value.keys():
                value = {"init_args": value}
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def replace_path_prefix(node: Any, old: str, new: str) -> Any:
    """Every string in ``node`` equal to ``old`` or starting with ``old + "/"`` with that prefix replaced by ``new``."""
    if isinstance(node, dict):
        return {k: replace_path_prefix(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [replace_path_prefix(v, old, new) for v in node]
    if isinstance(node, str) and (node == old or node.startswith(old + "/")):
        return new + node[len(old) :]
    return node


def paths_under(node: Any, prefix: str, at: str = "") -> list[str]:
    """The keys (dotted, ``[i]`` for list items) of the strings in ``node`` equal to ``prefix`` or under it."""
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in paths_under(v, prefix, f"{at}.{key}" if at else str(key))]
    if isinstance(node, list):
        return [k for i, v in enumerate(node) for k in paths_under(v, prefix, f"{at}[{i}]")]
    if isinstance(node, str) and (node == prefix or node.startswith(prefix + "/")):
        return [f"{at}: {node}"]
    return []


def without_world(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the instruction world as its default data source: no top-level ``world:`` section (which
    the CLI applies when no files are given) and no ``data.init_args.world_dir`` (configs from before that section).
    The pipeline names every file a stage reads itself."""
    config = {k: copy.deepcopy(v) for k, v in config.items() if k != "world"}
    init_args = (config.get("data") or {}).get("init_args")
    if isinstance(init_args, dict):
        init_args.pop("world_dir", None)
    return config


def world_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The values a stage config's ``world.defaults`` gives (callbacks on the world's held-out tasks, its tokenizer),
    in the config's own layout, with the classes the config chose; empty for a config without them."""
    defaults = copy.deepcopy(((config.get("world") or {}).get("defaults")) or {})
    for key in ("model", "data"):
        section, chosen = defaults.get(key), config.get(key) or {}
        if isinstance(section, dict) and "class_path" in chosen and not {"class_path", "init_args"} & section.keys():
            defaults[key] = {"init_args": section}
    return defaults


def few_shot_chat_template(examples: list[dict[str, str]]) -> str:
    """A chat template that puts ``examples`` (``{"prompt", "completion"}``) before the conversation, in the plain
    HH format of ``lit_rlhf.data.collate`` (the prompted-base baseline of InstructGPT's Figure 1)."""
    shots = "".join(f"\n\nHuman: {e['prompt']}\n\nAssistant: {e['completion']}" for e in examples)
    # Text goes through JSON-escaped string literals: HF renders templates with trim_blocks, which eats newlines
    # that follow a tag.
    return (
        "{{ " + json.dumps(shots) + " }}"
        "{% for m in messages %}"
        "{% if m['role'] == 'user' %}{{ '\\n\\nHuman: ' + m['content'] }}"
        "{% elif m['role'] == 'assistant' %}{{ '\\n\\nAssistant: ' + m['content'] }}"
        "{% else %}{{ '\\n\\nSystem: ' + m['content'] }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '\\n\\nAssistant:' }}{% endif %}"
    )


class Pipeline:
    """The stages of one pipeline run, where each writes, and the loop that runs them in order.

    Subclasses name their stages and what each reads (:attr:`inputs`, in running order) and give a ``run_<stage>``
    method per stage; see :func:`pipeline_command` for the options.
    """

    def __init__(
        self,
        name: str,
        runs_dir: str,
        seed: int,
        stages: dict[str, StageSpec],
        wandb: bool,
        device: str = "cpu",
        progress_bar: bool = True,
    ) -> None:
        self.name = name
        self.root = Path(runs_dir) / name
        self.seed = seed
        self.stages = stages
        self.wandb = wandb
        self.device = device
        self.progress_bar = progress_bar
        self.ran: set[str] = set()
        self.timings: dict[str, dict[str, Any]] = {}

    @property
    def inputs(self) -> dict[str, tuple[str, ...]]:
        """Stage -> the stages whose outputs it reads, every stage of this run in running order."""
        raise NotImplementedError

    # -- paths ---------------------------------------------------------------------------------------------------

    def dir(self, stage: str) -> Path:
        return self.root / stage

    def export(self, stage: str) -> Path:
        """The Hugging Face directory a training stage writes."""
        return self.dir(stage) / "hf"

    def is_complete(self, stage: str) -> bool:
        """Whether ``stage``'s complete output exists (its marker, written last, is there)."""
        if stage in ("evaluate", "overoptimization"):
            return self.output_of(stage).is_file()
        return read_export_metadata(self.export(stage)) is not None

    def output_of(self, stage: str) -> Path:
        if stage == "evaluate":
            return self.dir(stage) / "results.json"
        if stage == "overoptimization":
            return self.dir(stage) / "overoptimization.json"
        return self.export(stage)

    def absent_stages(self) -> set[str]:
        """The optional stages this run's config does not name."""
        return {s for s in OPTIONAL_STAGES if self.stages.get(s) is None}

    # -- running ---------------------------------------------------------------------------------------------------

    def run(self, until: str | None = None, console: Any = None) -> dict[str, dict[str, Any]]:
        """Run every stage (through ``until``), skipping those already complete; return the timings."""
        from rich.console import Console

        console = console or Console()
        self.root.mkdir(parents=True, exist_ok=True)
        stages = tuple(self.inputs)
        order = stages[: stages.index(until) + 1] if until else stages
        self.timings = self._read_timings()
        start = time.perf_counter()
        console.rule(f"[bold]lit-rlhf pipeline {self.name}[/bold]: {len(order)} stages into {self.root}")
        for i, stage in enumerate(order, start=1):
            label = f"[{i}/{len(order)}] {stage}"
            stale = [s for s in self.inputs[stage] if s in self.ran]
            if self.is_complete(stage) and not stale:
                console.print(f"[dim]{label}: skipped, its output is complete ({self.output_of(stage)})[/dim]")
                self.timings.setdefault(stage, {})["status"] = "skipped"
                continue
            why = f"inputs {stale} were redone" if stale and self.is_complete(stage) else "no complete output yet"
            console.rule(f"{label} ({why})", align="left")
            t0, cpu0 = time.perf_counter(), time.process_time()
            getattr(self, f"run_{stage}")(console)
            self._finish_loggers()
            seconds = time.perf_counter() - t0
            self.ran.add(stage)
            # CPU seconds as well: on a shared machine they, not the wall time, say what the stage costs
            cpu = round(time.process_time() - cpu0, 1)
            self.timings[stage] = {"status": "done", "seconds": round(seconds, 1), "cpu_seconds": cpu}
            self._write_timings()
            console.print(
                f"[green]{label}: done in {seconds:.1f} s[/green] "
                f"(pipeline {time.perf_counter() - start:.0f} s so far) -> {self.output_of(stage)}"
            )
        self._write_timings()
        self._print_summary(console, order, time.perf_counter() - start)
        return self.timings

    def _read_timings(self) -> dict[str, dict[str, Any]]:
        path = self.root / "pipeline.json"
        return json.loads(path.read_text())["stages"] if path.is_file() else {}

    def _write_timings(self) -> None:
        record = {"name": self.name, "stages": self.timings}
        (self.root / "pipeline.json").write_text(json.dumps(record, indent=2) + "\n")

    def _print_summary(self, console: Any, order: tuple[str, ...], seconds: float) -> None:
        from rich.table import Table

        table = Table(title=f"pipeline {self.name}: {seconds:.0f} s in this invocation")
        for column in ("stage", "this run", "wall s", "CPU s", "output"):
            table.add_column(column)
        for stage in order:
            t = self.timings.get(stage, {})
            cells = [t.get("status", "-"), str(t.get("seconds", "-")), str(t.get("cpu_seconds", "-"))]
            table.add_row(stage, *cells, str(self.output_of(stage)))
        console.print(table)
        results = self.dir("evaluate") / "table.txt"
        if "evaluate" in order and results.is_file() and "evaluate" not in self.ran:
            console.print(results.read_text())  # the evaluation printed its table when it ran

    @staticmethod
    def _finish_loggers() -> None:
        """End the stage's W&B run (each stage gets its own, grouped by pipeline) and free its models."""
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish()
        gc.collect()

    # -- a stage's config, run in this process -------------------------------------------------------------------------

    def _loggers(self, stage: str, csv: bool = True) -> list[dict[str, Any]] | bool:
        loggers: list[dict[str, Any]] = []
        if csv:  # first, so checkpoints land in runs/<name>/<stage>/checkpoints
            csv_args = {"save_dir": str(self.dir(stage)), "name": "", "version": ""}
            loggers.append({"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": csv_args})
        if self.wandb:
            wandb_args = {"name": f"{self.name}/{stage}", "group": self.name, "save_dir": str(self.root)}
            loggers.append({"class_path": "lit_rlhf.loggers.WandbLogger", "init_args": wandb_args})
        return loggers or False

    def merged_config(
        self, stage: str, wiring: dict[str, Any], replace: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The stage's YAML (:meth:`stage_defaults`), the pipeline's overrides and ``wiring`` (``replace``: top-level
        keys set whole), its paths checked (:meth:`check_paths`)."""
        spec = self.stages[stage]
        config = deep_merge(self.stage_defaults(yaml.safe_load(Path(spec.config).read_text()) or {}), spec.overrides)
        return self.check_paths(stage, {**deep_merge(config, wiring), **(replace or {})})

    def stage_defaults(self, config: dict[str, Any]) -> dict[str, Any]:
        """A stage's YAML as the pipeline starts from it: without the world section (the pipeline names every file)."""
        return without_world(config)

    def check_paths(self, stage: str, config: dict[str, Any]) -> dict[str, Any]:
        """The merged config with its paths made right for this run (or an error naming those that cannot be)."""
        return config

    def stage_config(self, stage: str, wiring: dict[str, Any], replace: dict[str, Any] | None = None) -> Path:
        """Write the stage's merged config (:meth:`merged_config`) for this run; return its path."""
        config = self.merged_config(stage, wiring, replace)
        path = self.root / "configs" / f"{stage}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = self.stages[stage]
        header = f"# {stage} stage of pipeline {self.name}: {spec.config} + overrides + paths; rerun alone with\n"
        command = stage if stage in ("evaluate", "overoptimization") else "fit"
        header += f"#   lit-rlhf {command} -c {path}\n"
        path.write_text(header + yaml.safe_dump(config, sort_keys=False))
        return path

    def fit(self, stage: str, model: dict[str, Any], data: dict[str, Any]) -> None:
        """Run ``lit-rlhf fit`` on the stage's merged config (:meth:`fit_config`), in this process."""
        from lit_rlhf.stage_cli import build_stage_cli

        config = self.fit_config(stage, model, data)
        with warnings.catch_warnings():  # "args and sys.argv both given": the pipeline's own argv, on purpose
            warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
            cli = build_stage_cli(["-c", str(config)], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        if cli.trainer.interrupted or read_export_metadata(self.export(stage)) is None:
            raise RuntimeError(f"stage {stage} stopped before writing {self.export(stage)}; rerun to continue")

    def fit_config(self, stage: str, model: dict[str, Any], data: dict[str, Any]) -> Path:
        """Write the merged ``lit-rlhf fit`` config of ``stage`` with ``model`` and ``data`` wired in; its path."""
        wiring = {
            "seed_everything": self.seed,
            "trainer": {
                "default_root_dir": str(self.dir(stage)),
                "logger": self._loggers(stage),
                "enable_progress_bar": self.progress_bar,
            },
            "model": {"init_args": {"export_dir": str(self.export(stage)), **model}},
            "data": {"init_args": data},
        }
        return self.stage_config(stage, wiring)

    def ppo_iterations(self) -> dict[str, str]:
        """PPO's exports along training (``hf_iterations/iter_*``), then its final one unless it is the last of them:
        name -> directory, in training order."""
        exports = sorted(self.dir("ppo").glob("hf_iterations/iter_*"))
        checkpoints = {f"ppo_{p.name}": str(p) for p in exports if read_export_metadata(p) is not None}
        final = read_export_metadata(self.export("ppo")) or {}
        last = read_export_metadata(exports[-1]) if exports else None
        if last is None or last.get("ppo_iterations") != final.get("ppo_iterations"):
            checkpoints["ppo"] = str(self.export("ppo"))
        return checkpoints

    def overoptimization(self, wiring: dict[str, Any], checkpoints: dict[str, str]) -> None:
        """Run the over-optimisation curve on the stage's merged config with these RL ``checkpoints`` (written to
        ``configs/overoptimization.yaml`` for ``lit-rlhf overoptimization -c``), in this process."""
        from lit_rlhf.evaluation.overoptimization import OveroptimizationOptions, overoptimization

        wiring = {"seed": self.seed, "output_dir": str(self.dir("overoptimization")), **wiring}
        replace = {"checkpoints": checkpoints, "trainer": {"logger": False}}
        path = self.stage_config("overoptimization", wiring, replace=replace)
        options = yaml.safe_load(path.read_text())
        options.pop("trainer", None)
        overoptimization(OveroptimizationOptions(**options), device=self.device)

    def evaluate(self, wiring: dict[str, Any], policies: dict[str, Path]) -> None:
        """Run ``lit-rlhf evaluate`` on the evaluate stage's merged config with ``policies``, in this process."""
        from lit_rlhf.stage_cli import build_stage_cli

        wiring = {
            "seed_everything": self.seed,
            "baseline": "sft",
            "output_dir": str(self.dir("evaluate")),
            "trainer": {"logger": self._loggers("evaluate", csv=False)},
            **wiring,
        }
        config = self.stage_config("evaluate", wiring, replace={"policies": {k: str(v) for k, v in policies.items()}})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
            build_stage_cli(["evaluate", "-c", str(config)])


class WorldPipeline(Pipeline):
    """InstructGPT's recipe on the instruction world: the world's files, simulated labelers and judging panel."""

    def __init__(
        self,
        name: str,
        runs_dir: str,
        seed: int,
        world: dict[str, Any],
        stages: dict[str, StageSpec],
        comparisons: dict[str, Any],
        few_shot: int,
        wandb: bool,
        device: str = "cpu",
        progress_bar: bool = True,
    ) -> None:
        super().__init__(name, runs_dir, seed, stages, wandb, device, progress_bar)
        self.world_options = world
        self.comparison_options = comparisons
        self.few_shot = few_shot

    @property
    def inputs(self) -> dict[str, tuple[str, ...]]:
        return without_stages(INPUTS, self.absent_stages())

    @property
    def world(self):
        from lit_rlhf.world import WorldFiles

        return WorldFiles.at(self.dir("world"))

    def is_complete(self, stage: str) -> bool:
        if stage == "world":
            return self.world.is_complete() and self._world_params_match(self.world.manifest)
        if stage == "comparisons":
            return (self.dir(stage) / "stats.json").is_file()
        if stage == "base_prompted":
            return (self.dir(stage) / MARKER_FILE).is_file()
        return super().is_complete(stage)

    def output_of(self, stage: str) -> Path:
        return self.dir(stage) if stage in ("world", "comparisons", "base_prompted") else super().output_of(stage)

    def _world_params_match(self, manifest: Path) -> bool:
        params = json.loads(manifest.read_text()).get("params", {})
        return all(params.get(k) == v for k, v in {"seed": self.seed, **self.world_options}.items())

    def stage_defaults(self, config: dict[str, Any]) -> dict[str, Any]:
        """Over the world's defaults in the stage config (e.g. a callback on the world's held-out tasks)."""
        return deep_merge(world_defaults(config), without_world(config))

    def check_paths(self, stage: str, config: dict[str, Any]) -> dict[str, Any]:
        """Every path into the stage configs' world pointed at this run's world."""
        return replace_path_prefix(config, STAGE_CONFIG_WORLD, str(self.dir("world")))

    # -- stages ------------------------------------------------------------------------------------------------------

    def run_world(self, console: Any) -> None:
        from lit_rlhf.world import build_world

        files = build_world(self.dir("world"), seed=self.seed, **self.world_options)
        console.print(f"world built: {files.root}")

    def run_pretrain(self, console: Any) -> None:
        w = self.world
        self.fit(
            "pretrain",
            model={"tokenizer_name_or_path": str(w.tokenizer)},
            data={"train_files": str(w.corpus_train), "val_files": str(w.corpus_val)},
        )

    def run_sft(self, console: Any) -> None:
        w = self.world
        # From the pretrained base: its tokenizer and shape, not a scratch model's.
        data = {"train_files": str(w.sft_train), "val_files": str(w.sft_val)}
        self.fit("sft", model=starting_from(self.export("pretrain")), data=data)

    def run_comparisons(self, console: Any) -> None:
        from lit_rlhf.world.comparisons import collect_world_comparisons

        options = {"device": self.device, **self.comparison_options}
        out = self.dir("comparisons")
        stats = collect_world_comparisons(self.export("sft"), self.world.root, out, seed=self.seed, **options)
        console.print(f"comparisons ranked by the simulated labelers: {stats}")

    def run_rm(self, console: Any) -> None:
        # InstructGPT §3.5: demonstrations score mean 0
        model = starting_from(self.export("sft"), reference_files=str(self.world.sft_train))
        self.fit("rm", model=model, data=self.comparisons_data())

    def run_dpo(self, console: Any) -> None:
        self.fit("dpo", *self.dpo_wiring())

    def dpo_wiring(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model and data options DPO gets from the earlier stages: the SFT policy and the RM's comparisons."""
        return starting_from(self.export("sft")), self.comparisons_data()

    def comparisons_data(self) -> dict[str, Any]:
        """The data options of the stages that learn from the labelers' comparisons (the RM and DPO)."""
        c = self.dir("comparisons")
        return {"train_files": str(c / "train.jsonl"), "val_files": str(c / "val.jsonl")}

    def _ppo(self, stage: str) -> None:
        self.fit(stage, *self.ppo_wiring())

    def ppo_wiring(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model and data options PPO and PPO-ptx get from the earlier stages (for :meth:`fit_config`)."""
        w = self.world
        model = {"model_name_or_path": str(self.export("sft")), "reward_model_path": str(self.export("rm"))}
        # the world's own PPO prompts (InstructGPT: a third prompt set, apart from SFT's and the RM's)
        data = {
            "train_files": str(w.ppo_prompts),
            "val_files": str(w.sft_val),
            "pretraining_files": str(w.corpus_train),
        }
        return model, data

    def run_ppo(self, console: Any) -> None:
        self._ppo("ppo")

    def run_ppo_ptx(self, console: Any) -> None:
        self._ppo("ppo_ptx")

    def run_rloo(self, console: Any) -> None:
        self._ppo("rloo")

    def run_grpo(self, console: Any) -> None:
        self._ppo("grpo")

    def run_base_prompted(self, console: Any) -> None:
        """The pretrained base with a few-shot prefix, as a policy directory: a copy whose chat template puts
        ``few_shot`` world demonstrations before every prompt (``evaluate`` uses a tokenizer's chat template)."""
        from lit_rlhf.data.records import load_records, parse_sft_record
        from lit_rlhf.models import load_tokenizer

        examples, _ = load_records(str(self.world.sft_train), parse_sft_record)
        shots = [{"prompt": e.prompt[-1]["content"], "completion": e.completion} for e in examples[: self.few_shot]]
        base = self.export("pretrain")
        with atomic_directory(self.dir("base_prompted")) as tmp:
            shutil.copytree(base, tmp, dirs_exist_ok=True)
            (tmp / MARKER_FILE).unlink()
            tokenizer = load_tokenizer(str(base))
            tokenizer.chat_template = few_shot_chat_template(shots)
            tokenizer.save_pretrained(tmp)
            meta = {**(read_export_metadata(base) or {}), "stage": "base_prompted", "base": str(base), "shots": shots}
            (tmp / MARKER_FILE).write_text(json.dumps(meta, indent=2) + "\n")  # last: marks a finished directory
        console.print(f"prompted base: {len(shots)} demonstrations before every prompt")

    def run_evaluate(self, console: Any) -> None:
        policies = {"base": self.export("pretrain"), "base_prompted": self.dir("base_prompted")}
        policies |= {s: self.export(s) for s in POLICY_STAGES if s in self.inputs}
        fewshot = self.fewshot_probes()
        wiring = {
            "prompts_file": str(self.world.heldout),
            "judge": PANEL_JUDGE,
            "rm_dir": str(self.export("rm")),
            "pretraining_file": str(self.world.corpus_val),
            "fewshot_file": str(fewshot) if fewshot else None,
            "response_metrics": WORLD_METRICS,
            "group_by": "constrained",
        }
        self.evaluate(wiring, policies)

    def run_overoptimization(self, console: Any) -> None:
        wiring = {
            "sft": str(self.export("sft")),
            "rm_dir": str(self.export("rm")),
            "gold": TRUE_QUALITY,  # the hidden quality itself
            "judge": PANEL_JUDGE,
            "prompts_file": str(self.world.heldout),
        }
        self.overoptimization(wiring, self.ppo_iterations())

    def fewshot_probes(self) -> Path | None:
        """``<world>/eval/fewshot.jsonl``, the few-shot probes of the world's corpus skills (written when absent); None
        for a world without such skills."""
        from lit_rlhf.world.fewshot import write_fewshot_probes
        from lit_rlhf.world.tasks import TASK_KINDS

        path = self.world.root / "eval" / "fewshot.jsonl"
        if path.is_file():
            return path
        kinds = tuple(k for k in json.loads(self.world.manifest.read_text())["task_kinds"] if k in TASK_KINDS)
        return write_fewshot_probes(path, seed=self.seed, kinds=kinds) if kinds else None


class OwnDataPipeline(Pipeline):
    """InstructGPT's recipe on your model (or a small one trained from scratch) and your files.

    The data step splits your files into the stages' files (:mod:`lit_rlhf.pipeline_data`): the preferences in two
    halves by prompt, one for the RM, the other for a gold RM that trains no policy and judges the evaluation
    (unless ``judge_model_path`` names a judge); the evaluation's prompts off the PPO prompts.

    Args:
        data: Your files.
        model_name_or_path: The causal LM SFT starts from; None trains a tokenizer and a base LM on your text first
            (the ``pretrain`` stage).
        judge_model_path: A reward-model directory that judges the evaluation instead of the gold RM.
        vocab_size: The vocabulary of the tokenizer trained without ``model_name_or_path``.
    """

    def __init__(
        self,
        name: str,
        runs_dir: str,
        seed: int,
        data: PipelineData,
        stages: dict[str, StageSpec],
        model_name_or_path: str | None,
        judge_model_path: str | None,
        vocab_size: int,
        wandb: bool,
        device: str = "cpu",
        progress_bar: bool = True,
    ) -> None:
        super().__init__(name, runs_dir, seed, stages, wandb, device, progress_bar)
        self.data = data
        self.model_name_or_path = model_name_or_path
        self.judge_model_path = judge_model_path
        self.vocab_size = vocab_size

    @property
    def inputs(self) -> dict[str, tuple[str, ...]]:
        absent = {
            "pretrain": self.model_name_or_path is not None,
            "gold_rm": self.judge_model_path is not None,
            "ppo_ptx": not self.data.pretraining_files,
        }
        return without_stages(OWN_DATA_INPUTS, {s for s, gone in absent.items() if gone} | self.absent_stages())

    @property
    def files(self) -> DataFiles:
        return DataFiles.at(self.dir("data"))

    @property
    def base(self) -> str:
        """The model SFT starts from: yours, or the base LM the pretrain stage trained."""
        return self.model_name_or_path or str(self.export("pretrain"))

    @property
    def judge(self) -> Path:
        return Path(self.judge_model_path) if self.judge_model_path else self.export("gold_rm")

    def is_complete(self, stage: str) -> bool:
        if stage == "data":  # and written with these options: else the stages would read another split
            report = self.files.report()
            if report is None:
                return False
            halves = "gold_rm" in report["preferences"]
            same = report["options"] == self.data.record() and report["seed"] == self.seed
            return same and halves == (self.judge_model_path is None)
        return super().is_complete(stage)

    def output_of(self, stage: str) -> Path:
        return self.dir(stage) if stage == "data" else super().output_of(stage)

    def check_paths(self, stage: str, config: dict[str, Any]) -> dict[str, Any]:
        """A path into the world left in a stage config (a callback on its held-out tasks) stops the run, naming the
        key to override: your data have no world."""
        leftovers = paths_under(config, STAGE_CONFIG_WORLD)
        if leftovers:
            spec = self.stages[stage]
            raise ValueError(
                f"stage {stage} ({spec.config}) still reads the instruction world, which your data replace:\n  "
                + "\n  ".join(leftovers)
                + f"\noverride these keys in the pipeline config's '{stage}: {{overrides: ...}}'"
            )
        return config

    # -- stages ------------------------------------------------------------------------------------------------------

    def run_data(self, console: Any) -> None:
        report = prepare_data(self.data, self.dir("data"), self.seed, gold_rm=self.judge_model_path is None)
        console.print(f"the data split ({self.files.split}):")
        for line in split_lines(report):
            console.print(f"  {line}", markup=False, highlight=False)

    def run_pretrain(self, console: Any) -> None:
        """A tokenizer, then a base LM trained from scratch on your text (the world pipeline's pretrain stage)."""
        from lit_rlhf.data.prompts import parse_text_record
        from lit_rlhf.data.records import load_records
        from lit_rlhf.models import train_tokenizer

        texts, _ = load_records(str(self.files.corpus), parse_text_record)
        tokenizer_dir = self.dir("pretrain") / "tokenizer"
        train_tokenizer(texts, vocab_size=self.vocab_size).save_pretrained(tokenizer_dir)
        console.print(f"tokenizer: {self.vocab_size} tokens, trained on {len(texts)} texts -> {tokenizer_dir}")
        data = {"train_files": str(self.files.corpus), "val_files": None, "on_bad_record": self.data.on_bad_record}
        self.fit("pretrain", model={"tokenizer_name_or_path": str(tokenizer_dir)}, data=data)

    def _data(self, train_files: Any, **more: Any) -> dict[str, Any]:
        return {"train_files": train_files, "val_files": None, "on_bad_record": self.data.on_bad_record, **more}

    def run_sft(self, console: Any) -> None:
        self.fit("sft", model=starting_from(self.base), data=self._data(self.data.sft_files))

    def _rm(self, stage: str, preferences: Path) -> None:
        # InstructGPT initialises the RM from the SFT model; §3.5: demonstrations score mean 0
        model = starting_from(self.export("sft"), reference_files=self.data.sft_files)
        self.fit(stage, model=model, data=self._data(str(preferences), ties=self.data.ties))

    def run_rm(self, console: Any) -> None:
        self._rm("rm", self.files.rm_preferences)

    def run_dpo(self, console: Any) -> None:
        # The RM's half of the preferences: the gold RM's half stays unseen by every policy it judges.
        data = self._data(str(self.files.rm_preferences), ties=self.data.ties)
        self.fit("dpo", model=starting_from(self.export("sft")), data=data)

    def run_gold_rm(self, console: Any) -> None:
        # Trained as the RM is, from the same SFT model: the two differ only in the half of the prompts they saw,
        # so the gap between their verdicts on a policy measures how far PPO exploited the RM's own half.
        self._rm("gold_rm", self.files.gold_rm_preferences)

    def _ppo(self, stage: str) -> None:
        model = {
            "model_name_or_path": str(self.export("sft")),
            "tokenizer_name_or_path": None,
            "reward_model_path": str(self.export("rm")),
        }
        pretraining = str(self.files.pretraining_train) if self.data.pretraining_files else None
        self.fit(stage, model=model, data=self._data(str(self.files.ppo_prompts), pretraining_files=pretraining))

    def run_ppo(self, console: Any) -> None:
        self._ppo("ppo")

    def run_ppo_ptx(self, console: Any) -> None:
        self._ppo("ppo_ptx")

    def run_rloo(self, console: Any) -> None:
        self._ppo("rloo")

    def run_grpo(self, console: Any) -> None:
        self._ppo("grpo")

    def run_evaluate(self, console: Any) -> None:
        policies = {s: self.export(s) for s in POLICY_STAGES if s in self.inputs}
        val = self.files.pretraining_val
        wiring = {
            "prompts_file": eval_prompt_files(self.data, self.files),
            "judge": f"rm:{self.judge}",
            "judge_info": self.judge_info(),
            # the stage config's grouping is the world's ('constrained'); your records are grouped only if you ask
            "group_by": self.stages["evaluate"].overrides.get("group_by"),
            "rm_dir": str(self.export("rm")),
            "pretraining_file": str(val) if val.is_file() else None,
        }
        self.evaluate(wiring, policies)

    def run_overoptimization(self, console: Any) -> None:
        wiring = {
            "sft": str(self.export("sft")),
            "rm_dir": str(self.export("rm")),
            "gold": f"rm:{self.judge}",  # the judge of the evaluation, which trained no policy
            "judge": None,
            "prompts_file": eval_prompt_files(self.data, self.files),
        }
        self.overoptimization(wiring, self.ppo_iterations())

    def judge_info(self) -> dict[str, Any]:
        """Who judges the evaluation and how it was made (written into results.json)."""
        if self.judge_model_path is not None:
            return {"path": str(self.judge), "made": "given with --judge_model_path; this pipeline did not train it"}
        gold = (self.files.report() or {})["preferences"]["gold_rm"]
        return {
            "path": str(self.judge),
            "made": "the gold RM, trained by this pipeline from the SFT model on the half of the preference prompts "
            "the RM never saw; it trained no policy",
            "init": str(self.export("sft")),
            "config": str(self.root / "configs" / "gold_rm.yaml"),
            "train_file": gold["file"],
            "records": gold["records"],
            "prompts": gold["prompts"],
        }


def _problems(
    world: dict[str, Any] | None,
    data: PipelineData | None,
    specs: dict[str, StageSpec | None],
    needed: tuple[str, ...],
    stages: tuple[str, ...],
    until: str | None,
    own: dict[str, Any],
) -> list[str]:
    """Every problem with the pipeline's options, each naming its flag."""
    problems = []
    if world and data is not None:
        problems.append("give either world: (the instruction world) or data: (your files), not both")
    if data is None:
        given = [k for k, v in own.items() if v is not None]
        problems += [f"--{k} is for your own data (data:); the world pipeline trains its own" for k in given]
    else:
        problems += data.problems()
        judge = own.get("judge_model_path")
        if judge is not None and not (Path(judge) / "config.json").is_file():
            problems.append(f"--judge_model_path {judge}: no config.json there (not a reward-model directory)")
    problems += [f"--{k} needs a config (e.g. {{config: configs/{k}/tiny.yaml}})" for k in needed if specs[k] is None]
    problems += [
        f"--{k}.config {v.config}: no such file" for k, v in specs.items() if v and not Path(v.config).is_file()
    ]
    if until is not None and until not in stages:
        problems.append(f"--until {until!r} is not a stage of this pipeline; use one of {list(stages)}")
    return problems


def pipeline_command(
    self: Any,
    model: Any = None,
    datamodule: Any = None,
    *,
    name: str = "demo",
    runs_dir: str = "runs",
    seed: int = 0,
    world: dict[str, Any] | None = None,
    data: PipelineData | None = None,
    model_name_or_path: str | None = None,
    judge_model_path: str | None = None,
    vocab_size: int = 4096,
    pretrain: StageSpec | None = None,
    sft: StageSpec | None = None,
    comparisons: dict[str, Any] | None = None,
    rm: StageSpec | None = None,
    gold_rm: StageSpec | None = None,
    dpo: StageSpec | None = None,
    ppo: StageSpec | None = None,
    ppo_ptx: StageSpec | None = None,
    rloo: StageSpec | None = None,
    grpo: StageSpec | None = None,
    evaluate: StageSpec | None = None,
    overoptimization: StageSpec | None = None,
    few_shot: int = 3,
    wandb: bool = True,
    until: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the whole InstructGPT recipe, stage by stage, resuming where it stopped: on the instruction world, or on
    your model and files (--data.*).

    World: world -> pretrain -> sft -> comparisons -> rm -> dpo (with --dpo) -> ppo, ppo_ptx, rloo and grpo (with
    --rloo, --grpo) -> base_prompted -> evaluate, judged by the world's held-out labeler panel. Your data: data ->
    pretrain (without --model_name_or_path) -> sft -> rm, gold_rm -> dpo (with --dpo) -> ppo, ppo_ptx (with
    --data.pretraining_files), rloo, grpo -> evaluate, judged by a gold RM trained on the half of
    the preferences the RM never saw (or --judge_model_path). Each stage runs its own YAML with the same modules as
    'lit-rlhf fit'; outputs go to <runs_dir>/<name>/<stage>/ and a stage whose complete output exists is skipped, so
    a rerun continues where the last one stopped. The evaluation (win rates against SFT) lands in
    <runs_dir>/<name>/evaluate/results.json. --trainer.enable_progress_bar=false turns the progress bars of every
    stage off (logs, notebooks); other --trainer options are not passed on. Needs no --model.

    Args:
        model: Unused (LightningCLI passes it to every subcommand).
        datamodule: Unused.
        name: The run's name: its directory under --runs_dir and its W&B group.
        runs_dir: Where pipeline runs go.
        seed: Seeds the world or the data splits, every stage (seed_everything) and the comparison sampling.
        world: Options of lit_rlhf.world.build_world (n_train, n_corpus, vocab_size, ...); defaults otherwise.
        data: Your files, in place of the world (see lit_rlhf.pipeline_data.PipelineData).
        model_name_or_path: With --data: the Hugging Face causal LM directory (or hub id) SFT starts from; null
            trains a tokenizer and a small base LM (--pretrain) on your text first.
        judge_model_path: With --data: a reward-model directory that judges the evaluation, in place of the gold
            RM; then every preference record trains the RM.
        vocab_size: With --data and no --model_name_or_path: the vocabulary of the tokenizer trained on your text.
        pretrain: The base LM stage: {config: configs/pretrain/tiny.yaml, overrides: {...}}.
        sft: The SFT stage (starts from the pretrained base or --model_name_or_path).
        comparisons: Options of lit_rlhf.world.comparisons.collect_comparisons (k_min, k_max, max_prompts,
            max_new_tokens, batch_size, ...): K responses per prompt sampled from the SFT policy, ranked by the
            world's labelers.
        rm: The reward-model stage (starts from SFT; trained on the comparisons, or on one half of your preferences).
        gold_rm: With --data: the gold RM, trained on the other half of your preferences; null: as --rm.
        dpo: The DPO stage (configs/dpo/tiny.yaml): the SFT policy trained by DPO on the RM's comparisons (your
            data: the RM's half of the preferences) and evaluated beside PPO; null: no DPO.
        ppo: The PPO stage (policy and reference from SFT, reward and value from the RM).
        ppo_ptx: The PPO-ptx stage (PPO plus the pretraining loss on the world's corpus or your pretraining files).
        rloo: The RLOO stage (configs/rloo/tiny.yaml): PPO's wiring with a critic-free estimator, no value model;
            evaluated beside PPO. null: no RLOO.
        grpo: The GRPO stage (configs/grpo/tiny.yaml), as --rloo. null: no GRPO.
        evaluate: The evaluation: {config: configs/evaluate/tiny.yaml, overrides: {...}}; the pipeline sets the
            policies, the prompts, the judge and the output directory.
        overoptimization: The over-optimisation curve (Gao et al. 2022): {config:
            configs/overoptimization/tiny.yaml, overrides: {...}}; the pipeline sets the SFT policy, the RM (proxy),
            the gold scorer (the world's hidden quality; your data: the judge), the prompts and PPO's exports along
            training (set the PPO stage's model.export_every_n_iterations). null: no curve.
        few_shot: World: demonstrations put before every prompt of the prompted base (base_prompted).
        wandb: Log every stage to W&B as its own run, grouped by --name (offline without a key); CSV metrics are
            written to <stage>/metrics.csv either way.
        until: Stop after this stage (one of the stages above).
    """
    own = {"model_name_or_path": model_name_or_path, "judge_model_path": judge_model_path, "gold_rm": gold_rm}
    specs = {"pretrain": pretrain, "sft": sft, "rm": rm, "ppo": ppo, "ppo_ptx": ppo_ptx, "evaluate": evaluate}
    if data is None:
        needed, stages = tuple(specs), STAGES
    else:
        specs["gold_rm"] = gold_rm or rm  # by default trained exactly as the RM is
        stages = tuple(OWN_DATA_INPUTS)
        optional = {"pretrain": model_name_or_path is None, "ppo_ptx": bool(data.pretraining_files)}
        needed = tuple(k for k in specs if k != "gold_rm" and optional.get(k, True))
    # Optional in both pipelines: null, no such stage.
    specs |= {"dpo": dpo, "rloo": rloo, "grpo": grpo, "overoptimization": overoptimization}
    problems = _problems(world, data, specs, needed, stages, until, own)
    if few_shot < 0:
        problems.append(f"--few_shot must be >= 0, got {few_shot}")
    if problems:
        raise ValueError("cannot run the pipeline:\n  " + "\n  ".join(problems))
    device = "cuda" if self.strategy.root_device.type == "cuda" else "cpu"
    # --trainer.enable_progress_bar=false (logs, notebooks) holds for every stage, and for transformers' bars too
    progress_bar = self.progress_bar_callback is not None
    if not progress_bar:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if data is None:
        pipeline: Pipeline = WorldPipeline(
            name, runs_dir, seed, world or {}, specs, comparisons or {}, few_shot, wandb, device, progress_bar
        )
    else:
        models = (model_name_or_path, judge_model_path, vocab_size)
        pipeline = OwnDataPipeline(name, runs_dir, seed, data, specs, *models, wandb, device, progress_bar)
    if until is not None and until not in pipeline.inputs:
        raise ValueError(f"--until {until!r} is not run by this pipeline; use one of {list(pipeline.inputs)}")
    return pipeline.run(until=until)


__all__ = [
    "INPUTS",
    "OWN_DATA_INPUTS",
    "STAGES",
    "OwnDataPipeline",
    "Pipeline",
    "StageSpec",
    "WorldPipeline",
    "deep_merge",
    "few_shot_chat_template",
    "pipeline_command",
]
