"""A user's files made into the explicit files of the pipeline's stages (``lit-rlhf pipeline`` with ``data:``).

The data step of the own-data pipeline reads every file once, stops on a bad record with ``path:line`` (or skips
it, with ``on_bad_record: skip``), and writes, into ``<run>/data/``::

    rm_preferences.jsonl       the preference records of one half of the prompts: the RM trains on them
    gold_rm_preferences.jsonl  the other half: the gold RM, the evaluation's judge, trains on them (no judge given)
    ppo_prompts.jsonl          the PPO prompts, without the evaluation's (and without repeats)
    eval_prompts.jsonl         the evaluation's prompts, split off prompt_files (no eval_prompt_files given)
    pretraining_train.jsonl    PPO-ptx's pretraining text ({"text"})
    pretraining_val.jsonl      held-out pretraining text: the evaluation's LM loss (alignment tax)
    corpus.jsonl               {"text"} for a base LM trained from scratch (no model given): the demonstrations,
                               the RM half's prompts with their best answers, and the pretraining text
    split.json                 what went where, with the options and seed; written last

Every split is seeded and by prompt: a prompt's records go to one side only, so the two halves share no prompt, and
no evaluation prompt is a PPO prompt.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lit_rlhf.data.collate import render_plain
from lit_rlhf.data.prompts import parse_prompt_record, parse_text_record
from lit_rlhf.data.records import (
    DataError,
    Files,
    Message,
    OnError,
    Source,
    TiePolicy,
    load_records,
    parse_ranking_record,
    parse_sft_record,
)
from lit_rlhf.models import atomic_directory

SPLIT_FILE = "split.json"
HELD_OUT_TEXT_FRACTION = 0.1
"""Share of the pretraining records kept out of PPO-ptx for the evaluation's LM loss (at least one)."""
EVAL_SHARE_CAP = 0.5
"""A count of evaluation prompts takes at most this share of the distinct prompts, so that a config written for a
large file (``eval_prompts: 100``) still leaves PPO its half of a small one."""


