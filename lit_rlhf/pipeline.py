"""``lit-rlhf pipeline``: the whole InstructGPT recipe on the instruction world, one stage after another.

    world -> pretrain -> sft -> comparisons -> rm -> ppo, ppo_ptx -> base_prompted -> evaluate

Every training stage runs the stage's own YAML (``configs/<stage>/<size>.yaml``, the file ``lit-rlhf fit -c`` takes)
with the same LightningModule and DataModule, in this process. The pipeline only merges the pipeline config's
``overrides`` into it and wires the paths (the world's files, the previous stage's export, ``default_root_dir``,
loggers); the merged file is written to ``runs/<name>/configs/<stage>.yaml``, so ``lit-rlhf fit -c`` on it reruns a
stage alone. Outputs go to ``runs/<name>/<stage>/`` (Hugging Face exports in ``<stage>/hf``, CSV metrics in
``<stage>/metrics.csv``, the evaluation in ``evaluate/results.json``).

A stage whose complete output exists is skipped (an export's ``lit_rlhf.json`` is written last; the comparisons'
``stats.json`` and the evaluation's ``results.json`` likewise), unless a stage it reads from was run again in this
invocation. So a rerun after an interruption continues with the interrupted stage.
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

STAGES = ("world", "pretrain", "sft", "comparisons", "rm", "ppo", "ppo_ptx", "base_prompted", "evaluate")
"""Every stage, in the order the pipeline runs them."""

INPUTS: dict[str, tuple[str, ...]] = {
    "world": (),
    "pretrain": ("world",),
    "sft": ("world", "pretrain"),
    "comparisons": ("world", "sft"),
    "rm": ("world", "sft", "comparisons"),
    "ppo": ("world", "sft", "rm"),
    "ppo_ptx": ("world", "sft", "rm"),
    "base_prompted": ("world", "pretrain"),
    "evaluate": ("world", "pretrain", "base_prompted", "sft", "rm", "ppo", "ppo_ptx"),
}
"""The stages whose outputs each stage reads: when one of them runs again, so does the stage."""

STAGE_CONFIG_WORLD = "runs/world"
"""Where the stage configs expect the world; the pipeline points every such path at its own world."""

PANEL_JUDGE = "lit_rlhf.world.labelers:panel_judge"
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
    """The stages of one pipeline run and where each writes; see :func:`pipeline_command` for the options."""

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
        self.name = name
        self.root = Path(runs_dir) / name
        self.seed = seed
        self.world_options = world
        self.stages = stages
        self.comparison_options = comparisons
        self.few_shot = few_shot
        self.wandb = wandb
        self.device = device
        self.progress_bar = progress_bar
        self.ran: set[str] = set()
        self.timings: dict[str, dict[str, Any]] = {}

    # -- paths ---------------------------------------------------------------------------------------------------

    def dir(self, stage: str) -> Path:
        return self.root / stage

    def export(self, stage: str) -> Path:
        """The Hugging Face directory a training stage writes."""
        return self.dir(stage) / "hf"

    @property
    def world(self):
        from lit_rlhf.world import WorldFiles

        return WorldFiles.at(self.dir("world"))

    def is_complete(self, stage: str) -> bool:
        """Whether ``stage``'s complete output exists (its marker, written last, is there)."""
        if stage == "world":
            manifest = self.world.manifest
            return self.world.is_complete() and self._world_params_match(manifest)
        if stage == "comparisons":
            return (self.dir(stage) / "stats.json").is_file()
        if stage == "base_prompted":
            return (self.dir(stage) / MARKER_FILE).is_file()
        if stage == "evaluate":
            return (self.dir(stage) / "results.json").is_file()
        return read_export_metadata(self.export(stage)) is not None

    def _world_params_match(self, manifest: Path) -> bool:
        params = json.loads(manifest.read_text()).get("params", {})
        return all(params.get(k) == v for k, v in {"seed": self.seed, **self.world_options}.items())

    # -- running ---------------------------------------------------------------------------------------------------

    def run(self, until: str | None = None, console: Any = None) -> dict[str, dict[str, Any]]:
        """Run every stage (through ``until``), skipping those already complete; return the timings."""
        from rich.console import Console

        console = console or Console()
        self.root.mkdir(parents=True, exist_ok=True)
        order = STAGES[: STAGES.index(until) + 1] if until else STAGES
        self.timings = self._read_timings()
        start = time.perf_counter()
        console.rule(f"[bold]lit-rlhf pipeline {self.name}[/bold]: {len(order)} stages into {self.root}")
        for i, stage in enumerate(order, start=1):
            label = f"[{i}/{len(order)}] {stage}"
            stale = [s for s in INPUTS[stage] if s in self.ran]
            if self.is_complete(stage) and not stale:
                console.print(f"[dim]{label}: skipped, its output is complete ({self._output_of(stage)})[/dim]")
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
                f"(pipeline {time.perf_counter() - start:.0f} s so far) -> {self._output_of(stage)}"
            )
        self._write_timings()
        self._print_summary(console, order, time.perf_counter() - start)
        return self.timings

    def _output_of(self, stage: str) -> Path:
        if stage in ("world", "comparisons", "base_prompted"):
            return self.dir(stage)
        if stage == "evaluate":
            return self.dir(stage) / "results.json"
        return self.export(stage)

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
            table.add_row(stage, *cells, str(self._output_of(stage)))
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

    # -- stages ------------------------------------------------------------------------------------------------------

    def run_world(self, console: Any) -> None:
        from lit_rlhf.world import build_world

        files = build_world(self.dir("world"), seed=self.seed, **self.world_options)
        console.print(f"world built: {files.root}")

    def _loggers(self, stage: str, csv: bool = True) -> list[dict[str, Any]] | bool:
        loggers: list[dict[str, Any]] = []
        if csv:  # first, so checkpoints land in runs/<name>/<stage>/checkpoints
            csv_args = {"save_dir": str(self.dir(stage)), "name": "", "version": ""}
            loggers.append({"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": csv_args})
        if self.wandb:
            wandb_args = {"name": f"{self.name}/{stage}", "group": self.name, "save_dir": str(self.root)}
            loggers.append({"class_path": "lit_rlhf.loggers.WandbLogger", "init_args": wandb_args})
        return loggers or False

    def stage_config(self, stage: str, wiring: dict[str, Any], replace: dict[str, Any] | None = None) -> Path:
        """Merge the stage's YAML, the pipeline's overrides and ``wiring`` (``replace``: top-level keys set whole);
        write it; return its path."""
        spec = self.stages[stage]
        config = yaml.safe_load(Path(spec.config).read_text()) or {}
        config = deep_merge(config, spec.overrides)
        config = {**deep_merge(config, wiring), **(replace or {})}
        config = replace_path_prefix(config, STAGE_CONFIG_WORLD, str(self.dir("world")))
        path = self.root / "configs" / f"{stage}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        header = f"# {stage} stage of pipeline {self.name}: {spec.config} + overrides + paths; rerun alone with\n"
        header += f"#   lit-rlhf {'evaluate' if stage == 'evaluate' else 'fit'} -c {path}\n"
        path.write_text(header + yaml.safe_dump(config, sort_keys=False))
        return path

    def fit(self, stage: str, model: dict[str, Any], data: dict[str, Any]) -> None:
        """Run ``lit-rlhf fit`` on the stage's merged config, in this process."""
        from lit_rlhf.cli import build_cli

        wiring = {
            "seed_everything": self.seed,
            "trainer": {
                "default_root_dir": str(self.dir(stage)),
                "logger": self._loggers(stage),
                "enable_progress_bar": self.progress_bar,
            },
            "model": {"init_args": {"export_dir": str(self.export(stage)), **model}},
            # Explicit files and no world_dir: a DataModule would otherwise build its own world.
            "data": {"init_args": {"world_dir": None, **data}},
        }
        config = self.stage_config(stage, wiring)
        with warnings.catch_warnings():  # "args and sys.argv both given": the pipeline's own argv, on purpose
            warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
            cli = build_cli(["-c", str(config)], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        if cli.trainer.interrupted or read_export_metadata(self.export(stage)) is None:
            raise RuntimeError(f"stage {stage} stopped before writing {self.export(stage)}; rerun to continue")

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
        base = str(self.export("pretrain"))
        model = {"model_name_or_path": base, "tokenizer_name_or_path": base, "model_config": None}
        self.fit("sft", model=model, data={"train_files": str(w.sft_train), "val_files": str(w.sft_val)})

    def run_comparisons(self, console: Any) -> None:
        from lit_rlhf.world.comparisons import collect_world_comparisons

        options = {"device": self.device, **self.comparison_options}
        out = self.dir("comparisons")
        stats = collect_world_comparisons(self.export("sft"), self.world.root, out, seed=self.seed, **options)
        console.print(f"comparisons ranked by the simulated labelers: {stats}")

    def run_rm(self, console: Any) -> None:
        c = self.dir("comparisons")
        model = {
            "model_name_or_path": str(self.export("sft")),
            "tokenizer_name_or_path": str(self.export("sft")),
            "model_config": None,
            "reference_files": str(self.world.sft_train),  # InstructGPT §3.5: demonstrations score mean 0
        }
        self.fit("rm", model=model, data={"train_files": str(c / "train.jsonl"), "val_files": str(c / "val.jsonl")})

    def _ppo(self, stage: str) -> None:
        w = self.world
        model = {"model_name_or_path": str(self.export("sft")), "reward_model_path": str(self.export("rm"))}
        # the world's own PPO prompts (InstructGPT: a third prompt set, apart from SFT's and the RM's)
        data = {
            "train_files": str(w.ppo_prompts),
            "val_files": str(w.sft_val),
            "pretraining_files": str(w.corpus_train),
        }
        self.fit(stage, model=model, data=data)

    def run_ppo(self, console: Any) -> None:
        self._ppo("ppo")

    def run_ppo_ptx(self, console: Any) -> None:
        self._ppo("ppo_ptx")

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
        from lit_rlhf.cli import build_cli

        policies = {"base": self.export("pretrain"), "base_prompted": self.dir("base_prompted")}
        policies |= {s: self.export(s) for s in ("sft", "ppo", "ppo_ptx")}
        fewshot = self.fewshot_probes()
        wiring = {
            "seed_everything": self.seed,
            "baseline": "sft",
            "prompts_file": str(self.world.heldout),
            "judge": PANEL_JUDGE,
            "rm_dir": str(self.export("rm")),
            "pretraining_file": str(self.world.corpus_val),
            "fewshot_file": str(fewshot) if fewshot else None,
            "response_metrics": WORLD_METRICS,
            "output_dir": str(self.dir("evaluate")),
            "trainer": {"logger": self._loggers("evaluate", csv=False)},
        }
        config = self.stage_config("evaluate", wiring, replace={"policies": {k: str(v) for k, v in policies.items()}})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
            build_cli(["evaluate", "-c", str(config)])

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


def pipeline_command(
    self: Any,
    model: Any = None,
    datamodule: Any = None,
    *,
    name: str = "demo",
    runs_dir: str = "runs",
    seed: int = 0,
    world: dict[str, Any] | None = None,
    pretrain: StageSpec | None = None,
    sft: StageSpec | None = None,
    comparisons: dict[str, Any] | None = None,
    rm: StageSpec | None = None,
    ppo: StageSpec | None = None,
    ppo_ptx: StageSpec | None = None,
    evaluate: StageSpec | None = None,
    few_shot: int = 3,
    wandb: bool = True,
    until: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the whole InstructGPT recipe on the instruction world, stage by stage, resuming where it stopped.

    world -> pretrain -> sft -> comparisons -> rm -> ppo, ppo_ptx -> base_prompted -> evaluate. Each stage runs its own YAML with the same modules as 'lit-rlhf fit'; outputs go to <runs_dir>/<name>/<stage>/
    and a stage whose complete output exists is skipped, so a rerun continues where the last one stopped. The
    evaluation (win rates against SFT, judged by the world's held-out panel) lands in
    <runs_dir>/<name>/evaluate/results.json. --trainer.enable_progress_bar=false turns the progress bars of every
    stage off (logs, notebooks); other --trainer options are not passed on. Needs no --model or --data.

    Args:
        model: Unused (LightningCLI passes it to every subcommand).
        datamodule: Unused.
        name: The run's name: its directory under --runs_dir and its W&B group.
        runs_dir: Where pipeline runs go.
        seed: Seeds the world, every stage (seed_everything) and the comparison sampling.
        world: Options of lit_rlhf.world.build_world (n_train, n_corpus, vocab_size, ...); defaults otherwise.
        pretrain: The base LM stage: {config: configs/pretrain/tiny.yaml, overrides: {...}}.
        sft: The SFT stage (starts from the pretrained base).
        comparisons: Options of lit_rlhf.world.comparisons.collect_comparisons (k_min, k_max, max_prompts,
            max_new_tokens, batch_size, ...): K responses per prompt sampled from the SFT policy, ranked by the
            world's labelers.
        rm: The reward-model stage (starts from SFT; trained on the comparisons).
        ppo: The PPO stage (policy and reference from SFT, reward and value from the RM).
        ppo_ptx: The PPO-ptx stage (PPO plus the pretraining loss on the world's corpus).
        evaluate: The evaluation: {config: configs/evaluate/tiny.yaml, overrides: {...}}; the pipeline sets the
            policies (base, base_prompted, sft, ppo, ppo_ptx), the prompts, the judge and the output directory.
        few_shot: Demonstrations put before every prompt of the prompted base (base_prompted).
        wandb: Log every stage to W&B as its own run, grouped by --name (offline without a key); CSV metrics are
            written to <stage>/metrics.csv either way.
        until: Stop after this stage (one of world, pretrain, sft, comparisons, rm, ppo, ppo_ptx, base_prompted,
            evaluate).
    """
    specs = {"pretrain": pretrain, "sft": sft, "rm": rm, "ppo": ppo, "ppo_ptx": ppo_ptx, "evaluate": evaluate}
    problems = [f"--{k} needs a config (e.g. {{config: configs/{k}/tiny.yaml}})" for k, v in specs.items() if v is None]
    problems += [
        f"--{k}.config {v.config}: no such file" for k, v in specs.items() if v and not Path(v.config).is_file()
    ]
    if until is not None and until not in STAGES:
        problems.append(f"--until {until!r} is not a stage; use one of {list(STAGES)}")
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
    pipeline = Pipeline(
        name, runs_dir, seed, world or {}, specs, comparisons or {}, few_shot, wandb, device, progress_bar
    )
    return pipeline.run(until=until)


__all__ = ["INPUTS", "STAGES", "Pipeline", "StageSpec", "deep_merge", "few_shot_chat_template", "pipeline_command"]
