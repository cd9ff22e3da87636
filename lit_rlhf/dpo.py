"""DPOModule: Direct Preference Optimization (Rafailov et al. 2023) on the reward model's rankings, no RM and no PPO.

DPO trains the policy directly on the labelers' comparisons. With ``h = [log pi(y_w) - log ref(y_w)] - [log pi(y_l)
- log ref(y_l)]`` (summed over the completion's tokens) for a better completion ``y_w`` and a worse one ``y_l`` of
the same prompt, the loss of the pair is

- ``sigmoid`` (DPO): ``-log sigmoid(beta * h)``; with ``label_smoothing`` eps, the labels are trusted with
  probability 1 - eps: ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)`` (conservative DPO);
- ``ipo`` (Azar et al. 2023, eq. 17): ``(h - 1 / (2 beta))^2``, with the sequence log-likelihoods as in the paper
  (TRL averages them per token instead).

Rankings are used as the reward model uses them (:mod:`lit_rlhf.reward`): a prompt with K ranked completions is
one batch element, each completion is forwarded once, and the prompt contributes all its C(K, 2) pairs, each with
weight 1 / C(K, 2); the loss is the mean over prompts. ``beta * [log pi(y) - log ref(y)]`` is DPO's implicit reward
of a completion; ``dpo/reward_accuracy`` is the share of pairs it orders as the labelers did.

The reference is the starting model (the SFT export), frozen: a second copy in memory, or under LoRA the trained
model with its adapters disabled (no copy). With ``precompute_reference`` its log-probabilities are computed once,
before the first step, for every training and validation completion, and the copy is freed.
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from lit_rlhf.data.collate import IGNORE_INDEX
from lit_rlhf.data.modules import PreferenceCollator
from lit_rlhf.distributed import is_fsdp2
from lit_rlhf.losses import at_least_float32, logprobs_from_logits, plain_lm_head, ranking_mean, ranking_pairs
from lit_rlhf.models import freeze, load_model
from lit_rlhf.stage import FineTuningModule

log = logging.getLogger(__name__)

LossType = Literal["sigmoid", "ipo"]

# --------------------------------------------------------------------------- the loss (pure torch)


def dpo_pair_losses(
    margins: torch.Tensor, beta: float, loss_type: LossType = "sigmoid", label_smoothing: float = 0.0
) -> torch.Tensor:
    """The loss of each pair from ``h`` = (policy - reference log-ratio of the better) - (that of the worse).

    Args:
        margins: (n_pairs,) ``h`` of each pair, in nats.
        beta: DPO's beta (the strength of the implicit KL penalty); IPO's target margin is ``1 / (2 beta)``.
        loss_type: ``sigmoid`` (DPO) or ``ipo``.
        label_smoothing: Probability that a pair's label is flipped (sigmoid only; 0 is plain DPO).

    Returns:
        (n_pairs,) losses.
    """
    if loss_type == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(beta * margins) - label_smoothing * F.logsigmoid(-beta * margins)
    if loss_type == "ipo":
        return (margins - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown DPO loss {loss_type!r}; choose sigmoid or ipo (--model.loss_type)")


def dpo_loss(
    logps: torch.Tensor,
    reference_logps: torch.Tensor,
    group_ids: torch.Tensor,
    ranks: torch.Tensor,
    beta: float,
    loss_type: LossType = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO over K-wise rankings: the mean over prompts of the mean over their C(K, 2) pairs of the pair loss.

    Args:
        logps: (n,) summed log-probability of each completion under the policy (all prompts, flattened).
        reference_logps: (n,) the same under the reference.
        group_ids: (n,) long, the prompt (0 .. n_groups-1) each completion belongs to.
        ranks: (n,) long, rank within the prompt, 0 = best; ties form no pair.
        beta, loss_type, label_smoothing: As in :func:`dpo_pair_losses`.

    Returns:
        The scalar loss (the weighted pair losses summed, divided by the number of prompts with a pair), and the
        implicit rewards ``beta * (logps - reference_logps)`` of the better and of the worse completion of each
        pair, (n_pairs,) each.
    """
    log_ratios = logps - reference_logps
    better, worse, weights = ranking_pairs(group_ids, ranks, log_ratios.dtype)
    pair_losses = dpo_pair_losses(log_ratios[better] - log_ratios[worse], beta, loss_type, label_smoothing)
    loss = ranking_mean(pair_losses, better, weights, group_ids)
    rewards = beta * log_ratios.detach()
    return loss, rewards[better], rewards[worse]