@dataclass(frozen=True)
class PipelineData:
    """Your files, in place of the instruction world (``data:`` in a pipeline config, ``--data.*`` flags).

    Args:
        sft_files: Demonstrations for SFT: {"prompt", "completion"}, {"messages": [...]} or
            {"instruction", "input", "output"}; a path, glob or list (JSONL, JSON, Parquet, CSV, saved dataset).
        preference_files: Comparisons for the reward models: {"prompt", "chosen", "rejected"}, hh-rlhf
            {"chosen", "rejected"} dialogues, K-wise {"prompt", "completions", "ranking"}, chat messages. Split by
            prompt into two seeded halves: one trains the RM, the other the gold RM that judges the evaluation
            (with --judge_model_path, all of them train the RM).
        prompt_files: Prompts for PPO: {"prompt"} or {"messages"} (an SFT or preference record gives its prompt).
            Without eval_prompt_files, the evaluation's prompts are split off first; repeated prompts are dropped.
        pretraining_files: {"text"} records: PPO-ptx's pretraining mix (a tenth held out for the evaluation's LM
            loss). Without them there is no ppo_ptx stage.
        eval_prompt_files: The evaluation's held-out prompts; null: split off prompt_files.
        eval_prompts: How many prompts to split off prompt_files for the evaluation: a share (a float in (0, 1)),
            or a count (an int >= 1) capped at half of the distinct prompts; seeded by --seed.
        min_ppo_prompts: The fewest distinct PPO prompts (after the evaluation's) the data step accepts; fewer stop
            it with one line saying what is needed. At the shipped PPO configs' 16 prompts an iteration, 20 gives one
            iteration per pass.
        on_bad_record: A bad record in any file: 'error' stops before training listing them as path:line; 'skip'
            drops it (and the stages skip theirs too), reporting the count.
        ties: Tied completions in a K-wise ranking (``lit-rlhf label export`` nests them: ``[0, [1, 2], 3]``): 'drop'
            keeps the record and pairs no tied completions with each other (InstructGPT dropped ties), in the RM, gold
            RM and DPO stages; 'error' stops at the first tie, naming its file:line.
    """

    sft_files: Files = None
    preference_files: Files = None
    prompt_files: Files = None
    pretraining_files: Files = None
    eval_prompt_files: Files = None
    eval_prompts: int | float = 0.1
    min_ppo_prompts: int = 20
    on_bad_record: OnError = "error"
    ties: TiePolicy = "drop"

    def problems(self) -> list[str]:
        """What is wrong with these options, each naming its flag (empty when nothing is)."""
        problems = [
            f"--data.{name} is required: a path, glob or list of record files"
            for name in ("sft_files", "preference_files", "prompt_files")
            if not getattr(self, name)
        ]
        if isinstance(self.eval_prompts, bool) or not (
            (isinstance(self.eval_prompts, int) and self.eval_prompts >= 1)
            or (isinstance(self.eval_prompts, float) and 0 < self.eval_prompts < 1)
        ):
            problems.append(f"--data.eval_prompts must be a count >= 1 or a share in (0, 1), got {self.eval_prompts}")
        if (
            isinstance(self.min_ppo_prompts, bool)
            or not isinstance(self.min_ppo_prompts, int)
            or self.min_ppo_prompts < 1
        ):
            problems.append(f"--data.min_ppo_prompts must be a count >= 1, got {self.min_ppo_prompts}")
        return problems

    def record(self) -> dict[str, Any]:
        """The options as JSON values (what ``split.json`` records, and compares on a rerun)."""
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class DataFiles:
    """Where the data step writes (see the module docstring)."""

    root: Path
    rm_preferences: Path
    gold_rm_preferences: Path
    ppo_prompts: Path
    eval_prompts: Path
    pretraining_train: Path
    pretraining_val: Path
    corpus: Path
    split: Path

    @classmethod
    def at(cls, root: str | Path) -> DataFiles:
        root = Path(root)
        return cls(
            root=root,
            rm_preferences=root / "rm_preferences.jsonl",
            gold_rm_preferences=root / "gold_rm_preferences.jsonl",
            ppo_prompts=root / "ppo_prompts.jsonl",
            eval_prompts=root / "eval_prompts.jsonl",
            pretraining_train=root / "pretraining_train.jsonl",
            pretraining_val=root / "pretraining_val.jsonl",
            corpus=root / "corpus.jsonl",
            split=root / SPLIT_FILE,
        )

    def report(self) -> dict[str, Any] | None:
        """``split.json``, or None when the data step has not finished."""
        return json.loads(self.split.read_text()) if self.split.is_file() else None


# --------------------------------------------------------------------------- reading, one parse per format


@dataclass(frozen=True)
class Prompt:
    """A prompt and the record it is written as in a prompt file."""

    messages: list[Message]
    record: dict[str, Any]


def parse_any_prompt(record: Any, source: Source) -> Prompt:
    """The prompt of a prompt, SFT or preference record; a prompt record is kept as written (extra keys too)."""
    messages = parse_prompt_record(record, source).prompt
    return Prompt(messages, record if {"prompt", "messages"} & record.keys() else {"messages": messages})


def prompt_key(messages: Sequence[Message]) -> str:
    """One string per distinct prompt (two records with the same turns have the same key)."""
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)


def _load(files: Files, parse: Callable[[Any, Source], Any], on_error: OnError, what: str) -> tuple[list, int]:
    try:
        parsed, skipped = load_records(files, parse, on_error)
    except DataError as e:
        raise DataError(f"{what}: {e}") from None
    return parsed, len(skipped)


def _with_raw(parse: Callable[[Any, Source], Any]) -> Callable[[Any, Source], tuple[Any, Any]]:
    return lambda record, source: (record, parse(record, source))


def _parse_preference(record: Any, source: Source) -> Any:
    # Ties pass here; the RM stage applies its own tie policy (--data.ties) to the half it trains on.
    return parse_ranking_record(record, source, ties="drop")


