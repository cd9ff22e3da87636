"""RewardModule: a scalar reward model trained on K-wise rankings (InstructGPT step 2), and its normalisation.

The RM is an ``AutoModelForSequenceClassification`` with one label, so any tool that reads Hugging Face reward
models reads ours. Its score for prompt + completion is read at the last real token, the EOS: sequences are right
padded with a pad token that is not EOS, and transformers' sequence classifiers pool the rightmost non-pad token.

The loss is InstructGPT's eq. 1: for a prompt with K ranked completions, each of the C(K, 2) ordered pairs adds
``-log sigmoid(r_better - r_worse)`` with weight 1 / C(K, 2). One prompt is one batch element: its K completions
are forwarded once each (``kwise_ranking_loss`` takes the flat scores of all completions in the batch and the
prompt each belongs to), so batches may mix different K and no padding reaches the loss.

Normalisation (InstructGPT §3.5): after training, the scores are shifted so that reference completions (the SFT
demonstrations) score 0 on average, optionally scaled to std 1. The shift is written into weights that plain
transformers loads (see :func:`shift_and_scale_scores`), so ``AutoModelForSequenceClassification.from_pretrained``
gives the normalised scores; ``config.json`` and ``lit_rlhf.json`` record it as ``reward_normalization``.

Normalise an exported RM from the command line::

    python -m lit_rlhf.reward normalize runs/rm-tiny/hf --reference_files demonstrations.jsonl [--std]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from lit_rlhf.data.collate import Template, encode_completion, encode_prompt, fit_to_length, pad_right
from lit_rlhf.data.records import Files, Message, SFTExample, load_records, parse_sft_record
from lit_rlhf.distributed import add_to_parameter, full_tensor, reshard
from lit_rlhf.losses import at_least_float32, ranking_mean, ranking_pairs
from lit_rlhf.models import (
    apply_lora,
    export_pretrained,
    is_scratch,
    load_model,
    load_tokenizer,
    read_export_metadata,
    score_head,
)
from lit_rlhf.stage import FineTuningModule

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the loss (pure torch)


def kwise_ranking_loss(scores: torch.Tensor, group_ids: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """InstructGPT eq. 1: the mean over prompts of the mean over their C(K, 2) pairs of -log sigmoid(margin).

    Args:
        scores: (n,) float, the RM score of every completion in the batch (all prompts, flattened).
        group_ids: (n,) long, the prompt each completion belongs to, 0 .. n_groups-1.
        ranks: (n,) long, rank within the prompt, 0 = best; ties form no pair.

    Returns:
        A scalar: sum over pairs of ``weight * -log sigmoid(s_better - s_worse)``, divided by the number of prompts
        that have at least one pair. Prompts may have different K; there is no padding to mask.
    """
    better, worse, weights = ranking_pairs(group_ids, ranks, scores.dtype)
    return ranking_mean(-F.logsigmoid(scores[better] - scores[worse]), better, weights, group_ids)


def top1_correct(scores: torch.Tensor, group_ids: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Whether a best-ranked completion of each prompt scores strictly above every completion ranked below it.

    Strict, like pair accuracy (a margin of 0 is a miss): a tie for the highest score between a best-ranked and a
    worse completion is a miss, so a reward model that collapsed to a constant scores 0, not 100%. Completions that
    share the best rank may tie among themselves. A prompt whose completions all share one rank has nothing to get
    right and counts as a miss.

    Args:
        scores: (n,) float; group_ids, ranks: (n,) long, as in :func:`kwise_ranking_loss`.

    Returns:
        (n_groups,) bool, one entry per prompt.
    """
    n_groups = int(group_ids.max()) + 1
    best_rank = torch.full((n_groups,), torch.iinfo(ranks.dtype).max, dtype=ranks.dtype, device=ranks.device)
    best_rank = best_rank.scatter_reduce(0, group_ids, ranks, reduce="amin")
    is_best = ranks == best_rank[group_ids]

    def group_max(mask: torch.Tensor) -> torch.Tensor:
        masked = torch.where(mask, scores, torch.full_like(scores, -math.inf))
        empty = torch.full((n_groups,), -math.inf, dtype=scores.dtype, device=scores.device)
        return empty.scatter_reduce(0, group_ids, masked, reduce="amax")

    best_of_best, best_of_rest = group_max(is_best), group_max(~is_best)
    has_rest = torch.zeros(n_groups, dtype=torch.bool, device=scores.device).index_fill(0, group_ids[~is_best], True)
    return has_rest & (best_of_best > best_of_rest)


