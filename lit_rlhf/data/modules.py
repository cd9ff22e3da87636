"""LightningDataModules shared by the stages.

Batch sizes: ``batch_size`` is what one process feeds one forward pass (a micro-batch). The batch of one optimizer
step is ``batch_size x devices x num_nodes x accumulate_grad_batches``; it is printed at the start of fit.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from lit_rlhf.data.collate import (
    IGNORE_INDEX,
    PackedCollator,
    SFTCollator,
    Template,
    TokenCounts,
    Truncation,
    encode_completion,
    encode_prompt,
    encode_text,
    fit_to_length,
    pack_examples,
    pad_right,
)
from lit_rlhf.data.records import (
    DataError,
    Files,
    OnError,
    RankingExample,
    SFTExample,
    TiePolicy,
    load_records,
    parse_ranking_record,
    parse_sft_record,
)
from lit_rlhf.models import load_tokenizer

log = logging.getLogger(__name__)


class ListDataset(Dataset):
    """A map-style dataset over a list."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


class LengthGroupedSampler(DistributedSampler):
    """Shuffle, then order each window of ``batch_size * mega_batch`` examples by length; shard across ranks.

    Consecutive ``batch_size`` indices of the global order have similar lengths, so little of a right-padded batch
    is padding, while the order stays random across windows. With ``num_replicas > 1``, rank ``r`` takes positions
    ``r, r + N, ...`` of that order, so the ranks together see exactly the batches of one process with a batch N
    times larger. (It is a DistributedSampler so that Lightning does not wrap and reshuffle it.)

    Args:
        lengths: Token length of each example.
        batch_size: Examples per global batch (per-process batch x processes).
        mega_batch: Windows of this many batches are sorted together.
        seed: Base seed; the order changes with :meth:`set_epoch`.
        num_replicas: Number of processes sharing the order.
        rank: This process's rank.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        mega_batch: int = 32,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        # DistributedSampler.__init__ needs an initialised process group; set its fields directly instead.
        self.lengths = list(lengths)
        self.window = batch_size * mega_batch
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = True
        self.drop_last = False
        self.num_samples = -(-len(self.lengths) // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = self._order(self.epoch)
        order += order[: self.total_size - len(order)]  # pad so every rank gets the same count
        return iter(order[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples

    def _order(self, epoch: int) -> list[int]:
        rng = random.Random(self.seed + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        windows = [order[i : i + self.window] for i in range(0, len(order), self.window)]
        grouped: list[list[int]] = []
        for w in windows:
            w = sorted(w, key=lambda i: -self.lengths[i])
            grouped.extend(w[i : i + self.batch_size] for i in range(0, len(w), self.batch_size))
        rng.shuffle(grouped)  # batches of similar length, in random order
        return [i for batch in grouped for i in batch]


class ResumableDataLoader(DataLoader):
    """A training DataLoader that drops, once, the batches of the current epoch a resumed checkpoint had consumed.

    Lightning restarts a plain DataLoader from the top of the epoch when it resumes mid-epoch. The DataModule saves
    how many batches of the epoch were done (:meth:`RecordDataModule.state_dict`); the first iteration after a resume
    skips that many, so a resumed run sees exactly the batches an unbroken run would. The sampler must give the same
    order again (a seeded one: :class:`LengthGroupedSampler` or a seeded ``DistributedSampler``).
    """

    datamodule: RecordDataModule | None = None

    def __iter__(self) -> Iterator[Any]:
        skip = self.datamodule.take_batches_to_skip() if self.datamodule is not None else 0
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                yield batch


def split_train_val(items: list[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Hold out ``val_fraction`` of ``items`` (at least one) for validation, reproducibly."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_split must be in (0, 1), got {val_fraction} (--data.val_split)")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(items) * val_fraction)))
    if n_val >= len(items):
        raise DataError(f"only {len(items)} record(s): too few to hold out a validation split; pass val_files")
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [items[i] for i in train], [items[i] for i in val]


class RecordDataModule(L.LightningDataModule):
    """What every stage's DataModule shares: files, the tokenizer, the train/validation split, batching.

    Subclasses take their own options and pass the rest on with ``**kwargs``; LightningCLI (jsonargparse) follows
    ``super().__init__(**kwargs)`` through the class hierarchy, so ``--help`` and ``--print_config`` show these
    options under ``--data.*`` for every DataModule while they are declared and documented only here.

    Args:
        train_files: Training records: a path, glob or list (JSONL, JSON, Parquet, CSV or a saved dataset).
        val_files: Validation records; when None, ``val_split`` of the training records is held out.
        tokenizer_name_or_path: Tokenizer to encode with; linked from the model's options by the CLI.
        val_split: Fraction of training records (prompts, for rankings) held out when there are no ``val_files``.
        max_length: Longest prompt + completion in tokens.
        template: ``auto`` uses the tokenizer's chat template when it has one; ``plain`` always uses the HH
            format (see ``lit_rlhf.data.collate``).
        on_bad_record: ``error`` stops before training listing bad records with file:line; ``skip`` drops them
            and logs the count.
        batch_size: Examples per micro-batch on one process.
        num_workers: DataLoader worker processes.
        seed: Seed for the validation split and shuffling.
        allow_dropping_most: Train even when more than half of the training or validation records are too long
            for ``max_length`` and would be dropped; otherwise such a run stops before training, saying how many.
    """

    def __init__(
        self,
        train_files: Files = None,
        val_files: Files = None,
        tokenizer_name_or_path: str | None = None,
        val_split: float = 0.05,
        max_length: int = 512,
        template: Template = "auto",
        on_bad_record: OnError = "error",
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 42,
        allow_dropping_most: bool = False,
    ) -> None:
        super().__init__()
        self.train_files = train_files
        self.val_files = val_files
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.val_split = val_split
        self.max_length = max_length
        self.template = template
        self.on_bad_record = on_bad_record
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.allow_dropping_most = allow_dropping_most
        self.tokenizer = None
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self._batches_to_skip = 0
        self._check_options()

    def _check_options(self) -> None:
        problems = []
        if self.train_files is None:
            problems.append("give --data.train_files (a path, glob or list)")
        if self.batch_size < 1:
            problems.append(f"--data.batch_size must be >= 1, got {self.batch_size}")
        if self.max_length < 2:
            problems.append(f"--data.max_length must be >= 2, got {self.max_length}")
        if problems:
            raise ValueError("bad data options:\n  " + "\n  ".join(problems))

    # -- files -----------------------------------------------------------------------------------------------

    def load_tokenizer(self):
        if self.tokenizer is None:
            if self.tokenizer_name_or_path is None:
                raise ValueError("no tokenizer: set --model.tokenizer_name_or_path (or a model directory)")
            flag = "--model.tokenizer_name_or_path (or --model.model_name_or_path)"  # linked into --data by the CLI
            self.tokenizer = load_tokenizer(self.tokenizer_name_or_path, flag=flag)
        return self.tokenizer

    def report_lengths(self, split: str, counts: TokenCounts, unit: str = "example") -> None:
        """Warn about the records of ``split`` dropped or truncated for ``max_length``, naming the flags; stop before
        training when more than half would be dropped, unless ``allow_dropping_most``."""
        total = counts.examples + counts.skipped
        dropped_completions = counts.dropped_completions if isinstance(counts, RankingCounts) else 0
        if not (counts.skipped or counts.truncated or dropped_completions):
            log.info("%s: %d %ss", split, counts.examples, unit)
            return
        flags = "--data.max_length or --data.truncation"
        if counts.skipped * 2 > total and not self.allow_dropping_most:
            raise DataError(
                f"{split}: {counts.skipped} of {total} {unit}s are too long for max_length={self.max_length} and "
                f"would be dropped (e.g. {counts.skipped_sources[0]}); change {flags}, or set "
                "--data.allow_dropping_most=true to train on the rest"
            )
        parts = []
        if counts.skipped:
            parts.append(f"{counts.skipped} of {total} {unit}s dropped as too long for max_length={self.max_length}")
        if dropped_completions:
            parts.append(f"{dropped_completions} completion(s) dropped from {unit}s that kept two or more")
        if counts.truncated:
            parts.append(f"{counts.truncated} of {total} {unit}s left-truncated to max_length={self.max_length}")
        log.warning("%s: %s; to change this, set %s", split, ", ".join(parts), flags)

    def load_split(self, parse) -> tuple[list[Any], list[Any]]:
        """Parse the train and validation records (validation split off train when no val_files)."""
        train_files, val_files = self.train_files, self.val_files
        train, skipped = load_records(train_files, parse, self.on_bad_record)
        if skipped:
            log.warning("skipped %d bad training record(s), e.g. %s", len(skipped), skipped[0])
        if val_files:
            val, skipped_val = load_records(val_files, parse, self.on_bad_record)
            if skipped_val:
                log.warning("skipped %d bad validation record(s), e.g. %s", len(skipped_val), skipped_val[0])
        else:
            train, val = split_train_val(train, self.val_split, self.seed)
        return train, val

    def _length_grouped_loader(self, collate, lengths: Sequence[int], group_by_length: bool) -> DataLoader:
        """The training loader: batches of similar length (``group_by_length``) or plainly shuffled.

        Grouped by the global batch: under DDP each rank takes a strided share of every group, so N processes see
        exactly the examples one process would see in a batch N times larger.
        """
        assert self.train_dataset is not None, "call setup() first"
        if not group_by_length:
            return self._train_loader(collate, self._shuffled_sampler())
        world, rank = self._world_and_rank()
        sampler = LengthGroupedSampler(lengths, self.batch_size * world, seed=self.seed, num_replicas=world, rank=rank)
        return self._train_loader(collate, sampler)

    def _world_and_rank(self) -> tuple[int, int]:
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)

    def _shuffled_sampler(self, drop_last: bool = False) -> DistributedSampler:
        """A permutation seeded by ``seed`` and the epoch, dealt to the ranks in strides: the same global order for 1
        or N processes and after a resume (Lightning leaves a DistributedSampler as it is and sets its epoch)."""
        world, rank = self._world_and_rank()
        return DistributedSampler(
            self.train_dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed, drop_last=drop_last
        )

    def _train_loader(self, collate, sampler: Sampler, drop_last: bool = False) -> ResumableDataLoader:
        loader = ResumableDataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=drop_last,
        )
        loader.datamodule = self
        return loader

    def _loader(self, dataset: Dataset, collate) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    # -- resume: the position inside the current epoch ----------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        done = 0
        if self.trainer is not None:
            done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
            if done >= self.trainer.num_training_batches:
                done = 0  # the epoch is over: a resumed run starts the next one from its first batch
        return {"batches_done_in_epoch": int(done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._batches_to_skip = int(state_dict.get("batches_done_in_epoch", 0))

    def take_batches_to_skip(self) -> int:
        """The batches the next training iteration must skip (once: the count is reset)."""
        skip, self._batches_to_skip = self._batches_to_skip, 0
        return skip


class SFTDataModule(RecordDataModule):
    """Demonstrations for supervised fine-tuning (InstructGPT step 1).

    Records: ``{"prompt", "completion"}``, ``{"messages": [...]}``, ``{"instruction", "input", "output"}``; with
    ``plain_text``, also ``{"text"}``. The options every DataModule shares are :class:`RecordDataModule`'s.

    Args:
        truncation: Too-long examples: ``left_truncate`` drops the oldest prompt tokens, ``skip`` drops the
            example, ``error`` stops naming the record. Counts are logged.
        packing: Concatenate examples into rows of ``max_length`` tokens (no padding; see ``pack_examples``).
        group_by_length: Batch examples of similar length together (little padding, exact attention).
        plain_text: Also accept plain text ``{"text"}`` records, learned on every token with no prompt or template
            (pretraining a base LM; pair with ``packing``). A text longer than ``max_length`` keeps its beginning.
        **kwargs: The shared options of :class:`RecordDataModule` (``train_files``, ``batch_size``, ...).
    """

    def __init__(
        self,
        truncation: Truncation = "left_truncate",
        packing: bool = False,
        group_by_length: bool = True,
        plain_text: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # the tokenizer is the model's option (linked by the CLI): saved once, with the model, so the merged
        # hparams never hold two values for it
        self.save_hyperparameters(ignore=["tokenizer_name_or_path"])
        self.truncation = truncation
        self.packing = packing
        self.plain_text = plain_text
        self.group_by_length = group_by_length
        self.counts: dict[str, TokenCounts] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        tokenizer = self.load_tokenizer()
        train, val = self.load_split(functools.partial(parse_sft_record, allow_text=self.plain_text))
        train_rows, self.counts["train"] = self.encode(train)
        val_rows, self.counts["val"] = self.encode(val)
        for split, counts in self.counts.items():
            self.report_lengths(split, counts)
        if not train_rows:
            raise DataError(f"no training example fits max_length={self.max_length} (--data.max_length)")
        self.train_lengths = [len(r["prompt_ids"]) + len(r["completion_ids"]) for r in train_rows]
        if self.packing:
            rng = random.Random(self.seed)
            rng.shuffle(train_rows)
            train_rows = pack_examples(train_rows, self.max_length)
        self.train_dataset = ListDataset(train_rows)
        self.val_dataset = ListDataset(val_rows)
        self.pad_token_id = tokenizer.pad_token_id

    def encode(self, examples: list[SFTExample]) -> tuple[list[dict[str, list[int]]], TokenCounts]:
        """Tokenise demonstrations into ``{"prompt_ids", "completion_ids"}``, applying the truncation policy."""
        tokenizer = self.load_tokenizer()
        counts = TokenCounts()
        rows = []
        for ex in examples:
            if ex.prompt:
                prompt_ids = encode_prompt(tokenizer, ex.prompt, self.template)
                completion_ids = encode_completion(tokenizer, ex.prompt, ex.completion, self.template)
            else:  # plain text: no prompt, no template
                prompt_ids, completion_ids = [], encode_text(tokenizer, ex.completion)
            fitted = fit_to_length(prompt_ids, completion_ids, self.max_length, self.truncation, ex.source)
            if fitted is None:
                counts.skipped += 1
                counts.skipped_sources.append(str(ex.source))
                continue
            counts.truncated += len(fitted[0]) + len(fitted[1]) < len(prompt_ids) + len(completion_ids)
            counts.examples += 1
            rows.append({"prompt_ids": fitted[0], "completion_ids": fitted[1]})
        return rows, counts

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None, "call setup() first"
        if self.packing:
            return self._train_loader(PackedCollator(self.pad_token_id), self._shuffled_sampler())
        return self._length_grouped_loader(SFTCollator(self.pad_token_id), self.train_lengths, self.group_by_length)

    def val_dataloader(self) -> DataLoader:
        assert self.val_dataset is not None, "call setup() first"
        return self._loader(self.val_dataset, SFTCollator(self.pad_token_id))

    def padding_fraction(self, loader: DataLoader | None = None, max_batches: int | None = None) -> float:
        """Share of token slots in the batches of ``loader`` (default: training) that are padding."""
        loader = loader or self.train_dataloader()
        pad = total = 0
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            mask = batch["attention_mask"]
            pad += int((mask == 0).sum())
            total += mask.numel()
        return pad / max(total, 1)


# --------------------------------------------------------------------------- preferences (reward model)


class PreferenceCollator:
    """Batch tokenised ranking examples: every completion of every prompt is one right-padded row.

    Each example is ``{"prompt_ids": list[int], "completion_ids": list[list[int]], "ranks": list[int]}``. The batch
    holds ``input_ids`` and ``attention_mask`` (n, length) with n = the sum of K over the prompts, ``labels``
    (n, length) the completion tokens (``IGNORE_INDEX`` on prompt and padding: what DPO scores), ``group_ids``
    (n,) the prompt of each row (0 .. prompts-1) and ``ranks`` (n,) its rank within the prompt (0 = best). Examples
    that carry ``reference_logps`` (one per completion; DPO's precomputed reference) add them as (n,) float32.

    Args:
        pad_token_id: The pad token (never EOS, so the RM finds each row's EOS as its last non-pad token).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs, labels, group_ids, ranks = [], [], [], []
        for g, e in enumerate(examples):
            for completion_ids, rank in zip(e["completion_ids"], e["ranks"], strict=True):
                seqs.append(e["prompt_ids"] + completion_ids)
                labels.append([IGNORE_INDEX] * len(e["prompt_ids"]) + completion_ids)
                group_ids.append(g)
                ranks.append(rank)
        batch = {
            "input_ids": pad_right(seqs, self.pad_token_id),
            "attention_mask": pad_right([[1] * len(s) for s in seqs], 0),
            "labels": pad_right(labels, IGNORE_INDEX),
            "group_ids": torch.tensor(group_ids, dtype=torch.long),
            "ranks": torch.tensor(ranks, dtype=torch.long),
        }
        if examples and all("reference_logps" in e for e in examples):
            reference = [x for e in examples for x in e["reference_logps"]]
            batch["reference_logps"] = torch.tensor(reference, dtype=torch.float32)
        return batch


@dataclass
class RankingCounts(TokenCounts):
    """:class:`TokenCounts` of rankings (``examples`` and ``skipped`` count prompts), and the completions dropped as
    too long from prompts that kept two or more."""

    dropped_completions: int = 0


class PreferenceDataModule(RecordDataModule):
    """Ranked completions for the reward model (InstructGPT step 2); one prompt with its K completions is one
    batch element (``batch_size`` counts prompts; the forward pass holds the sum of their K completions).

    Records: ``{"prompt", "chosen", "rejected"}``; hh-rlhf ``{"chosen", "rejected"}`` dialogues;
    ``{"prompt", "completions", "ranking"}`` with K >= 2 (indices best first); prompts may be message lists. The
    options every DataModule shares are :class:`RecordDataModule`'s.

    Args:
        truncation: Too-long examples: ``left_truncate`` drops the oldest prompt tokens (the same for all K
            completions; the completions are never cut, since the reward is read at their EOS), ``skip`` drops the
            completions that do not fit whole, ``error`` stops naming the record. A completion that cannot fit is
            dropped and the others keep their ranks; the prompt is dropped when fewer than two remain.
        ties: A tie in a ranking: ``error`` stops naming the record; ``drop`` keeps it, tied completions form no pair.
        group_by_length: Batch prompts of similar length together (little padding).
        **kwargs: The shared options of :class:`RecordDataModule` (``train_files``, ``batch_size``, ...).
    """

    def __init__(
        self,
        truncation: Truncation = "left_truncate",
        ties: TiePolicy = "error",
        group_by_length: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["tokenizer_name_or_path"])  # saved with the model (see SFTDataModule)
        self.truncation = truncation
        self.ties = ties
        self.group_by_length = group_by_length
        self.counts: dict[str, TokenCounts] = {}
        self.train_examples: list[RankingExample] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        tokenizer = self.load_tokenizer()
        train, val = self.load_split(functools.partial(parse_ranking_record, ties=self.ties))
        self.train_examples = train
        train_rows, self.counts["train"] = self.encode(train)
        val_rows, self.counts["val"] = self.encode(val)
        for split, counts in self.counts.items():
            self.report_lengths(split, counts, unit="prompt")
        if not train_rows:
            raise DataError(f"no training prompt fits max_length={self.max_length} (--data.max_length)")
        self.train_lengths = [len(r["prompt_ids"]) + max(map(len, r["completion_ids"])) for r in train_rows]
        self.train_dataset = ListDataset(train_rows)
        self.val_dataset = ListDataset(val_rows)
        self.pad_token_id = tokenizer.pad_token_id

    def encode(self, examples: list[RankingExample]) -> tuple[list[dict[str, Any]], RankingCounts]:
        """Tokenise each prompt once and its K completions, with the SFT template and truncation policy.

        A completion that cannot fit ``max_length`` is dropped and the others keep their ranks (a sub-ranking is still
        a ranking); the prompt is dropped only when fewer than two differently ranked completions remain.
        """
        tokenizer = self.load_tokenizer()
        counts = RankingCounts()
        rows = []
        for ex in examples:
            prompt_ids = encode_prompt(tokenizer, ex.prompt, self.template)
            encoded = [encode_completion(tokenizer, ex.prompt, c, self.template) for c in ex.completions]
            kept = [
                i
                for i, ids in enumerate(encoded)
                if fit_to_length(prompt_ids, ids, self.max_length, self.truncation, ex.source) is not None
            ]
            if len({ex.ranks[i] for i in kept}) < 2:
                counts.skipped += 1
                counts.skipped_sources.append(str(ex.source))
                continue
            counts.dropped_completions += len(encoded) - len(kept)
            completion_ids = [encoded[i] for i in kept]
            # the prompt is cut once, for the longest kept completion, so all of them share it
            longest = max(completion_ids, key=len)
            fitted = fit_to_length(prompt_ids, longest, self.max_length, self.truncation, ex.source)
            counts.truncated += len(fitted[0]) < len(prompt_ids)
            counts.examples += 1
            ranks = [ex.ranks[i] for i in kept]
            rows.append({"prompt_ids": fitted[0], "completion_ids": completion_ids, "ranks": ranks})
        return rows, counts

    def train_dataloader(self) -> DataLoader:
        collate = PreferenceCollator(self.pad_token_id)
        return self._length_grouped_loader(collate, self.train_lengths, self.group_by_length)

    def val_dataloader(self) -> DataLoader:
        assert self.val_dataset is not None, "call setup() first"
        return self._loader(self.val_dataset, PreferenceCollator(self.pad_token_id))