# --------------------------------------------------------------------------- splits


def split_by_prompt(
    keys: Sequence[str], n_first: int | float, seed: int | str, cap: float | None = None
) -> tuple[list[int], list[int]]:
    """Indices of ``keys`` split in two, every key's items on one side, the distinct keys shuffled by ``seed``.

    Args:
        keys: One key per item (its prompt).
        n_first: Distinct keys of the first side: a count, or a share of them (a float in (0, 1), at least one).
        seed: Seeds the shuffle.
        cap: A count takes at most this share of the distinct keys (at least one); None: no cap.

    Returns:
        The item indices of each side, in their original order.
    """
    distinct = list(dict.fromkeys(keys))
    random.Random(seed).shuffle(distinct)
    n = n_first if isinstance(n_first, int) else max(1, round(n_first * len(distinct)))
    if cap is not None and isinstance(n_first, int):
        n = min(n, max(1, int(cap * len(distinct))))
    first = set(distinct[:n])
    return [i for i, k in enumerate(keys) if k in first], [i for i, k in enumerate(keys) if k not in first]


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for n, record in enumerate(records, start=1):  # noqa: B007
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return n


def _files(files: Files) -> list[str]:
    return [] if files is None else [files] if isinstance(files, str) else [str(f) for f in files]


@dataclass
class Inputs:
    """The user's records, parsed, with the count of bad records skipped per file kind."""

    sft: list[Any]
    preferences: list[tuple[dict[str, Any], Any]]
    prompts: dict[str, Prompt]
    texts: list[str]
    n_prompt_records: int
    skipped: dict[str, int]

    @classmethod
    def read(cls, o: PipelineData) -> Inputs:
        """Read and check every file (the evaluation's prompts too) before anything is written."""
        sft, sft_skipped = _load(o.sft_files, parse_sft_record, o.on_bad_record, "--data.sft_files")
        preferences, pref_skipped = _load(
            o.preference_files, _with_raw(_parse_preference), o.on_bad_record, "--data.preference_files"
        )
        records, prompt_skipped = _load(o.prompt_files, parse_any_prompt, o.on_bad_record, "--data.prompt_files")
        prompts: dict[str, Prompt] = {}
        for p in records:  # the first of repeated prompts
            prompts.setdefault(prompt_key(p.messages), p)
        texts, text_skipped = [], 0
        if o.pretraining_files:
            flag = "--data.pretraining_files"
            texts, text_skipped = _load(o.pretraining_files, parse_text_record, o.on_bad_record, flag)
        if o.eval_prompt_files:
            _load(o.eval_prompt_files, parse_any_prompt, o.on_bad_record, "--data.eval_prompt_files")
        skipped = {
            "sft": sft_skipped,
            "preferences": pref_skipped,
            "prompts": prompt_skipped,
            "pretraining": text_skipped,
        }
        return cls(sft, preferences, prompts, texts, len(records), skipped)

    @property
    def preference_keys(self) -> list[str]:
        return [prompt_key(example.prompt) for _, example in self.preferences]