# --------------------------------------------------------------------------- the score head


def init_score_head(model: nn.Module) -> None:
    """Initialise the head N(0, std = 1/sqrt(d_model + 1)), bias 0 (Stiennon et al. 2020, as InstructGPT)."""
    head = score_head(model)
    with torch.no_grad():
        nn.init.normal_(head.weight, mean=0.0, std=1.0 / math.sqrt(head.in_features + 1))
        if head.bias is not None:
            head.bias.zero_()


def final_norm(model: nn.Module) -> nn.Module | None:
    """The last normalisation layer before the head when it has a bias (GPT-2's ``ln_f``), else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, "base_model", base)
    found = None
    for name, module in backbone.named_modules():
        if name.rsplit(".", 1)[-1] in ("ln_f", "final_layer_norm", "final_layernorm", "norm"):
            found = module
    if found is None or getattr(found, "bias", None) is None:
        return None
    return found


def check_shift_storable(model: nn.Module) -> None:
    """Raise when a score shift cannot be stored in weights that plain transformers loads."""
    if score_head(model).bias is None and final_norm(model) is None:
        raise ValueError(
            f"{type(model).__name__}: its score head has no bias and its final norm has none either (e.g. Llama's "
            "RMSNorm), so a normalisation shift cannot be saved in weights that plain transformers loads. Set "
            "--model.normalize=false (PPO whitens rewards, so the shift does not change PPO)."
        )


def shift_and_scale_scores(model: nn.Module, mean: float, std: float = 1.0) -> str:
    """Change the weights so that every score ``s`` becomes ``(s - mean) / std``, exactly.

    The scale divides the head's weight ``w``. The shift goes into the head's bias when it has one; GPT-2's head
    has none (transformers builds it with ``bias=False`` and would drop a saved bias), so the shift goes into the
    bias of the final LayerNorm instead: adding ``c * w / (w . w)`` to it adds exactly ``c`` to ``w . h`` at every
    position, and nothing but the head reads that layer's output in a sequence classifier.

    Returns:
        Where the shift was stored: ``"head.bias"`` or ``"final_norm.bias"``.
    """
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    check_shift_storable(model)
    reshard(model)  # under FSDP2, edit the real (sharded) parameters, not a forward's unsharded copy
    head = score_head(model)
    with torch.no_grad():
        head.weight.div_(std)
        shift = -mean / std
        if head.bias is not None:
            head.bias.copy_((head.bias - mean) / std)
            return "head.bias"
        w = full_tensor(head.weight)[0].double()
        norm = final_norm(model)
        add_to_parameter(norm.bias, shift * w / w.dot(w))
        return "final_norm.bias"


def has_trained_head(model_name_or_path: str) -> bool:
    """Whether ``model_name_or_path`` is already a sequence classifier (an RM to continue), not a causal LM."""
    if is_scratch(model_name_or_path):
        return False
    meta = read_export_metadata(model_name_or_path)
    if meta is not None:
        return meta.get("stage") == RewardModule.stage
    from transformers import AutoConfig

    architectures = getattr(AutoConfig.from_pretrained(model_name_or_path), "architectures", None) or []
    return any(a.endswith("ForSequenceClassification") for a in architectures)


# --------------------------------------------------------------------------- scoring reference completions


@torch.no_grad()
def score_completions(
    model: nn.Module,
    tokenizer,
    examples: Sequence[tuple[list[Message], str]],
    template: Template = "auto",
    max_length: int = 512,
    batch_size: int = 16,
) -> torch.Tensor:
    """RM scores of ``(prompt messages, completion)`` pairs, tokenised exactly as in training.

    Too-long examples lose their oldest prompt tokens; a completion alone over ``max_length`` is skipped.

    Returns:
        (n_scored,) scores, float32 (float64 for a float64 model).
    """
    from lit_rlhf.data.records import Source

    device = next(model.parameters()).device
    seqs = []
    for prompt, completion in examples:
        prompt_ids = encode_prompt(tokenizer, prompt, template)
        completion_ids = encode_completion(tokenizer, prompt, completion, template)
        fitted = fit_to_length(prompt_ids, completion_ids, max_length, "left_truncate", Source("reference", 0))
        if fitted is not None:
            seqs.append(fitted[0] + fitted[1])
    was_training = model.training
    model.eval()
    scores = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i : i + batch_size]
        input_ids = pad_right(chunk, tokenizer.pad_token_id).to(device)
        attention_mask = pad_right([[1] * len(s) for s in chunk], 0).to(device)
        scores.append(at_least_float32(model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]).cpu())
    model.train(was_training)
    if not scores:
        raise ValueError("no reference completion fits max_length; nothing to normalise on")
    return torch.cat(scores)


def normalize_scores(
    model: nn.Module,
    tokenizer,
    examples: Sequence[tuple[list[Message], str]],
    std: bool = False,
    template: Template = "auto",
    max_length: int = 512,
    batch_size: int = 16,
    reference: str = "",
) -> dict[str, Any]:
    """Shift (and with ``std`` scale) the RM so ``examples`` score mean 0 (std 1); record it in ``model.config``.

    Returns:
        The record written to ``config.reward_normalization``: the measured mean and std, the applied shift and
        scale, where the shift is stored and how many references were scored.
    """
    scores = score_completions(model, tokenizer, examples, template, max_length, batch_size).double()
    mean = float(scores.mean())
    sd = float(scores.std(unbiased=False)) if std else 1.0
    if std and not sd > 0:
        raise ValueError(f"reference scores have std {sd}: cannot scale to std 1")
    stored_in = shift_and_scale_scores(model, mean, sd)
    record = {
        "reference": reference,
        "n_references": len(scores),
        "mean_before": mean,
        "std_before": float(scores.std(unbiased=False)),
        "shift": -mean / sd,
        "scale": 1.0 / sd,
        "stored_in": stored_in,
    }
    config = getattr(model.get_base_model() if hasattr(model, "get_base_model") else model, "config", None)
    if config is not None:
        config.reward_normalization = record
    log.info(
        "normalised the RM on %d reference(s) (%s): their mean %.4f and std %.4f became %.4f and %.4f",
        len(scores), reference, mean, record["std_before"], 0.0, record["std_before"] / sd,
    )  # fmt: skip
    return record


def load_references(files: Files, max_examples: int | None = None) -> list[tuple[list[Message], str]]:
    """SFT-format records (prompt + completion, messages, Alpaca) as ``(prompt messages, completion)`` pairs."""
    examples: list[SFTExample]
    examples, _ = load_records(files, parse_sft_record, "skip")
    return [(e.prompt, e.completion) for e in examples[:max_examples]]


# --------------------------------------------------------------------------- the module


class RewardModule(FineTuningModule):
    """Train a scalar reward model on K-wise rankings (InstructGPT eq. 1); write a Hugging Face directory.

    ``model_name_or_path`` is where to start: an SFT export (InstructGPT initialises the RM from SFT), any causal LM
    or an RM directory. A fresh score head is initialised N(0, std 1/sqrt(d_model + 1)); an RM's is kept. The other
    model, optimiser and export options are :class:`~lit_rlhf.stage.FineTuningModule`'s; LoRA trains the adapters
    and the head.

    Args:
        learning_rate: Peak AdamW learning rate (InstructGPT's RM: 9e-6).
        normalize: At the end of fit, shift the scores so the reference completions score mean 0
            (InstructGPT §3.5), before the export.
        normalize_std: Also scale the scores so the references have std 1.
        reference_files: SFT-format records whose completions are the references (InstructGPT: the SFT
            demonstrations). None: the best-ranked completion of each training prompt.
        max_references: Score at most this many references.
        **kwargs: The options of :class:`~lit_rlhf.stage.FineTuningModule` (``model_name_or_path``, ...).
    """

    stage = "rm"

    def __init__(
        self,
        learning_rate: float = 9e-6,
        normalize: bool = True,
        normalize_std: bool = False,
        reference_files: Files = None,
        max_references: int | None = 2048,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.normalization: dict[str, Any] | None = None
        self.train_pair_accuracy = MeanMetric()
        self.val_pair_accuracy = MeanMetric()
        self.val_top1_accuracy = MeanMetric()
        self.val_margin = MeanMetric()
        self.val_loss = MeanMetric()

    # -- model -------------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Load tokenizer and model lazily (after the DataModule prepared the data); initialise a new head."""
        if self.model is not None:
            return
        hp = self.hparams
        model = self.load_model_and_tokenizer(head="score", with_lora=False)
        if not has_trained_head(hp.model_name_or_path):
            init_score_head(model)
        if hp.normalize:
            check_shift_storable(model)  # fail before training, not after it
        self.model = apply_lora(model, hp.lora, task_type="SEQ_CLS") if hp.lora is not None else model
        self.shard(self.model)
        self.log_model_size()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores (n,) float32 (float64 for a float64 model) of right-padded sequences (n, length), read at each one's last real token (EOS)."""
        return at_least_float32(self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0])

    # -- steps ---------------------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        scores = self(batch["input_ids"], batch["attention_mask"])
        loss = kwise_ranking_loss(scores, batch["group_ids"], batch["ranks"])
        self.check_finite(loss, batch_idx)
        better, worse, _ = ranking_pairs(batch["group_ids"], batch["ranks"])
        self.train_pair_accuracy((scores[better] > scores[worse]).float())
        n_prompts = int(batch["group_ids"].max()) + 1
        self.log("train/loss", loss, prog_bar=True, batch_size=n_prompts, sync_dist=True)  # all ranks, not rank 0
        self.log("train/pair_accuracy", self.train_pair_accuracy, batch_size=n_prompts)
        return loss

    def on_validation_epoch_start(self) -> None:
        # A metric reset under `trainer.validate` (inference mode) holds inference tensors, which a later fit's
        # validation (no_grad) cannot update in place: start every validation from freshly made states.
        for metric in (self.val_pair_accuracy, self.val_top1_accuracy, self.val_margin, self.val_loss):
            metric.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        group_ids, ranks = batch["group_ids"], batch["ranks"]
        scores = self(batch["input_ids"], batch["attention_mask"])
        n_prompts = int(group_ids.max()) + 1
        better, worse, _ = ranking_pairs(group_ids, ranks)
        margins = scores[better] - scores[worse]
        self.val_pair_accuracy.update((margins > 0).float())
        self.val_margin.update(margins)
        self.val_loss.update(kwise_ranking_loss(scores, group_ids, ranks), weight=n_prompts)
        self.log("val/pair_accuracy", self.val_pair_accuracy, prog_bar=True, batch_size=len(margins))
        self.log("val/margin", self.val_margin, batch_size=len(margins))
        self.log("val/loss", self.val_loss, batch_size=n_prompts)
        many = torch.bincount(group_ids) > 2  # top-1 is only informative for K > 2
        if many.any():
            self.val_top1_accuracy.update(top1_correct(scores, group_ids, ranks)[many].float())
            self.log("val/top1_accuracy", self.val_top1_accuracy, batch_size=int(many.sum()))

    # -- end of fit: normalise, then export ----------------------------------------------------------------------

    def on_train_end(self) -> None:
        if self.hparams.normalize and not self.trainer.interrupted:
            # Every rank normalises on the same references, so the weights stay identical across ranks.
            examples, reference = self.reference_examples()
            dm = self.trainer.datamodule
            self.normalization = normalize_scores(
                self.model,
                self.tokenizer,
                examples,
                std=self.hparams.normalize_std,
                template=getattr(dm, "template", "auto"),
                max_length=getattr(dm, "max_length", 512),
                batch_size=getattr(dm, "batch_size", 16),
                reference=reference,
            )
        super().on_train_end()

    def reference_examples(self) -> tuple[list[tuple[list[Message], str]], str]:
        """The reference completions to normalise on, and a description of where they came from: those of
        ``reference_files``, else the best-ranked completion of each training prompt (at most ``max_references``)."""
        hp = self.hparams
        dm = self.trainer.datamodule
        if hp.reference_files is not None:
            return load_references(hp.reference_files, hp.max_references), str(hp.reference_files)
        # No demonstrations named: the best answer the labelers saw for each training prompt stands in for one.
        best = [(ex.prompt, ex.completions[ex.ranks.index(min(ex.ranks))]) for ex in dm.train_examples]
        return best[: hp.max_references], "best-ranked training completions"

    def export_metadata(self) -> dict[str, Any]:
        meta = super().export_metadata()
        meta["reward_normalization"] = self.normalization
        return meta


