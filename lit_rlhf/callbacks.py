"""Callbacks that report what a user wants to see at the end of a stage."""

from __future__ import annotations

import lightning as L
from torch import nn

from lit_rlhf.data.collate import encode_prompt
from lit_rlhf.data.records import load_records, parse_sft_record
from lit_rlhf.distributed import gathered, is_sharded
from lit_rlhf.generation import generate_greedy


class ExactMatchCallback(L.Callback):
    """At the end of fit, answer held-out prompts greedily and print the share answered exactly right.

    Meant for data with exact answers, such as the instruction world's held-out tasks: the reference is the
    record's completion, compared after stripping surrounding whitespace.

    Args:
        files: Records with exact answers (SFT formats); relative to the working directory.
        max_examples: How many records to answer (the first ones, after the ``kinds`` filter).
        kinds: Only records whose ``kind`` field is one of these (e.g. the world's operation tasks); None: all.
        max_new_tokens: Longest answer generated.
        batch_size: Prompts per generate call.
    """

    def __init__(
        self,
        files: str | list[str],
        max_examples: int = 200,
        max_new_tokens: int = 32,
        batch_size: int = 64,
        kinds: list[str] | None = None,
    ) -> None:
        self.files = files
        self.kinds = kinds
        self.max_examples = max_examples
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.accuracy: float | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the stage's export (written at on_train_end): a failure here costs the report, never the model.
        if trainer.interrupted:
            return
        if not is_sharded(pl_module.model):
            if trainer.is_global_zero:
                self.report(trainer, pl_module, pl_module.model)
            return
        # FSDP2: every rank gathers the weights once (a collective); then rank 0 decodes alone, with no communication.
        with gathered(pl_module.model) as model:
            if trainer.is_global_zero:
                self.report(trainer, pl_module, model)

    def report(self, trainer: L.Trainer, pl_module: L.LightningModule, model: nn.Module) -> None:
        """Answer the held-out prompts with ``model`` (whole, not sharded) and print and log the exact-match share."""
        records, _ = load_records(self.files, lambda raw, src: (raw.get("kind"), parse_sft_record(raw, src)))
        records = [(kind, ex) for kind, ex in records if self.kinds is None or kind in self.kinds][: self.max_examples]
        examples = [ex for _, ex in records]
        tokenizer = pl_module.tokenizer
        template = getattr(trainer.datamodule, "template", "auto")
        prompts = [encode_prompt(tokenizer, ex.prompt, template) for ex in examples]
        responses = generate_greedy(
            model,
            prompts,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
        )
        right = [
            tokenizer.decode(r, skip_special_tokens=True).strip() == ex.completion.strip()
            for r, ex in zip(responses, examples, strict=True)
        ]
        self.accuracy = sum(right) / len(right)
        by_kind: dict[str, list[bool]] = {}
        for (kind, _), ok in zip(records, right, strict=True):
            by_kind.setdefault(kind or "all", []).append(ok)
        self.by_kind = {kind: sum(oks) / len(oks) for kind, oks in sorted(by_kind.items())}
        for logger in trainer.loggers:
            logger.log_metrics({"heldout/exact_match": self.accuracy}, step=trainer.global_step)
        detail = ", ".join(f"{kind} {acc:.0%}" for kind, acc in self.by_kind.items())
        print(f"[lit-rlhf] held-out exact match: {self.accuracy:.1%} of {len(right)} greedy answers ({self.files})")
        print(f"[lit-rlhf]   by kind: {detail}")
