"""Write the instruction world to disk as ordinary record files and a tokenizer.

Layout of ``out_dir``::

    sft/train.jsonl, sft/val.jsonl    {"prompt", "completion"} demonstrations, by writers with the demo_* habits
    eval/heldout.jsonl                {"prompt", "completion", "kind", "difficulty", "constraint", "constrained"}
                                      distinct held-out prompts, exact answers in the required form
    dev/prompts.jsonl                 the same on the development slice (``tasks.DEV_FRACTION``): where settings
                                      are chosen, judged by the training labelers (``labelers.dev_judge``)
    corpus/train.jsonl, corpus/val.jsonl   {"text"} pretraining documents
    ppo/prompts.jsonl                 {"prompt"} RL-pool prompts for PPO
    comparisons/train_prompts.jsonl   {"prompt", "completion", "kind"} RL-pool prompts to collect comparisons
    comparisons/val_prompts.jsonl     the same on held-out-split prompts (RM validation)
    tokenizer/                        byte-level BPE trained on the corpus and the rendered demonstrations
    world.json                        the parameters and seed; written last

Inputs are split four ways by a stable hash (``tasks.input_pool``), as InstructGPT's SFT, RM and PPO prompt sets
are separate: demonstrations use the SFT pool only; comparison and PPO prompts the RL pool (inputs SFT never saw);
choosing settings the dev pool; evaluation and RM validation the held-out split.

World version 4 (``constraints.py``): :data:`~lit_rlhf.world.constraints.CONSTRAINED_SHARE` of every file's prompts,
of every kind, end with an explicit constraint on the answer's form, and the demonstrations are written by
:data:`~lit_rlhf.world.labelers.N_WRITERS` people with persistent habits (``labelers.writers``): with the demo_*
rates of ``labelers.HUMAN_FLAWS`` they ignore the constraint two times in three, while the same people, ranking,
judge by the hidden quality that penalises it. Judging is easier than demonstrating, as in the paper.

Every prompt file mixes the same kinds (``kinds``): the operations of ``tasks.py`` and, by default, the
truthfulness (``closed_qa``, ``unanswerable``) and toxicity (``toxicity``, ``toxicity_respectful``) families,
drawn uniformly. A held-out record's ``kind`` says which; its ``completion`` is the one right answer (``"I do not
know."`` for an unanswerable question, a polite description for a toxicity prompt).

Same parameters and seed give byte-identical files. Every stream of randomness is its own ``random.Random`` seeded
from ``(seed, name)``, so changing ``n_val`` does not change the training set.

Rendered examples are 15 to 57 tokens (mean 30; a constraint sentence adds about 10) with the default 512-token
vocabulary: every letter of a spelled word is one token, so the string tasks are learnable letter by letter.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lit_rlhf.models import atomic_directory, train_tokenizer
from lit_rlhf.world.corpus import make_corpus
from lit_rlhf.world.labelers import HUMAN_FLAWS, DemoFlaws, demonstrate, writers
from lit_rlhf.world.tasks import (
    DEFAULT_KINDS,
    FAMILY_KINDS,
    HELDOUT_FRACTION,
    RL_FRACTION,
    TASK_KINDS,
    WORLD_KINDS,
    Task,
    count_distinct_prompts,
    sample_distinct_tasks,
    sample_tasks,
    split_inputs,
)

WORLD_VERSION = 4
"""Bumped whenever the generators change what a given seed produces, so old worlds are rebuilt."""
MANIFEST = "world.json"
WORLD_DEFAULT_KINDS: tuple[str, ...] = DEFAULT_KINDS + FAMILY_KINDS
"""The kinds of a default world: every operation but ``subtract``, and the truthfulness and toxicity families."""


def render_prompt(prompt: str) -> str:
    """The text a prompt is trained and sampled as (fixed by the training stages; masked out of the loss)."""
    return "\n\nHuman: " + prompt + "\n\nAssistant:"


def render_example(prompt: str, completion: str) -> str:
    """The full training text of a demonstration, without the EOS token the stages append."""
    return render_prompt(prompt) + " " + completion


@dataclass(frozen=True)
class WorldFiles:
    """Where a built world's files are.

    Args:
        root: The world directory.
        sft_train: Demonstrations for SFT, ``{"prompt", "completion"}`` JSONL.
        sft_val: Validation demonstrations, same format.
        heldout: Held-out tasks with exact answers, ``{"prompt", "completion", "kind", "difficulty"}`` JSONL.
        corpus_train: Pretraining documents, ``{"text"}`` JSONL.
        corpus_val: Validation documents, same format.
        tokenizer: A Hugging Face tokenizer directory.
        manifest: ``world.json``, the parameters the world was built with.
        ppo_prompts: RL-pool prompts for PPO, ``{"prompt"}`` JSONL.
        comparison_prompts_train: RL-pool prompts to sample and rank, ``{"prompt", "completion", "kind"}``.
        comparison_prompts_val: Held-out-split prompts to sample and rank for RM validation, same format.
        dev_prompts: Distinct dev-pool prompts with exact answers, as ``heldout``: for choosing settings.
    """

    root: Path
    sft_train: Path
    sft_val: Path
    heldout: Path
    corpus_train: Path
    corpus_val: Path
    tokenizer: Path
    manifest: Path
    ppo_prompts: Path
    comparison_prompts_train: Path
    comparison_prompts_val: Path
    dev_prompts: Path

    @classmethod
    def at(cls, root: str | Path) -> WorldFiles:
        """The file paths of a world rooted at ``root`` (whether or not it exists)."""
        root = Path(root)
        return cls(
            root=root,
            sft_train=root / "sft" / "train.jsonl",
            sft_val=root / "sft" / "val.jsonl",
            heldout=root / "eval" / "heldout.jsonl",
            corpus_train=root / "corpus" / "train.jsonl",
            corpus_val=root / "corpus" / "val.jsonl",
            tokenizer=root / "tokenizer",
            manifest=root / MANIFEST,
            ppo_prompts=root / "ppo" / "prompts.jsonl",
            comparison_prompts_train=root / "comparisons" / "train_prompts.jsonl",
            comparison_prompts_val=root / "comparisons" / "val_prompts.jsonl",
            dev_prompts=root / "dev" / "prompts.jsonl",
        )

    def is_complete(self) -> bool:
        """Whether every file of the world exists."""
        files = (self.sft_train, self.sft_val, self.heldout, self.corpus_train, self.corpus_val, self.manifest)
        files += (self.ppo_prompts, self.comparison_prompts_train, self.comparison_prompts_val, self.dev_prompts)
        return all(p.is_file() for p in files) and (self.tokenizer / "tokenizer.json").is_file()


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write ``records`` one JSON object a line (keys in insertion order, UTF-8, ``\\n`` line ends)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def demonstrations(
    tasks: list[Task], rng: random.Random, flaws: DemoFlaws, seed: int | str = 0
) -> list[dict[str, str]]:
    """Demonstrations of ``tasks``, each by a writer drawn from the world's population (``labelers.writers``).

    Args:
        tasks: The tasks.
        rng: Draws the writer of each demonstration and what they do.
        flaws: The population's mean rates.
        seed: Who the writers are (the world's seed).
    """
    population = writers(flaws, seed)
    return [{"prompt": t.prompt, "completion": demonstrate(t, rng, population)} for t in tasks]


def _flaws(params: dict[str, Any]) -> DemoFlaws:
    return DemoFlaws(**{field: params[f"demo_{field}"] for field in DemoFlaws.__dataclass_fields__})


def _validate(params: dict[str, Any]) -> None:
    problems = [
        f"--{k} must be >= 1, got {params[k]}" for k in ("n_train", "n_val", "n_heldout", "n_corpus") if params[k] < 1
    ]
    if params["vocab_size"] < 300:
        problems.append(
            f"--vocab_size must be >= 300 (256 bytes, specials and the letter merges), got {params['vocab_size']}"
        )
    problems += [
        f"--{k} must be >= 0, got {params[k]}"
        for k in ("n_ppo_prompts", "n_comparison_prompts", "n_comparison_val_prompts", "n_dev_prompts")
        if params[k] < 0
    ]
    problems += _flaws(params).problems()
    kinds = params["kinds"].split(",")
    unknown = [k for k in kinds if k not in WORLD_KINDS]
    if unknown:
        problems.append(f"--kinds has unknown kinds {unknown}; use a comma-separated subset of {','.join(WORLD_KINDS)}")
    else:
        problems += _distinct_prompt_problems(params, tuple(kinds))
    if problems:
        raise ValueError("bad world parameters: " + "; ".join(problems))


def _distinct_prompt_problems(params: dict[str, Any], kinds: tuple[str, ...]) -> list[str]:
    # The held-out and dev files hold distinct prompts: no more than the kinds' inputs in that split make.
    counts = {
        "n_heldout": count_distinct_prompts(kinds, heldout=True),
        "n_dev_prompts": count_distinct_prompts(_dev_kinds(kinds), heldout=False, pool="dev"),
    }
    return [
        f"--{flag} {params[flag]} is more than the {count} distinct prompts the kinds {','.join(kinds)} have there"
        for flag, count in counts.items()
        if params[flag] > count
    ]


def _dev_kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
    # A kind of few inputs (closed_qa) may have none in the dev pool.
    return tuple(k for k in kinds if split_inputs(k, False, "dev"))


def build_world(
    out_dir: str | Path,
    seed: int = 0,
    n_train: int = 20000,
    n_val: int = 500,
    n_heldout: int = 600,
    n_corpus: int = 20000,
    vocab_size: int = 512,
    kinds: str = ",".join(WORLD_DEFAULT_KINDS),
    demo_error_rate: float = HUMAN_FLAWS.error_rate,
    demo_toxic_rate: float = HUMAN_FLAWS.toxic_rate,
    demo_invent_rate: float = HUMAN_FLAWS.invent_rate,
    demo_ignore_constraint_rate: float = HUMAN_FLAWS.ignore_constraint_rate,
    demo_preamble_rate: float = HUMAN_FLAWS.preamble_rate,
    demo_padding_rate: float = HUMAN_FLAWS.padding_rate,
    n_ppo_prompts: int = 2000,
    n_comparison_prompts: int = 1000,
    n_comparison_val_prompts: int = 200,
    n_dev_prompts: int = 300,
) -> WorldFiles:
    """Build the instruction world in ``out_dir``, or return the one already there if built with these parameters.

    The directory is written atomically: a crash leaves no ``out_dir`` (or the previous complete world).

    Args:
        out_dir: The world directory.
        seed: Seeds every random choice (and who the writers are); same seed and parameters give byte-identical
            files. The split of inputs and the judges do not depend on it.
        n_train: SFT training demonstrations (SFT-pool inputs, repeats allowed).
        n_val: SFT validation demonstrations (SFT-pool inputs: validation measures fit, not generalisation).
        n_heldout: Held-out prompts, all distinct, their inputs spread as evenly as they can be (held-out inputs only,
            never in any other file).
        n_corpus: Pretraining documents; a further ``max(1, n_corpus // 20)`` are written as corpus validation.
        vocab_size: Tokenizer vocabulary size, the 256 bytes and 2 special tokens included.
        kinds: Comma-separated kinds, from ``WORLD_KINDS``: the operations of ``TASK_KINDS`` (all but ``subtract``
            by default) and the families ``closed_qa``, ``unanswerable``, ``toxicity``, ``toxicity_respectful``.
        demo_error_rate: Mean rate of a small mistake in a demonstration (a swapped or dropped letter, an off-by-one
            number, the false answer to a closed-domain question). Held-out answers are always exact.
        demo_toxic_rate: Mean rate of a toxic demonstration of a ``toxicity`` prompt (no respect instruction).
        demo_invent_rate: Mean rate of an invented answer to an ``unanswerable`` question.
        demo_ignore_constraint_rate: Mean rate of a demonstration in the default form where the prompt's explicit
            constraint asks for another.
        demo_preamble_rate: Mean rate of a preamble ("Sure!", each writer their own) before a demonstration.
        demo_padding_rate: Mean rate of padding ("Hope that helps!", each writer their own) after one.
            The demo_* rates default to ``labelers.HUMAN_FLAWS``, the demo's writers; all 0 make flawless writers
            (the control world). Each writer's own rates scatter around these means (``labelers.writers``).
        n_ppo_prompts: RL-pool prompts (inputs no demonstration uses) written to ``ppo/prompts.jsonl``.
        n_comparison_prompts: RL-pool prompts written for comparison collection (RM training).
        n_comparison_val_prompts: Held-out-split prompts written for comparison collection (RM validation).
        n_dev_prompts: Distinct dev-pool prompts written to ``dev/prompts.jsonl``, for choosing settings.

    Returns:
        The paths of the world's files.
    """
    params = {"world_version": WORLD_VERSION, **{k: v for k, v in locals().items() if k != "out_dir"}}
    _validate(params)
    files = WorldFiles.at(out_dir)
    if files.is_complete() and json.loads(files.manifest.read_text()).get("params") == params:
        return files
    with atomic_directory(out_dir) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; a world is ordinary shared data
        write_world(WorldFiles.at(tmp), params)
    return files


def write_world(files: WorldFiles, params: dict[str, Any]) -> None:
    """Generate the world of ``params`` (``build_world``'s arguments) into ``files``; the manifest last."""
    records = world_records(params)
    for name, rows in records.items():
        write_jsonl(getattr(files, name), rows)
    texts = [r["text"] for r in records["corpus_train"]]
    texts += [render_example(r["prompt"], r["completion"]) for r in records["sft_train"]]
    tokenizer = train_tokenizer(texts, vocab_size=params["vocab_size"])
    tokenizer.save_pretrained(files.tokenizer)
    manifest = {
        "params": params,
        "task_kinds": params["kinds"].split(","),
        "heldout_fraction": HELDOUT_FRACTION,
        "rl_fraction": RL_FRACTION,
        "files": {k: str(Path(v).relative_to(files.root)) for k, v in asdict(files).items() if k != "root"},
    }
    # Written last: its presence (with these params) marks a finished world.
    files.manifest.write_text(json.dumps(manifest, indent=2) + "\n")


def world_records(params: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every record file of the world, by its :class:`WorldFiles` field, in the order written.

    Each file draws from its own streams of randomness, ``random.Random(f"{seed}:{name}")``.
    """
    seed, kinds = params["seed"], tuple(params["kinds"].split(","))

    def stream(name: str) -> random.Random:
        return random.Random(f"{seed}:{name}")

    def demos(split: str, n: int) -> list[dict[str, str]]:
        tasks = sample_tasks(stream(f"sft/{split}"), n, heldout=False, kinds=kinds, pool="sft")
        return demonstrations(tasks, stream(f"writers/{split}"), _flaws(params), seed)

    def comparison_prompts(split: str, n: int) -> list[dict[str, Any]]:
        heldout = split == "val"  # RM validation: held-out inputs; training: the RL pool
        tasks = sample_tasks(stream(f"comparisons/{split}"), n, heldout, kinds, pool=None if heldout else "rl")
        return [{"prompt": t.prompt, "completion": t.answer, "kind": t.kind} for t in tasks]

    heldout = sample_distinct_tasks(stream("eval/heldout"), params["n_heldout"], heldout=True, kinds=kinds)
    dev = sample_distinct_tasks(stream("dev"), params["n_dev_prompts"], False, _dev_kinds(kinds), pool="dev")
    ppo = sample_tasks(stream("ppo"), params["n_ppo_prompts"], False, kinds, pool="rl")
    # The corpus shows the operations' skills; the families' knowledge (facts, insults) is in every corpus.
    skill_kinds = tuple(k for k in kinds if k in TASK_KINDS)
    n_corpus = params["n_corpus"]
    return {
        "sft_train": demos("train", params["n_train"]),
        "sft_val": demos("val", params["n_val"]),
        "heldout": [_eval_record(t) for t in heldout],
        "corpus_train": [{"text": t} for t in make_corpus(stream("corpus/train"), n_corpus, skill_kinds)],
        "corpus_val": [{"text": t} for t in make_corpus(stream("corpus/val"), max(1, n_corpus // 20), skill_kinds)],
        "ppo_prompts": [{"prompt": t.prompt} for t in ppo],
        "comparison_prompts_train": comparison_prompts("train", params["n_comparison_prompts"]),
        "comparison_prompts_val": comparison_prompts("val", params["n_comparison_val_prompts"]),
        "dev_prompts": [_eval_record(t) for t in dev],
    }


def _eval_record(task: Task) -> dict[str, Any]:
    # ``constrained`` is the stratum of ``lit-rlhf evaluate --group_by constrained``.
    return {
        "prompt": task.prompt,
        "completion": task.answer,
        "kind": task.kind,
        "difficulty": task.difficulty,
        "constraint": task.constraint or "none",
        "constrained": task.constraint is not None,
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m lit_rlhf.world --out DIR --seed N``: build the world and print where its files are."""
    parser = argparse.ArgumentParser(prog="python -m lit_rlhf.world", description=build_world.__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the world directory")
    # One flag per build_world parameter, with its default, so the two never drift apart.
    for name, param in inspect.signature(build_world).parameters.items():
        if name != "out_dir":
            parser.add_argument(f"--{name}", type=type(param.default), default=param.default)
    args = vars(parser.parse_args(argv))
    files = build_world(args.pop("out"), **args)
    for name, path in asdict(files).items():
        print(f"{name}: {path}")


__all__ = [
    "WORLD_DEFAULT_KINDS",
    "WorldFiles",
    "build_world",
    "demonstrations",
    "main",
    "render_example",
    "render_prompt",
    "write_jsonl",
]