# --------------------------------------------------------------------------- CLI: normalise an exported RM


def normalize_export(
    rm_dir: str,
    reference_files: Files,
    out_dir: str | None = None,
    std: bool = False,
    template: Template = "auto",
    max_length: int = 512,
    batch_size: int = 16,
    max_references: int | None = None,
) -> dict[str, Any]:
    """Normalise the RM in ``rm_dir`` on ``reference_files`` and write it (atomically) to ``out_dir`` or in place.

    Returns:
        The normalisation record (also in the written ``config.json`` and ``lit_rlhf.json``).
    """
    tokenizer = load_tokenizer(rm_dir)
    model = load_model(rm_dir, tokenizer, head="score")
    record = normalize_scores(
        model,
        tokenizer,
        load_references(reference_files, max_references),
        std=std,
        template=template,
        max_length=max_length,
        batch_size=batch_size,
        reference=str(reference_files),
    )
    meta = read_export_metadata(rm_dir) or {"stage": RewardModule.stage}
    meta["reward_normalization"] = record
    export_pretrained(model, tokenizer, out_dir or rm_dir, meta)
    return record


def main(argv: list[str] | None = None) -> None:
    """``python -m lit_rlhf.reward normalize RM_DIR --reference_files FILE ... [--std] [--out_dir DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m lit_rlhf.reward", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("normalize", help="shift (and scale) an exported RM so reference completions score mean 0")
    p.add_argument("rm_dir", help="an exported reward model directory")
    p.add_argument("--reference_files", nargs="+", required=True, help="SFT-format records (the demonstrations)")
    p.add_argument("--out_dir", default=None, help="write here instead of replacing rm_dir")
    p.add_argument("--std", action="store_true", help="also scale the reference scores to std 1")
    p.add_argument("--template", default="auto", choices=["auto", "plain"], help="prompt template, as in training")
    p.add_argument("--max_length", type=int, default=512, help="longest prompt + completion in tokens")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_references", type=int, default=None, help="score at most this many references")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    record = normalize_export(
        args.rm_dir,
        args.reference_files,
        out_dir=args.out_dir,
        std=args.std,
        template=args.template,
        max_length=args.max_length,
        batch_size=args.batch_size,
        max_references=args.max_references,
    )
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()


__all__ = [
    "RewardModule",
    "init_score_head",
    "kwise_ranking_loss",
    "normalize_export",
    "normalize_scores",
    "ranking_pairs",
    "score_completions",
    "shift_and_scale_scores",
    "top1_correct",
]