@dataclass
class Splits:
    """Indices into :class:`Inputs`: preferences for the RM and the gold RM, prompts for evaluation and PPO,
    pretraining texts for PPO-ptx and held out."""

    rm: list[int]
    gold_rm: list[int]
    eval: list[int]
    ppo: list[int]
    text_train: list[int]
    text_val: list[int]

    @classmethod
    def make(cls, inputs: Inputs, o: PipelineData, seed: int, gold_rm: bool) -> Splits:
        n_pref = len(inputs.preferences)
        if gold_rm:  # halves of the distinct prompts: no prompt trains both reward models
            rm, gold = split_by_prompt(inputs.preference_keys, 0.5, f"{seed}:preferences")
        else:
            rm, gold = list(range(n_pref)), []
        if gold_rm and not gold:
            raise DataError(f"--data.preference_files: {n_pref} record(s) of one prompt; too few for two halves")
        keys = list(inputs.prompts)
        if o.eval_prompt_files:
            eval_idx, ppo = [], list(range(len(keys)))
        else:
            eval_idx, ppo = split_by_prompt(keys, o.eval_prompts, f"{seed}:eval_prompts", cap=EVAL_SHARE_CAP)
        if len(ppo) < o.min_ppo_prompts:
            held = f", after the {len(eval_idx)} held out for the evaluation (--data.eval_prompts)" if eval_idx else ""
            raise DataError(
                f"--data.prompt_files: {len(ppo)} distinct PPO prompt(s) of {len(keys)}{held}; the recipe needs at "
                f"least {o.min_ppo_prompts} (--data.min_ppo_prompts): give more prompts, or the evaluation's own "
                "with --data.eval_prompt_files"
            )
        order = list(range(len(inputs.texts)))
        random.Random(f"{seed}:pretraining").shuffle(order)
        n_val = max(1, round(HELD_OUT_TEXT_FRACTION * len(order))) if len(order) >= 2 else 0
        return cls(rm, gold, eval_idx, ppo, sorted(order[n_val:]), sorted(order[:n_val]))


def prepare_data(options: PipelineData, out_dir: str | Path, seed: int, gold_rm: bool) -> dict[str, Any]:
    """Read the user's files and write the stages' files into ``out_dir`` (replaced atomically); return the report.

    Args:
        options: The files and how to split them.
        out_dir: The data step's directory.
        seed: Seeds every split.
        gold_rm: Split the preferences in two halves, the second for the gold RM; else all go to the RM.
    """
    # 1. Read and check everything; 2. split; 3. write, split.json last.
    inputs = Inputs.read(options)
    splits = Splits.make(inputs, options, seed, gold_rm)
    files = DataFiles.at(out_dir)
    with atomic_directory(files.root) as tmp:
        t = DataFiles.at(tmp)
        prompts = list(inputs.prompts.values())
        write_jsonl(t.rm_preferences, (inputs.preferences[i][0] for i in splits.rm))
        if splits.gold_rm:
            write_jsonl(t.gold_rm_preferences, (inputs.preferences[i][0] for i in splits.gold_rm))
        write_jsonl(t.ppo_prompts, (prompts[i].record for i in splits.ppo))
        if splits.eval:
            write_jsonl(t.eval_prompts, (prompts[i].record for i in splits.eval))
        if splits.text_train:
            write_jsonl(t.pretraining_train, ({"text": inputs.texts[i]} for i in splits.text_train))
        if splits.text_val:
            write_jsonl(t.pretraining_val, ({"text": inputs.texts[i]} for i in splits.text_val))
        rm_examples = [inputs.preferences[i][1] for i in splits.rm]
        corpus = corpus_texts(inputs.sft, rm_examples, [inputs.texts[i] for i in splits.text_train])
        write_jsonl(t.corpus, ({"text": text} for text in corpus))
        report = split_report(options, seed, inputs, splits, files, len(corpus))
        t.split.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def split_report(
    o: PipelineData, seed: int, inputs: Inputs, splits: Splits, files: DataFiles, n_corpus: int
) -> dict[str, Any]:
    """What ``split.json`` says: the options, and what went where, in records and distinct prompts."""
    pref_keys, prompt_keys = inputs.preference_keys, list(inputs.prompts)

    def side(path: Path, idx: list[int], keys: list[str]) -> dict[str, Any]:
        return {"file": str(path), "records": len(idx), "prompts": len({keys[i] for i in idx})}

    if o.eval_prompt_files:
        eval_side = {"files": _files(o.eval_prompt_files), "split": "given: --data.eval_prompt_files"}
    else:
        how = f"seeded, {o.eval_prompts} of the distinct prompts of --data.prompt_files, held out before PPO"
        if isinstance(o.eval_prompts, int) and len(splits.eval) < o.eval_prompts:
            how += f" (capped at {EVAL_SHARE_CAP:g} of them: {len(splits.eval)})"
        eval_side = {**side(files.eval_prompts, splits.eval, prompt_keys), "split": how}
    pretraining = None
    if inputs.texts:
        pretraining = {
            "files": _files(o.pretraining_files),
            "skipped": inputs.skipped["pretraining"],
            "train": {"file": str(files.pretraining_train), "records": len(splits.text_train)},
            "val": {"file": str(files.pretraining_val), "records": len(splits.text_val)} if splits.text_val else None,
        }
    preferences = {
        "files": _files(o.preference_files),
        "records": len(inputs.preferences),
        "prompts": len(set(pref_keys)),
        "skipped": inputs.skipped["preferences"],
        "split": "seeded, by prompt, in two halves" if splits.gold_rm else "none: all train the RM",
        "rm": side(files.rm_preferences, splits.rm, pref_keys),
    }
    if splits.gold_rm:
        preferences["gold_rm"] = side(files.gold_rm_preferences, splits.gold_rm, pref_keys)
    return {
        "options": o.record(),
        "seed": seed,
        "sft": {"files": _files(o.sft_files), "records": len(inputs.sft), "skipped": inputs.skipped["sft"]},
        "preferences": preferences,
        "prompts": {
            "files": _files(o.prompt_files),
            "records": inputs.n_prompt_records,
            "repeats_dropped": inputs.n_prompt_records - len(prompt_keys),
            "skipped": inputs.skipped["prompts"],
            "ppo": side(files.ppo_prompts, splits.ppo, prompt_keys),
            "eval": eval_side,
        },
        "pretraining": pretraining,
        "corpus": {"file": str(files.corpus), "records": n_corpus},
    }