def completion_logps(
    model: nn.Module, batch: dict[str, torch.Tensor], head_only_where_needed: bool = True
) -> torch.Tensor:
    """Summed log-probability of each row's completion tokens (``batch["labels"]`` not ``IGNORE_INDEX``).

    For models whose logits are their LM head over the last hidden states (:func:`plain_lm_head`), the head runs only
    at the positions that predict a completion token (a prompt's positions never reach the vocabulary); others, and
    ``head_only_where_needed=False`` (FSDP2), take the full forward.

    Returns:
        (n,) float32 (float64 for a float64 model).
    """
    labels = batch["labels"][:, 1:]
    scored = labels != IGNORE_INDEX
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)[scored]
    parts = plain_lm_head(model) if head_only_where_needed else None
    if parts is None:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        logits = logits[:, :-1][scored]
    else:
        backbone, head = parts
        hidden = backbone(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
        logits = head(hidden[:, :-1][scored])
    token_logps = logprobs_from_logits(at_least_float32(logits), labels[scored])
    return torch.zeros(labels.shape[0], dtype=token_logps.dtype, device=labels.device).index_add(0, rows, token_logps)


# --------------------------------------------------------------------------- the module


class DPOModule(FineTuningModule):
    """Train a policy with DPO on ranked completions (``PreferenceDataModule``); write a Hugging Face directory.

    ``model_name_or_path`` is the SFT export to start from; it is also the frozen reference unless
    ``reference_model_path`` names another. The other model, optimiser and export options are
    :class:`~lit_rlhf.stage.FineTuningModule`'s.

    Args:
        beta: Strength of the implicit KL penalty to the reference (DPO paper: 0.1; lower lets the policy move
            further).
        loss_type: ``sigmoid`` (DPO) or ``ipo`` (IPO, which does not push margins to infinity on deterministic
            preferences).
        label_smoothing: Conservative DPO: the probability that a comparison's label is wrong (sigmoid only; 0 is
            plain DPO).
        reference_model_path: The frozen reference policy; default ``model_name_or_path``. Under LoRA with the
            default, the reference is the model with its adapters disabled (no second copy).
        precompute_reference: Compute the reference log-probabilities of every training and validation completion
            once, before the first step (each process scores all of them), then free the reference copy: less memory
            and one forward fewer per step.
        learning_rate: Peak AdamW learning rate (DPO paper: 1e-6 for billion-parameter models).
        dropout: Dropout while training. Default 0: with dropout the policy's log-probabilities are noisy against the
            reference's, and h is not 0 at the start (as the DPO paper's and TRL's trainers do); None keeps the
            model's own.
        **kwargs: The options of :class:`~lit_rlhf.stage.FineTuningModule` (``model_name_or_path``, ...).
    """

    stage = "dpo"

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: LossType = "sigmoid",
        label_smoothing: float = 0.0,
        reference_model_path: str | None = None,
        precompute_reference: bool = False,
        learning_rate: float = 1e-6,
        dropout: float | None = 0.0,
        **kwargs: Any,
    ) -> None:
        problems = []
        if not beta > 0:
            problems.append(f"--model.beta must be > 0, got {beta}")
        if loss_type not in ("sigmoid", "ipo"):
            problems.append(f"--model.loss_type must be sigmoid or ipo, got {loss_type!r}")
        if not 0 <= label_smoothing < 0.5:
            problems.append(f"--model.label_smoothing must be in [0, 0.5), got {label_smoothing}")
        if label_smoothing and loss_type != "sigmoid":
            problems.append("--model.label_smoothing applies to --model.loss_type=sigmoid only")
        if problems:
            raise ValueError("bad DPO options:\n  " + "\n  ".join(problems))
        super().__init__(learning_rate=learning_rate, dropout=dropout, **kwargs)
        self.ref_model: nn.Module | None = None
        self.train_margin = MeanMetric()
        self.train_accuracy = MeanMetric()
        self.train_better_reward = MeanMetric()
        self.train_worse_reward = MeanMetric()
        self.val_loss = MeanMetric()
        self.val_margin = MeanMetric()
        self.val_accuracy = MeanMetric()

    # -- models --------------------------------------------------------------------------------------------------

    def check_model_paths(self) -> None:
        super().check_model_paths()
        from lit_rlhf.models import missing_local_path

        problem = missing_local_path(self.hparams.get("reference_model_path"), "--model.reference_model_path")
        if problem is not None:
            raise FileNotFoundError(problem)

    @property
    def adapters_are_reference(self) -> bool:
        """Whether the reference is the LoRA model with adapters disabled (no copy)."""
        return self.hparams.lora is not None and self.hparams.reference_model_path is None

    def configure_model(self) -> None:
        """Load tokenizer, policy and (unless LoRA gives it for free) the frozen reference."""
        if self.model is not None:
            return
        hp = self.hparams
        self.model = self.load_model_and_tokenizer(head="causal_lm", with_lora=True)
        if hp.reference_model_path is None and hp.lora is None:
            # The starting weights themselves (a scratch model too), without reading them again.
            self.ref_model = freeze(copy.deepcopy(self.model))
        elif hp.reference_model_path is not None:
            self.ref_model = freeze(
                load_model(hp.reference_model_path, self.tokenizer, flag="--model.reference_model_path",
                           dtype=hp.dtype, trust_remote_code=hp.trust_remote_code)
            )  # fmt: skip
            if self.ref_model.get_input_embeddings().num_embeddings != self.model.get_input_embeddings().num_embeddings:
                raise ValueError(
                    f"--model.reference_model_path {hp.reference_model_path} has a vocabulary of a different size "
                    f"from the policy {hp.model_name_or_path}; DPO compares their log-probabilities of the same tokens"
                )
        self.shard(self.model)
        if self.ref_model is not None:
            self.shard(self.ref_model)
        self.log_model_size()

    @contextmanager
    def reference(self):
        """The frozen reference policy: the frozen copy, or the LoRA policy with its adapters disabled (eval mode)."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                yield self.model
        finally:
            self.model.train(was_training)

    def policy_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return completion_logps(self.model, batch, self._head_only())

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The precomputed reference log-probabilities of the batch, else the reference's forward."""
        if "reference_logps" in batch:
            return batch["reference_logps"].to(self.device)
        if self.ref_model is None and not self.adapters_are_reference:
            raise RuntimeError(
                "the reference was freed after precomputing, but this batch has no precomputed log-probabilities"
            )
        with self.reference() as ref:
            return completion_logps(ref, batch, self._head_only())

    def _head_only(self) -> bool:
        return not (self._trainer is not None and is_fsdp2(self.trainer.strategy))

    # -- precomputed reference -----------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.ref_model is not None and self.ref_model.device != self.device and not is_fsdp2(self.trainer.strategy):
            self.ref_model.to(self.device)
        if self.hparams.precompute_reference:
            self.precompute_reference()

    @torch.no_grad()
    def precompute_reference(self) -> None:
        """Attach ``reference_logps`` to every training and validation row (the collator passes them on), then free
        the reference copy. Each process scores every row, so the figures do not depend on how rows are shared."""
        dm = self.trainer.datamodule
        collate = PreferenceCollator(dm.pad_token_id)
        n = 0
        for dataset in (dm.train_dataset, dm.val_dataset):
            rows = [dataset[i] for i in range(len(dataset))] if dataset is not None else []
            for start in range(0, len(rows), dm.batch_size):
                chunk = [
                    {k: v for k, v in r.items() if k != "reference_logps"} for r in rows[start : start + dm.batch_size]
                ]
                batch = {k: v.to(self.device) for k, v in collate(chunk).items()}
                logps = self.reference_logps(batch).cpu().tolist()
                at = 0
                for row in rows[start : start + dm.batch_size]:
                    k = len(row["completion_ids"])
                    row["reference_logps"] = logps[at : at + k]
                    at += k
                n += len(logps)
        log.info("dpo: precomputed the reference log-probabilities of %d completions", n)
        self.ref_model = None  # the copy is no longer needed (under LoRA there was none)

    # -- steps ---------------------------------------------------------------------------------------------------

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hp = self.hparams
        reference = self.reference_logps(batch)
        logps = self.policy_logps(batch)
        return dpo_loss(logps, reference.to(logps.dtype), batch["group_ids"], batch["ranks"], hp.beta, hp.loss_type,
                        hp.label_smoothing)  # fmt: skip

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, better, worse = self._loss(batch)
        self.check_finite(loss, batch_idx)
        n_prompts = int(batch["group_ids"].max()) + 1
        self.train_margin(better - worse)
        self.train_accuracy((better > worse).float())
        self.train_better_reward(better)
        self.train_worse_reward(worse)
        self.log("train/loss", loss, prog_bar=True, batch_size=n_prompts, sync_dist=True)
        self.log("dpo/reward_margin", self.train_margin, batch_size=len(better))
        self.log("dpo/reward_accuracy", self.train_accuracy, prog_bar=True, batch_size=len(better))
        self.log("dpo/chosen_reward", self.train_better_reward, batch_size=len(better))
        self.log("dpo/rejected_reward", self.train_worse_reward, batch_size=len(better))
        return loss

    def on_validation_epoch_start(self) -> None:
        for metric in (self.val_loss, self.val_margin, self.val_accuracy):
            metric.reset()  # fresh states, as in RewardModule (a validate run's inference tensors must not leak)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, better, worse = self._loss(batch)
        n_prompts = int(batch["group_ids"].max()) + 1
        self.val_loss.update(loss, weight=n_prompts)
        self.val_margin.update(better - worse)
        self.val_accuracy.update((better > worse).float())
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=n_prompts)
        self.log("val/reward_margin", self.val_margin, batch_size=len(better))
        self.log("val/reward_accuracy", self.val_accuracy, batch_size=len(better))

    # -- checkpoints: the frozen reference is never saved --------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is not None:
            for key in [k for k in state if k.startswith("ref_model.")]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is not None and self.ref_model is not None:  # loaded again from its path: keep those weights
            state.update({f"ref_model.{k}": v for k, v in self.ref_model.state_dict().items()})

    def export_metadata(self) -> dict[str, Any]:
        meta = super().export_metadata()
        meta["reference"] = (
            "the starting model with LoRA adapters disabled"
            if self.adapters_are_reference
            else self.hparams.reference_model_path or self.hparams.model_name_or_path
        )
        return meta


__all__ = ["DPOModule", "completion_logps", "dpo_loss", "dpo_pair_losses"]