def corpus_texts(sft: Sequence[Any], preferences: Sequence[Any], texts: Sequence[str]) -> list[str]:
    """Plain text for a base LM trained from scratch: each demonstration and each preference prompt with its best
    answer, rendered in the HH format the stages use without a chat template, then the pretraining text."""
    out = [render_plain(e.prompt) + " " + e.completion for e in sft]
    out += [render_plain(e.prompt) + " " + e.completions[e.ranks.index(min(e.ranks))] for e in preferences]
    return out + list(texts)


def split_lines(report: dict[str, Any]) -> list[str]:
    """The data step's counts, a line per stage's share, as the pipeline prints them (from ``split.json``)."""
    sft, p, q, text = report["sft"], report["preferences"], report["prompts"], report["pretraining"]

    def skipped(n: int) -> str:
        return f", {n} bad record(s) skipped" if n else ""

    lines = [f"SFT       {sft['records']} demonstrations{skipped(sft['skipped'])}"]
    lines.append(f"RM        {p['rm']['records']} preference records, {p['rm']['prompts']} prompts")
    if "gold_rm" in p:
        gold = p["gold_rm"]
        lines.append(f"gold RM   {gold['records']} preference records, {gold['prompts']} other prompts (the judge)")
    lines[-1] += skipped(p["skipped"])
    repeats = f", {q['repeats_dropped']} repeated prompt(s) dropped" if q["repeats_dropped"] else ""
    lines.append(f"PPO       {q['ppo']['prompts']} prompts{repeats}{skipped(q['skipped'])}")
    ev = q["eval"]
    lines.append(
        f"evaluate  {ev['prompts']} held-out prompts ({ev['split']})" if "prompts" in ev else f"evaluate  {ev['split']}"
    )
    if text:
        val = text["val"]["records"] if text["val"] else 0
        lines.append(f"PPO-ptx   {text['train']['records']} pretraining texts, {val} held out for the LM loss")
    return lines


def eval_prompt_files(options: PipelineData, files: DataFiles) -> Files:
    """The evaluation's prompts: the user's eval_prompt_files, or those split off prompt_files."""
    return options.eval_prompt_files or str(files.eval_prompts)


__all__ = [
    "DataFiles",
    "PipelineData",
    "Prompt",
    "corpus_texts",
    "eval_prompt_files",
    "parse_any_prompt",
    "prepare_data",
    "prompt_key",
    "split_by_prompt",
    "split_lines",
]
