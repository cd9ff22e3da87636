"""PPOModule: RLHF with PPO, PPO-ptx and critic-free estimators (RLOO, GRPO, Dr. GRPO, REINFORCE++), one RL
iteration per ``training_step`` (InstructGPT step 3).

Four models: the **policy** (trained, from the SFT directory; exported at the end as a Hugging Face directory),
the frozen **reference** (the same SFT weights; under LoRA the policy with its adapters disabled, no second
copy; none at all when ``kl_coef`` is 0), the **value model** (trained, initialised from the reward model:
InstructGPT C.4; only with ``--model.advantage_estimator=gae``) and the frozen **reward model** (or a Python
``reward_fn`` for rule-based rewards, ``--model.reward_fn=module.function``). Dropout is off in all of them.

``--model.advantage_estimator`` picks how advantages are made from the same rollout (docs/critic_free.md):
``gae`` (PPO, a value model), ``rloo``, ``grpo``, ``dr_grpo`` (a baseline over the ``samples_per_prompt`` samples of
each prompt) or ``reinforce_pp`` (return-to-go whitened over the batch). The critic-free ones load, build, train
and checkpoint no value model.

Batch sizes, per process (each is checked at start; the derived counts are printed):

- rollout batch = ``--data.batch_size``: **prompts** answered per iteration (the DataLoader batch);
- ``--model.samples_per_prompt`` (k): responses sampled per prompt, all on the prompt's process, so an iteration
  has ``batch_size x k`` **episodes** per process;
- ``--model.minibatch_size``: **episodes** per optimizer step; must divide ``batch_size x k``;
- ``--model.micro_batch_size``: **episodes** per forward/backward; must divide ``minibatch_size``.

One iteration = ``ppo_epochs x batch_size x k / minibatch_size`` optimizer steps. ``trainer.global_step`` counts optimizer
steps, so **do not use** ``--trainer.max_steps`` **to count iterations**: limit training with
``--trainer.max_epochs`` (passes over the prompts) and ``--trainer.limit_train_batches`` (iterations per pass).

Logged every iteration (names are stable; scripts may rely on them):

==========================  ===================================================================================
``ppo/score_mean``          mean reward-model score of the rollout (no-EOS penalty included), all ranks
``ppo/score``               the same, under the short name the progress bar shows
``ppo/score_std``           its standard deviation, all ranks
``ppo/kl``                  mean over responses of the summed per-token KL to the reference (nats/response)
``ppo/kl_coef``             the KL coefficient beta used for this rollout
``ppo/entropy``             mean per-token entropy of the sampling distribution over response tokens
``ppo/response_length``     mean response length in tokens (EOS included)
``ppo/eos_rate``            fraction of responses that ended with EOS
``ppo/reward_mean``         mean summed per-token reward (score - beta KL)
``ppo/approxkl``            ``0.5 mean (logprobs - old_logprobs)^2`` over updates
``ppo/approxkl_k3``         ``mean((ratio - 1) - log ratio)``, the k3 estimate of ``KL(old || new)``, over updates
``ppo/clipfrac``            fraction of tokens where the policy clip was active
``ppo/vf_clipfrac``         [gae] fraction of tokens where the value clip was active
``ppo/policy_loss``         clipped surrogate loss
``ppo/value_loss``          [gae] clipped value loss
``ppo/explained_variance``  [gae] how much of the returns' variance the rollout values explain
``ppo/kl_loss``             [kl_in_loss] the k3 KL term of the loss, before ``kl_coef``
``ppo/groups_all_equal``    [k>1] share of prompts whose k scores are all equal (no group-baseline gradient)
``ppo/group_score_std``     [k>1] mean over prompts of the std of their k scores
``ppo/episodes_per_second`` episodes (all ranks) per second of the iteration (sampling, scoring, update)
``ppo/ratio_mean``          mean probability ratio over updates
``ppo/ptx_loss``            LM loss on the pretraining tokens (PPO-ptx only)
``ppo/lr``                  policy learning rate
``ppo/iteration``           completed PPO iterations
``ppo/time_generation``     seconds spent sampling responses
``ppo/time_scoring``        seconds in the no-grad forwards (reward, policy, reference, value; those that run)
``ppo/time_training``       seconds in the PPO epochs
==========================  ===================================================================================

A name marked [gae], [kl_in_loss] or [k>1] is logged only then. A table ``ppo/samples`` (iteration, prompt,
response, score) goes to W&B (without W&B, to ``<root>/samples/ppo_samples.jsonl``) every
``log_samples_every_n_iterations`` iterations.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from lit_rlhf.data.collate import IGNORE_INDEX, pad_right
from lit_rlhf.distributed import full_tensor, gathered, reshard, shard_like
from lit_rlhf.generation import sample_responses, sample_seed
from lit_rlhf.loggers import log_table
from lit_rlhf.losses import at_least_float32, completion_loss
from lit_rlhf.models import (
    LoraOptions,
    check_tokenizer,
    count_parameters,
    freeze,
    load_model,
    load_tokenizer,
    lora_to_dict,
)
from lit_rlhf.optim import resolve_warmup, warmup_cosine_lambda, weight_decay_groups
from lit_rlhf.ppo import core
from lit_rlhf.ppo.rollout import (
    Rollout,
    RolloutBuffer,
    first_eos_mask,
    in_chunks,
    response_logprobs,
    score_at_last_token,
    token_values,
)
from lit_rlhf.stage import StageModule

log = logging.getLogger(__name__)

RewardFn = Callable[[list[str], list[str]], Sequence[float]]
"""A rule-based reward: ``reward_fn(prompts, responses) -> scores``, texts decoded without special tokens."""


class PPOModule(StageModule):
    """Optimise a policy against a reward model with PPO (and PPO-ptx); write a Hugging Face directory at the end.

    Args:
        model_name_or_path: The policy to train: the SFT stage's Hugging Face directory. Also the frozen reference.
        reward_model_path: The reward-model directory (one-label ``AutoModelForSequenceClassification``).
        value_model_path: Where the value model starts; default the reward model (InstructGPT C.4), else the
            policy's directory with a new score head. Only with ``value_model=separate``.
        value_model: ``separate``: a value model of its own (InstructGPT; trained alongside, as large as the policy).
            ``shared``: a value head (one linear layer, zero-initialised) on the policy's final hidden states, so
            one forward and backward per micro-batch serves both losses: about half the update's compute and no
            fourth model in memory, at the cost of value gradients flowing into the policy's backbone.
        reward_fn: A Python callable ``(prompts, responses) -> scores`` used instead of a reward model (rule-based
            rewards, tests; on the command line its import path, ``--model.reward_fn=module.function``). Prompts
            are passed rendered with the chat template. Give this or ``reward_model_path``, not both; the value model
            then starts from ``value_model_path`` (default: the policy).
        tokenizer_name_or_path: The policy's tokenizer; defaults to ``model_name_or_path``. One other than the
            policy's own is refused unless ``allow_other_tokenizer``.
        allow_other_tokenizer: Train the policy with a tokenizer other than its own.
        export_dir: Where the final policy goes; default ``<trainer.default_root_dir>/hf``.
        export_every_n_iterations: Also export the policy (as the final export: a Hugging Face directory, the EMA
            weights under ``ema_decay``) after every this many PPO iterations, to ``<parent of the export
            dir>/hf_iterations/iter_<iteration, 4 digits or more>`` (by default
            ``<trainer.default_root_dir>/hf_iterations/iter_0010``, ...); e.g. for ``lit-rlhf overoptimization
            --checkpoints``. 0 never.
        minibatch_size: Episodes per optimizer step on one process; must divide the episodes of an iteration,
            ``--data.batch_size x samples_per_prompt``.
        micro_batch_size: Episodes per forward/backward (gradient accumulation); must divide ``minibatch_size``.
        forward_batch_size: Episodes per no-grad scoring forward; default ``micro_batch_size``.
        advantage_estimator: ``gae``: PPO with a value model. ``rloo``: return minus the mean return of the prompt's
            other k-1 samples. ``grpo``: (return - group mean) / (group std + 1e-6). ``dr_grpo``: return - group mean,
            with the ``constant`` loss aggregation by default. ``reinforce_pp``: return-to-go of the per-token rewards,
            whitened over the whole rollout (all ranks), k >= 1. No value model with any but ``gae``.
        samples_per_prompt: k, responses sampled per prompt, each from its own seeded stream; >= 2 for ``rloo``,
            ``grpo`` and ``dr_grpo``.
        kl_in_loss: Put the KL penalty in the loss (``kl_coef x`` the k3 estimate per token, aggregated as the
            policy loss: GRPO's) instead of in the reward (the default: k1 per token, unbiased). The gradient of the
            k3 term is a biased estimate of the KL's gradient (docs/critic_free.md).
        loss_aggregation: How a minibatch's per-token losses become one: ``token_mean`` (every token the same),
            ``seq_mean_token_mean`` (every response the same), ``constant`` (token sum / (max_new_tokens x
            episodes), Dr. GRPO). Default ``constant`` with ``dr_grpo``, else ``token_mean``.
        ppo_epochs: Passes over each rollout, mu (InstructGPT: 1 per batch of episodes; TRL/cleanrl: 4); default 4
            with ``gae``, 1 with the critic-free estimators. When a rollout feeds exactly one optimizer step (1 pass,
            one minibatch) and the reward needs no policy log-probs (``kl_coef`` 0 or ``kl_in_loss``), the no-grad
            policy forward is skipped: the old log-probs are the update's own, detached (ratio exactly 1).
        trim_padding: In the PPO update, order each minibatch's episodes by length into micro-batches and drop the
            columns that are padding in every row of a micro-batch (less compute; the same gradient up to float
            round-off). False keeps the rollout's full width, so the first minibatch's ratio is exactly 1.
        max_new_tokens: Longest response.
        temperature: Sampling temperature; log-probs use the logits divided by it.
        top_k: Sample from the ``top_k`` most likely tokens only; 0 disables.
        top_p: Nucleus sampling threshold; 1 disables.
        no_eos_score: Score given to a response with no EOS within ``max_new_tokens`` instead of its reward
            (the "EOS trick"); None scores it as it is.
        kl_coef: KL penalty coefficient beta (InstructGPT: 0.02); the initial value when ``kl_target`` is set.
        kl_target: Steer beta towards this KL (nats per response) with the adaptive controller; None keeps beta.
        kl_horizon: Episodes over which the adaptive controller moves beta by the clipped error.
        kl_estimator: Per-token KL estimator in the reward: ``k1`` (log ratio, InstructGPT) or ``k3``.
        whiten_rewards: Normalise per-token rewards' spread (not their mean) over the rollout, all ranks.
        gamma: Discount (InstructGPT: 1).
        lam: GAE lambda.
        clip_range: Policy ratio clip epsilon.
        clip_range_value: Value clip around the rollout values.
        vf_coef: Weight of the value loss in the combined loss.
        ptx_coef: PPO-ptx gamma: weight of the LM loss on pretraining text (InstructGPT: 27.8); 0 is plain PPO.
        ptx_examples_per_episode: Pretraining sequences per episode in each minibatch (InstructGPT: 8).
        learning_rate: Peak policy learning rate.
        value_learning_rate: Peak value-model learning rate; default ``learning_rate``.
        weight_decay: AdamW weight decay (not on biases and norms).
        betas: AdamW betas.
        warmup: Linear LR warmup, in optimizer steps (a fraction of all steps when below 1).
        lr_schedule: After warmup, ``constant`` (InstructGPT PPO) or ``cosine`` decay to ``min_lr_ratio``.
        min_lr_ratio: Where cosine decay ends, as a fraction of the peak.
        max_grad_norm: Clip the gradient norm (policy and value together) to this; None disables. (Use this,
            not ``--trainer.gradient_clip_val``, which Lightning refuses under manual optimisation.)
        ema_decay: Keep an exponential moving average of the policy weights with this decay (InstructGPT: 0.992)
            and export it; None exports the last weights.
        dtype: Weights dtype of all four models (see ``SFTModule``).
        frozen_dtype: Weights dtype of the frozen reference and reward models (e.g. ``bfloat16``: half their memory);
            default ``dtype``. They carry no gradients or optimiser state either way.
        shard_frozen: Under ``--trainer.strategy=fsdp2``, shard the frozen reference and reward models like the
            trained ones (1/N of their memory per process, an all-gather per block in each of their forwards);
            False keeps a whole copy on every process (faster; combine with ``frozen_dtype``).
        gradient_checkpointing: Recompute the policy's and value model's activations in backward (less memory, about
            a third more update compute); generation is unaffected.
        lora: Train LoRA adapters on the policy; the reference is then the policy with adapters disabled.
        trust_remote_code: Allow code from the model repositories to run.
        rollout_seed: Seed of response sampling and minibatch shuffles (derived per iteration and prompt).
        log_samples_every_n_iterations: Log a table of prompt/response/score this often; 0 never.
        num_logged_samples: Rows in that table.
    """

    stage = "ppo"

    def __init__(
        self,
        model_name_or_path: str,
        reward_model_path: str | None = None,
        value_model_path: str | None = None,
        value_model: Literal["separate", "shared"] = "separate",
        reward_fn: RewardFn | None = None,
        tokenizer_name_or_path: str | None = None,
        allow_other_tokenizer: bool = False,
        export_dir: str | None = None,
        export_every_n_iterations: int = 0,
        minibatch_size: int = 8,
        micro_batch_size: int = 8,
        forward_batch_size: int | None = None,
        advantage_estimator: Literal["gae", "rloo", "grpo", "dr_grpo", "reinforce_pp"] = "gae",
        samples_per_prompt: int = 1,
        kl_in_loss: bool = False,
        loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "constant"] | None = None,
        ppo_epochs: int | None = None,
        trim_padding: bool = True,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        no_eos_score: float | None = -1.0,
        kl_coef: float = 0.02,
        kl_target: float | None = None,
        kl_horizon: float = 10000.0,
        kl_estimator: Literal["k1", "k3"] = "k1",
        whiten_rewards: bool = False,
        gamma: float = 1.0,
        lam: float = 0.95,
        clip_range: float = 0.2,
        clip_range_value: float = 0.2,
        vf_coef: float = 0.1,
        ptx_coef: float = 0.0,
        ptx_examples_per_episode: float = 8.0,
        learning_rate: float = 1e-5,
        value_learning_rate: float | None = None,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup: float = 10,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        min_lr_ratio: float = 0.1,
        max_grad_norm: float | None = 1.0,
        ema_decay: float | None = None,
        dtype: str | None = None,
        frozen_dtype: str | None = None,
        shard_frozen: bool = True,
        gradient_checkpointing: bool = False,
        lora: LoraOptions | None = None,
        trust_remote_code: bool = False,
        rollout_seed: int = 42,
        log_samples_every_n_iterations: int = 10,
        num_logged_samples: int = 4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["reward_fn"])
        self.reward_fn = reward_fn
        self.export_dir = export_dir
        self.automatic_optimization = False
        self._check_options()
        self.model = None  # the policy (StageModule exports self.model)
        self.ref_model = None
        self.value_model = None
        self.value_head = None  # value_model=shared
        self.reward_model = None
        self.tokenizer = None
        self.reward_tokenizer = None
        self.kl_controller = (
            core.AdaptiveKLController(kl_coef, kl_target, kl_horizon)
            if kl_target is not None
            else core.FixedKLController(kl_coef)
        )
        self.iteration = 0
        self.ema_params: list[Tensor] | None = None
        self.minibatch_stats: list[dict[str, float]] = []
        """Per-minibatch statistics of the last iteration, in update order (for tests and debugging)."""
        self.reuse_update_logprobs = False
        """Skip the no-grad policy forward of the rollout (set at fit start; see ``ppo_epochs``)."""

    # -- derived options -----------------------------------------------------------------------------------------

    @property
    def critic_free(self) -> bool:
        """No value model: the advantages come from the other samples of a prompt or from the batch."""
        return self.hparams.advantage_estimator != "gae"

    @property
    def epochs(self) -> int:
        """Passes over each rollout (mu): ``ppo_epochs``, default 4 with GAE and 1 without a value model."""
        return self.hparams.ppo_epochs or (1 if self.critic_free else 4)

    @property
    def aggregation(self) -> str:
        """The loss aggregation: ``loss_aggregation``, default ``constant`` for Dr. GRPO and ``token_mean`` else."""
        hp = self.hparams
        return hp.loss_aggregation or ("constant" if hp.advantage_estimator == "dr_grpo" else "token_mean")

    @property
    def uses_reference(self) -> bool:
        """Whether the frozen reference runs at all: not with ``kl_coef=0`` (and no KL target)."""
        return self.hparams.kl_coef > 0 or self.hparams.kl_target is not None

    def episodes_per_process(self, prompts: int) -> int:
        return prompts * self.hparams.samples_per_prompt

    def _check_options(self) -> None:
        hp = self.hparams
        problems = []
        if (hp.reward_model_path is None) == (self.reward_fn is None):
            problems.append("give exactly one of --model.reward_model_path and --model.reward_fn")
        for name in ("minibatch_size", "micro_batch_size", "max_new_tokens", "samples_per_prompt"):
            if hp[name] < 1:
                problems.append(f"--model.{name} must be >= 1, got {hp[name]}")
        if hp.ppo_epochs is not None and hp.ppo_epochs < 1:
            problems.append(
                f"--model.ppo_epochs must be >= 1 (or null for the estimator's default), got {hp.ppo_epochs}"
            )
        if hp.advantage_estimator not in core.ADVANTAGE_ESTIMATORS:
            problems.append(f"--model.advantage_estimator must be one of {core.ADVANTAGE_ESTIMATORS}, "
                            f"got {hp.advantage_estimator!r}")  # fmt: skip
        if hp.advantage_estimator in core.GROUP_ESTIMATORS and hp.samples_per_prompt < 2:
            problems.append(f"--model.advantage_estimator={hp.advantage_estimator} needs a group: "
                            f"--model.samples_per_prompt >= 2, got {hp.samples_per_prompt}")  # fmt: skip
        if hp.loss_aggregation is not None and hp.loss_aggregation not in core.LOSS_AGGREGATIONS:
            problems.append(f"--model.loss_aggregation must be one of {core.LOSS_AGGREGATIONS}, "
                            f"got {hp.loss_aggregation!r}")  # fmt: skip
        if hp.advantage_estimator != "gae":
            if hp.value_model != "separate" or hp.value_model_path is not None:
                problems.append(f"--model.advantage_estimator={hp.advantage_estimator} has no value model: drop "
                                "--model.value_model and --model.value_model_path")  # fmt: skip
        if hp.kl_in_loss and not hp.kl_coef > 0:
            problems.append("--model.kl_in_loss needs --model.kl_coef > 0")
        if hp.micro_batch_size >= 1 and hp.minibatch_size % hp.micro_batch_size:
            problems.append(
                f"--model.micro_batch_size={hp.micro_batch_size} must divide --model.minibatch_size={hp.minibatch_size}"
            )
        if hp.value_model not in ("separate", "shared"):
            problems.append(f"--model.value_model must be 'separate' or 'shared', got {hp.value_model!r}")
        if hp.value_model == "shared" and hp.value_model_path is not None:
            problems.append("--model.value_model_path needs --model.value_model=separate (shared uses the policy)")
        if hp.forward_batch_size is not None and hp.forward_batch_size < 1:
            problems.append(f"--model.forward_batch_size must be >= 1, got {hp.forward_batch_size}")
        if not hp.temperature > 0:
            problems.append(f"--model.temperature must be > 0, got {hp.temperature}")
        if not 0 < hp.top_p <= 1:
            problems.append(f"--model.top_p must be in (0, 1], got {hp.top_p}")
        if hp.top_k < 0:
            problems.append(f"--model.top_k must be >= 0, got {hp.top_k}")
        if hp.kl_estimator not in core.KL_ESTIMATORS:
            problems.append(f"--model.kl_estimator must be one of {core.KL_ESTIMATORS}, got {hp.kl_estimator!r}")
        if hp.kl_coef < 0 or (hp.kl_target is not None and not (hp.kl_target > 0 and hp.kl_coef > 0)):
            problems.append("--model.kl_coef must be >= 0 (> 0 with --model.kl_target, which must be > 0)")
        if not 0 <= hp.gamma <= 1 or not 0 <= hp.lam <= 1:
            problems.append(f"--model.gamma and --model.lam must be in [0, 1], got {hp.gamma}, {hp.lam}")
        if not hp.clip_range > 0 or not hp.clip_range_value > 0:
            problems.append("--model.clip_range and --model.clip_range_value must be > 0")
        if hp.ptx_coef < 0:
            problems.append(f"--model.ptx_coef must be >= 0, got {hp.ptx_coef}")
        if hp.ptx_coef > 0 and round(hp.ptx_examples_per_episode * hp.micro_batch_size) < 1:
            problems.append("--model.ptx_examples_per_episode x --model.micro_batch_size must be >= 1 under PPO-ptx")
        if hp.ema_decay is not None and not 0 < hp.ema_decay < 1:
            problems.append(f"--model.ema_decay must be in (0, 1), got {hp.ema_decay}")
        if hp.export_every_n_iterations < 0:
            problems.append(f"--model.export_every_n_iterations must be >= 0, got {hp.export_every_n_iterations}")
        if hp.max_grad_norm is not None and not hp.max_grad_norm > 0:
            problems.append(f"--model.max_grad_norm must be > 0 or null, got {hp.max_grad_norm}")
        if problems:
            raise ValueError("bad PPO options:\n  " + "\n  ".join(problems))

    # -- models --------------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Load the four models lazily (after the DataModule prepared the data); dropout off in all of them.

        Under ``--trainer.strategy=fsdp2`` the trained models are sharded (each block, then the root), and the frozen
        ones too unless ``shard_frozen`` is off.
        """
        if self.model is not None:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.tokenizer_name_or_path or hp.model_name_or_path, hp.trust_remote_code)
        check_tokenizer(hp.model_name_or_path, self.tokenizer, hp.tokenizer_name_or_path, hp.allow_other_tokenizer,
                        hp.trust_remote_code)  # fmt: skip
        common = {"dtype": hp.dtype, "trust_remote_code": hp.trust_remote_code, "dropout": 0.0}
        frozen = {**common, "dtype": hp.frozen_dtype or hp.dtype}
        trained = {**common, "gradient_checkpointing": hp.gradient_checkpointing}
        # trained models in train mode (from_pretrained returns eval mode; dropout is 0 in all four anyway)
        self.model = load_model(hp.model_name_or_path, self.tokenizer, lora=hp.lora, **trained).train()
        if hp.lora is None and self.uses_reference:  # kl_coef=0: no reference at all (as TRL with beta=0)
            self.ref_model = freeze(load_model(hp.model_name_or_path, self.tokenizer, **frozen))
        if self.critic_free:
            pass  # no value model: the baseline comes from the samples (docs/critic_free.md)
        elif hp.value_model == "shared":
            weight = next(p for p in self.model.parameters() if p.is_floating_point())
            self.value_head = nn.Linear(self.model.config.hidden_size, 1, dtype=weight.dtype, device=weight.device)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        else:
            value_path = hp.value_model_path or hp.reward_model_path or hp.model_name_or_path
            self._check_same_vocab(value_path, "--model.value_model_path")
            # InstructGPT C.4: the value model is initialised from the reward model.
            self.value_model = load_model(value_path, self.tokenizer, head="score", **trained).train()
        if hp.reward_model_path is not None:
            self.reward_tokenizer = load_tokenizer(hp.reward_model_path, hp.trust_remote_code)
            self.reward_model = freeze(load_model(hp.reward_model_path, self.reward_tokenizer, head="score", **frozen))
            self.reward_shares_tokens = self.reward_tokenizer.get_vocab() == self.tokenizer.get_vocab()
        trainable, total = count_parameters(self.model)
        log.info("policy %s: %.2fM parameters, %.2fM trainable", hp.model_name_or_path, total / 1e6, trainable / 1e6)
        for model in (self.model, self.value_model, self.value_head):
            if model is not None:
                self.shard(model)
        if hp.shard_frozen:
            for model in (self.ref_model, self.reward_model):
                if model is not None:
                    self.shard(model)

    def _check_same_vocab(self, path: str, flag: str) -> None:
        if path == (self.hparams.tokenizer_name_or_path or self.hparams.model_name_or_path):
            return
        if load_tokenizer(path, self.hparams.trust_remote_code).get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(f"{flag}={path} has a different vocabulary from the policy; the value model reads the "
                             "policy's tokens, so it must share its tokenizer")  # fmt: skip

    @contextmanager
    def reference(self):
        """The frozen reference policy: the LoRA policy with adapters disabled, or the frozen SFT copy."""
        if self.ref_model is not None:
            yield self.ref_model
        else:
            with self.model.disable_adapter():
                yield self.model

    def setup(self, stage: str) -> None:
        super().setup(stage)  # refuses strategies no stage supports
        if stage != "fit":
            return
        trainer, hp = self.trainer, self.hparams
        problems = []
        rollout_batch_size = getattr(trainer.datamodule, "batch_size", None) if trainer.datamodule else None
        k = hp.samples_per_prompt
        if rollout_batch_size is not None and self.episodes_per_process(rollout_batch_size) % hp.minibatch_size:
            per = f" x --model.samples_per_prompt={k}" if k > 1 else ""
            problems.append(
                f"--model.minibatch_size={hp.minibatch_size} must divide the rollout batch --data.batch_size="
                f"{rollout_batch_size}{per} ({self.episodes_per_process(rollout_batch_size)} episodes per process; "
                "minibatch_size counts episodes)"
            )
        if trainer.gradient_clip_val:
            problems.append("PPO clips gradients itself: use --model.max_grad_norm, not --trainer.gradient_clip_val")
        if trainer.accumulate_grad_batches != 1:
            problems.append("PPO accumulates micro-batches itself: use --model.micro_batch_size, not "
                            "--trainer.accumulate_grad_batches")  # fmt: skip
        if trainer.max_steps != -1:
            problems.append("--trainer.max_steps counts optimizer steps, not PPO iterations: limit PPO with "
                            "--trainer.max_epochs and --trainer.limit_train_batches")  # fmt: skip
        problems += self.length_problems()
        if problems:
            raise ValueError("bad PPO configuration:\n  " + "\n  ".join(problems))
        if hp.ptx_coef > 0:
            self.pretraining = trainer.datamodule.load_pretraining()

    def length_problems(self) -> list[str]:
        """The longest training prompt and a response of ``--model.max_new_tokens`` must fit the policy's positions:
        past them a GPT-2 stops with ``IndexError: index out of range`` in the middle of a rollout."""
        from transformers import AutoConfig

        hp, dm = self.hparams, self.trainer.datamodule
        dataset = getattr(dm, "train_dataset", None)
        path = hp.model_name_or_path
        if not dataset or not Path(path).is_dir():
            return []
        longest = max(len(row["prompt_ids"]) for row in dataset)
        config = AutoConfig.from_pretrained(path)
        positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        if positions is None or longest + hp.max_new_tokens <= positions:
            return []
        return [
            f"the longest prompt ({longest} tokens, at most --data.max_length={dm.max_length}) + "
            f"--model.max_new_tokens={hp.max_new_tokens} = {longest + hp.max_new_tokens} tokens, more than the "
            f"{positions} positions of the policy {path}: lower --model.max_new_tokens or --data.max_length"
        ]

    def on_fit_start(self) -> None:
        hp = self.hparams
        prompts = self.trainer.datamodule.batch_size
        episodes = self.episodes_per_process(prompts)
        n_minibatches = episodes // hp.minibatch_size
        # one optimizer step per rollout and no policy log-probs in the reward: the rollout's policy forward would
        # only give the old log-probs, which then equal the update's own (ratio exactly 1)
        self.reuse_update_logprobs = (
            self.critic_free and self.epochs * n_minibatches == 1 and (not self.uses_reference or hp.kl_in_loss)
        )
        if self.trainer.is_global_zero:
            log.info(
                "%s batch sizes: %d prompts x %d samples = %d episodes per iteration per process x %d process(es) "
                "(%d episodes per iteration); minibatch %d episodes (%d micro-batches of %d) -> %d optimizer steps per "
                "iteration (%d epochs x %d minibatches); value model: %s; rollout policy forward: %s",
                hp.advantage_estimator, prompts, hp.samples_per_prompt, episodes, self.trainer.world_size,
                episodes * self.trainer.world_size, hp.minibatch_size, hp.minibatch_size // hp.micro_batch_size,
                hp.micro_batch_size, self.epochs * n_minibatches, self.epochs, n_minibatches,
                "none" if self.critic_free else hp.value_model,
                "skipped (ratio 1)" if self.reuse_update_logprobs else "yes",
            )  # fmt: skip

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        value_lr = hp.value_learning_rate or hp.learning_rate
        groups = weight_decay_groups(self.model, hp.weight_decay, lr=hp.learning_rate)
        if not self.critic_free:
            groups += weight_decay_groups(self.value_model or self.value_head, hp.weight_decay, lr=value_lr)
        optimizer = torch.optim.AdamW(groups, betas=tuple(hp.betas))
        episodes = self.episodes_per_process(self.trainer.datamodule.batch_size)
        total_steps = self.trainer.estimated_stepping_batches * self.epochs * (episodes // hp.minibatch_size)
        min_ratio = hp.min_lr_ratio if hp.lr_schedule == "cosine" else 1.0
        schedule = warmup_cosine_lambda(resolve_warmup(hp.warmup, int(total_steps)), int(total_steps), min_ratio)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": LambdaLR(optimizer, schedule), "interval": "step"},
        }

    # -- one PPO iteration ---------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        start = self._now()
        batch = self.episodes_of(batch)  # k rows per prompt
        rollout, rollout_stats = self.collect_rollout(batch)  # no grad
        train_stats = self.ppo_update(rollout)  # ppo_epochs x minibatches x micro-batches
        stats = {**rollout_stats, **train_stats}  # the update measured kl and entropy when the rollout skipped them
        self.kl_controller.update(stats["ppo/kl"], n_steps=len(rollout) * self.trainer.world_size)
        self.iteration += 1
        stats["ppo/episodes_per_second"] = len(rollout) * self.trainer.world_size / (self._now() - start)
        self.log_dict({**stats, "ppo/iteration": float(self.iteration)}, sync_dist=True)
        self.log("ppo/score", rollout_stats["ppo/score_mean"], prog_bar=True, sync_dist=True)
        self.maybe_log_samples(batch, rollout)
        self.maybe_export_iteration()

    def episodes_of(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch with each prompt repeated ``samples_per_prompt`` times, a prompt's k rows contiguous (they stay
        on this process, so a prompt's baseline is exact under DDP); ``sample`` numbers the k samples."""
        k = self.hparams.samples_per_prompt
        index = batch["index"]
        sample = torch.arange(k, device=index.device).repeat(len(index))
        return {**{name: value.repeat_interleave(k, dim=0) for name, value in batch.items()}, "sample": sample}

    @torch.no_grad()
    def collect_rollout(self, batch: dict[str, Tensor]) -> tuple[Rollout, dict[str, float]]:
        """Generate, score and evaluate one batch of prompts; advantages whitened over all ranks."""
        hp = self.hparams
        prompt_ids, prompt_mask = batch["input_ids"], batch["attention_mask"].bool()
        # 1. sample responses, one random stream per prompt (same rollout with 1 or N processes)
        start = self._now()
        if hp.samples_per_prompt == 1:  # PPO's streams, unchanged
            seeds = [sample_seed(hp.rollout_seed, self.iteration, int(i)) for i in batch["index"]]
        else:  # one stream per (prompt, sample): the same rollout whichever process holds the prompt
            seeds = [sample_seed(hp.rollout_seed, self.iteration, int(i), int(j))
                     for i, j in zip(batch["index"], batch["sample"], strict=True)]  # fmt: skip
        with gathered(self.model) as policy:  # sharded weights gathered once, not at every decode step
            responses = sample_responses(
                policy, prompt_ids, prompt_mask, seeds, max_new_tokens=hp.max_new_tokens,
                eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
                temperature=hp.temperature, top_k=hp.top_k, top_p=hp.top_p,
            )  # fmt: skip
        time_generation = self._now() - start
        # 2. mask after the first EOS; the padded sequence the models read
        response_mask, has_eos = first_eos_mask(responses, self.tokenizer.eos_token_id)
        responses = responses.masked_fill(~response_mask, self.tokenizer.pad_token_id)
        query_responses = torch.cat([prompt_ids, responses], dim=1)
        attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
        response_len = responses.shape[1]
        # 3. score at EOS (the penalty without EOS), then each model once over the rollout
        start = self._now()
        scores = self.score_responses(prompt_ids, prompt_mask, responses, response_mask)
        if hp.no_eos_score is not None:
            scores = torch.where(has_eos, scores, torch.full_like(scores, hp.no_eos_score))
        chunk = hp.forward_batch_size or hp.micro_batch_size
        zeros = torch.zeros(response_mask.shape, device=response_mask.device)
        if self.reuse_update_logprobs:  # the update's own forward gives them (ratio 1), and kl and entropy
            logprobs, entropy, values = zeros, None, None
        else:
            logprobs, entropy, values = self._policy_outputs(query_responses, attention_mask, response_len, chunk)
        ref_logprobs = zeros
        if self.uses_reference:
            with self.reference() as ref:
                ref_logprobs = in_chunks(
                    lambda q, a: response_logprobs(ref, q, a, response_len, hp.temperature)[0],
                    chunk, query_responses, attention_mask,
                )  # fmt: skip
        if self.critic_free:
            values = zeros
        elif values is None:
            values = in_chunks(
                lambda q, a: token_values(self.value_model, q, a, response_len), chunk, query_responses, attention_mask
            )
        time_scoring = self._now() - start
        # 4. per-token rewards (score at the last token, KL on every token unless it is in the loss), advantages
        kl_coef = self.kl_controller.value
        reward_kl_coef = 0.0 if hp.kl_in_loss else kl_coef
        rewards, kl = core.kl_rewards(logprobs, ref_logprobs, scores, response_mask, reward_kl_coef, hp.kl_estimator)
        if hp.whiten_rewards:
            rewards = core.masked_whiten(rewards, response_mask, shift_mean=False, all_reduce=self.all_reduce_sum)
        advantages, returns = self.advantages(rewards, values, response_mask)
        rollout = Rollout(
            query_responses=query_responses, attention_mask=attention_mask, response_mask=response_mask,
            logprobs=logprobs, ref_logprobs=ref_logprobs, values=values, scores=scores, rewards=rewards,
            advantages=advantages, returns=returns, has_eos=has_eos,
        )  # fmt: skip
        score_mean, score_std = self.global_mean_std(scores)
        stats = {
            "ppo/score_mean": score_mean,
            "ppo/score_std": score_std,
            "ppo/kl_coef": kl_coef,
            "ppo/response_length": self.global_mean(response_mask.sum(1).float()),
            "ppo/eos_rate": self.global_mean(has_eos.float()),
            "ppo/reward_mean": self.global_mean(rewards.sum(1)),
            "ppo/time_generation": time_generation,
            "ppo/time_scoring": time_scoring,
        }
        if not self.reuse_update_logprobs:
            # the KL to the reference, as in the reward (k1 unless --model.kl_estimator); nan without a reference
            stats["ppo/kl"] = self.global_mean(kl.sum(1)) if self.uses_reference else float("nan")
            stats["ppo/entropy"] = self.global_mean(entropy[response_mask])
        if not self.critic_free:
            stats["ppo/explained_variance"] = float(
                core.explained_variance(values, returns, response_mask, all_reduce=self.all_reduce_sum)
            )
        if hp.samples_per_prompt > 1:
            all_equal, group_std = core.group_reward_stats(scores, hp.samples_per_prompt)
            stats["ppo/groups_all_equal"] = self.global_mean(all_equal.float())
            stats["ppo/group_score_std"] = self.global_mean(group_std)
        return rollout, stats

    def advantages(self, rewards: Tensor, values: Tensor, response_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(batch, response_len) advantages and value targets (0 without a value model) of the rollout's episodes.

        GAE and REINFORCE++ are whitened over the whole rollout, all ranks; the group estimators read only the
        prompt's own k samples, which are on this process.
        """
        hp = self.hparams
        estimator = hp.advantage_estimator
        if estimator == "gae":
            advantages, returns = core.gae(rewards, values, response_mask, hp.gamma, hp.lam)
            return core.masked_whiten(advantages, response_mask, all_reduce=self.all_reduce_sum), returns
        advantages = core.critic_free_advantages(
            rewards, response_mask, estimator, hp.samples_per_prompt, hp.gamma, all_reduce=self.all_reduce_sum
        )
        return advantages, values  # no value targets: nothing learns them

    def _policy_outputs(
        self, query_responses: Tensor, attention_mask: Tensor, response_len: int, chunk: int
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Log-probs and entropy of the policy over the rollout, and the values when the value head is shared."""
        parts = [
            response_logprobs(self.model, query_responses[s], attention_mask[s], response_len,
                              self.hparams.temperature, with_entropy=True, value_head=self.value_head)
            for s in (slice(i, i + chunk) for i in range(0, len(query_responses), chunk))
        ]  # fmt: skip
        values = torch.cat([p[2] for p in parts]) if self.value_head is not None else None
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), values

    def score_responses(
        self, prompt_ids: Tensor, prompt_mask: Tensor, responses: Tensor, response_mask: Tensor
    ) -> Tensor:
        """(batch,) the reward of each response: the reward model at its last token, or ``reward_fn``.

        With a reward model sharing the policy's vocabulary the tokens are scored as they are; otherwise the text
        is re-tokenised with the reward model's tokenizer (EOS appended) and scored at its last token.
        """
        hp = self.hparams
        lengths = response_mask.sum(1)
        if self.reward_fn is not None or not self.reward_shares_tokens:
            prompts = [
                self.tokenizer.decode(p[m], skip_special_tokens=True)
                for p, m in zip(prompt_ids, prompt_mask, strict=True)
            ]
            texts = [
                self.tokenizer.decode(r[:n], skip_special_tokens=True) for r, n in zip(responses, lengths, strict=True)
            ]
            if self.reward_fn is not None:
                return torch.as_tensor(self.reward_fn(prompts, texts), dtype=torch.float32, device=responses.device)
            eos = self.reward_tokenizer.eos_token_id
            seqs = [self.reward_tokenizer(p + t, add_special_tokens=False)["input_ids"] + [eos]
                    for p, t in zip(prompts, texts, strict=True)]  # fmt: skip
            input_ids = pad_right(seqs, self.reward_tokenizer.pad_token_id).to(responses.device)
            mask = pad_right([[1] * len(s) for s in seqs], 0).bool().to(responses.device)
            last = torch.tensor([len(s) - 1 for s in seqs], device=responses.device)
        else:
            input_ids = torch.cat([prompt_ids, responses], dim=1)
            mask = torch.cat([prompt_mask, response_mask], dim=1)
            last = prompt_ids.shape[1] + lengths - 1  # the EOS, or the last token of a truncated response
        chunk = hp.forward_batch_size or hp.micro_batch_size
        return in_chunks(lambda q, a, i: score_at_last_token(self.reward_model, q, a, i), chunk, input_ids, mask, last)

    def ppo_update(self, rollout: Rollout) -> dict[str, float]:
        """``ppo_epochs`` passes over the rollout, one optimizer step per minibatch; mean statistics returned.

        With ``reuse_update_logprobs`` the single step's forward also measures the rollout's ``ppo/kl`` and
        ``ppo/entropy`` (the policy has not moved yet, so they are the rollout's)."""
        hp = self.hparams
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        rank, world = self.trainer.global_rank, self.trainer.world_size
        generator = torch.Generator().manual_seed(sample_seed(hp.rollout_seed, self.iteration, -1 - rank))
        buffer = RolloutBuffer(rollout, hp.minibatch_size, hp.micro_batch_size, generator, hp.trim_padding)
        start = self._now()
        self.minibatch_stats = []
        for epoch in range(self.epochs):
            for step, minibatch in enumerate(buffer.minibatches()):
                n_tokens = self.minibatch_normaliser(minibatch)
                stream_step = (self.iteration * self.epochs + epoch) * len(buffer) + step
                ptx_batches = self.pretraining_micro_batches(stream_step, len(minibatch), rank, world)
                ptx_tokens = self.ptx_tokens(ptx_batches)
                stats: dict[str, float] = defaultdict(float)
                for micro, ptx_batch in zip(minibatch, ptx_batches, strict=True):
                    loss, micro_stats = self.micro_batch_loss(micro, n_tokens, ptx_batch, ptx_tokens)
                    self.manual_backward(loss)
                    for key, value in micro_stats.items():
                        stats[key] += value
                if hp.max_grad_norm is not None:
                    self.clip_gradients(optimizer, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                self.update_ema()
                self.minibatch_stats.append(dict(stats))
        stats = {f"ppo/{k}": sum(s[k] for s in self.minibatch_stats) / len(self.minibatch_stats)
                 for k in self.minibatch_stats[0]}  # fmt: skip
        if self.reuse_update_logprobs:  # sums over this process's episodes and tokens, made global means
            kl_sum = stats.pop("ppo/kl_sum")
            stats["ppo/kl"] = self.global_ratio(kl_sum, len(rollout)) if self.uses_reference else float("nan")
            stats["ppo/entropy"] = self.global_ratio(stats.pop("ppo/entropy_sum"), float(rollout.response_mask.sum()))
        stats["ppo/time_training"] = self._now() - start
        stats["ppo/lr"] = scheduler.get_last_lr()[0]
        return stats

    def micro_batch_loss(
        self,
        micro: Rollout,
        minibatch_normaliser: Tensor,
        ptx_batch: dict[str, Tensor] | None = None,
        ptx_tokens: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """This micro-batch's share of the minibatch loss: token means become sums over the minibatch's tokens
        (episode means over its episodes, under the other aggregations; see :meth:`minibatch_normaliser`).

        Returns:
            The loss to backpropagate and statistics already weighted so that summing over the micro-batches of a
            minibatch gives the minibatch's values.
        """
        hp = self.hparams
        mask = micro.response_mask
        # this micro-batch's share of the minibatch: its tokens under token_mean, else its episodes
        count = mask.sum() if self.aggregation == "token_mean" else torch.tensor(float(len(micro)), device=mask.device)
        share = count / minibatch_normaliser
        q, a, n = micro.query_responses, micro.attention_mask, micro.response_len
        reuse = self.reuse_update_logprobs
        outputs = response_logprobs(self.model, q, a, n, hp.temperature, with_entropy=reuse, value_head=self.value_head)
        logprobs = outputs[0]  # with a shared value head the same forward gives the values too
        old_logprobs = logprobs.detach() if reuse else micro.logprobs  # one step per rollout: ratio exactly 1
        policy_loss, policy_stats = core.clipped_policy_loss(
            logprobs, old_logprobs, micro.advantages, mask, hp.clip_range, self.aggregation, hp.max_new_tokens
        )
        loss, stats = policy_loss, {"policy_loss": policy_loss, **policy_stats}
        if not self.critic_free:
            values = outputs[2] if self.value_head is not None else token_values(self.value_model, q, a, n)
            value_loss, value_stats = core.clipped_value_loss(
                values, micro.values, micro.returns, mask, hp.clip_range_value
            )
            loss = loss + hp.vf_coef * value_loss
            stats.update(value_loss=value_loss, **value_stats)
        if hp.kl_in_loss:  # GRPO's placement: k3 per token, aggregated as the policy loss (biased gradient)
            kl_tokens = core.kl_penalty(logprobs, micro.ref_logprobs, mask, "k3")
            kl_loss = core.aggregate_loss(kl_tokens, mask, self.aggregation, hp.max_new_tokens)
            loss = loss + self.kl_controller.value * kl_loss
            stats["kl_loss"] = kl_loss
        loss = share * loss
        stats = {k: float(v.detach() * share) for k, v in stats.items()}
        if reuse:  # sums, not shares: made global means over the rollout in ppo_update
            with torch.no_grad():
                kl_stat = core.kl_penalty(logprobs, micro.ref_logprobs, mask, hp.kl_estimator)
                stats["kl_sum"] = float(kl_stat.sum())
                stats["entropy_sum"] = float(outputs[1][mask].sum())
        if ptx_batch is not None:
            # PPO-ptx (InstructGPT eq. 2): gamma x the pretraining LM loss, in the same gradients.
            logits = self.model(input_ids=ptx_batch["input_ids"], attention_mask=ptx_batch["attention_mask"].long(),
                                use_cache=False).logits  # fmt: skip
            ptx_sum, _ = completion_loss(logits, ptx_batch["labels"], reduction="sum")
            ptx_loss = ptx_sum / ptx_tokens  # this micro-batch's share of the minibatch's token mean
            loss = loss + hp.ptx_coef * ptx_loss
            stats["ptx_loss"] = float(ptx_loss.detach())
        return loss, stats

    def minibatch_normaliser(self, minibatch: list[Rollout]) -> Tensor:
        """The minibatch's response tokens per process (``token_mean``) or its episodes (the other aggregations),
        averaged over processes.

        DDP and FSDP2 average gradients over processes, so dividing each process's token sum by this mean gives the
        mean over all the minibatch's tokens on all processes: 2 processes of 4 episodes train as 1 process of 8.
        """
        if self.aggregation != "token_mean":
            return torch.tensor(float(sum(len(m) for m in minibatch)), device=self.device)  # the same on every rank
        n_tokens = sum(m.response_mask.sum() for m in minibatch).float()
        return self.all_reduce_sum(n_tokens) / self.trainer.world_size

    def global_ratio(self, total: float, count: float) -> float:
        """``sum over ranks of total / sum over ranks of count``."""
        both = self.all_reduce_sum(torch.tensor([total, count], dtype=torch.float64, device=self.device))
        return float(both[0] / both[1])

    def ptx_tokens(self, ptx_batches: list) -> Tensor | None:
        """The pretraining tokens of one minibatch per process, averaged over processes (see
        :meth:`minibatch_normaliser`); None without PPO-ptx."""
        if ptx_batches[0] is None:
            return None
        n_tokens = sum((b["labels"][:, 1:] != IGNORE_INDEX).sum() for b in ptx_batches).float()
        return (self.all_reduce_sum(n_tokens) / self.trainer.world_size).clamp(min=1)

    def pretraining_micro_batches(self, step: int, n_micro: int, rank: int, world: int) -> list:
        """The pretraining micro-batches of one minibatch under PPO-ptx, else ``[None] * n_micro``."""
        hp = self.hparams
        if hp.ptx_coef == 0:
            return [None] * n_micro
        per_micro = round(hp.ptx_examples_per_episode * hp.micro_batch_size)
        batch = self.pretraining.batch(step, rank, world, per_micro * n_micro)
        return [{k: v[i * per_micro : (i + 1) * per_micro].to(self.device) for k, v in batch.items()}
                for i in range(n_micro)]  # fmt: skip

    # -- reductions across ranks ---------------------------------------------------------------------------------

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Elementwise sum over all ranks (the identity on one process)."""
        if self.trainer.world_size == 1:
            return tensor
        return self.trainer.strategy.reduce(tensor.clone(), reduce_op="sum")

    def global_mean(self, x: Tensor) -> float:
        x = at_least_float32(x)
        total, count = self.all_reduce_sum(torch.stack([x.sum(), x.new_tensor(float(x.numel()))]))
        return float(total / count)

    def global_mean_std(self, x: Tensor) -> tuple[float, float]:
        x = at_least_float32(x)
        total, count = self.all_reduce_sum(torch.stack([x.sum(), x.new_tensor(float(x.numel()))]))
        mean = total / count
        squared_dev = self.all_reduce_sum(((x - mean) ** 2).sum())  # centred before squaring: no cancellation
        return float(mean), float((squared_dev / count).sqrt())

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # -- EMA, samples, checkpoints, export -----------------------------------------------------------------------

    def _policy_trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = self.hparams.ema_decay
        if decay is None:
            return
        reshard(self.model)  # under FSDP2: read the updated shards, not a stale gathered copy
        params = self._policy_trainable()
        if self.ema_params is None:
            self.ema_params = [p.detach().clone() for p in params]
            return
        for ema, p in zip(self.ema_params, params, strict=True):
            ema.lerp_(p.detach(), 1.0 - decay)

    def maybe_log_samples(self, batch: dict[str, Tensor], rollout: Rollout) -> None:
        every = self.hparams.log_samples_every_n_iterations
        if not every or (self.iteration - 1) % every or not self.trainer.is_global_zero:
            return
        n = min(self.hparams.num_logged_samples, len(rollout))
        prompt_len = batch["input_ids"].shape[1]
        rows = []
        for i in range(n):
            prompt = batch["input_ids"][i][batch["attention_mask"][i].bool()]
            response = rollout.query_responses[i, prompt_len:][rollout.response_mask[i]]
            rows.append([self.iteration, self.tokenizer.decode(prompt), self.tokenizer.decode(response),
                         float(rollout.scores[i])])  # fmt: skip
        log_table(self, "ppo/samples", ["iteration", "prompt", "response", "score"], rows)

    def iteration_export_dir(self, iteration: int) -> Path:
        """Where ``export_every_n_iterations`` writes the policy after ``iteration``: beside the final export."""
        return self.resolved_export_dir().parent / "hf_iterations" / f"iter_{iteration:04d}"

    def maybe_export_iteration(self) -> None:
        """Export the policy every ``export_every_n_iterations`` iterations (every rank takes part, rank 0 writes)."""
        every = self.hparams.export_every_n_iterations
        if every and self.iteration % every == 0:
            self.export(self.iteration_export_dir(self.iteration))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Whole tensors: under FSDP2 the entries outside the state dicts are saved by rank 0 alone, so a shard
        # would lose the other ranks' parts. (full_tensor is a collective; every rank saves.)
        ema = None if self.ema_params is None else [full_tensor(t).cpu() for t in self.ema_params]
        checkpoint["ppo"] = {
            "iteration": self.iteration,
            "kl_controller": self.kl_controller.state_dict(),
            "ema_params": ema,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["ppo"]
        self.iteration = state["iteration"]
        self.kl_controller.load_state_dict(state["kl_controller"])
        ema = state["ema_params"]
        if ema is not None:  # each rank keeps its shard, laid out as the parameter it follows
            ema = [shard_like(t, p) for t, p in zip(ema, self._policy_trainable(), strict=True)]
        self.ema_params = ema

    def export(self, path: Path | None = None) -> Path | None:
        """Export the policy (its EMA weights when ``ema_decay`` is set) as a Hugging Face directory at ``path``,
        default the export dir."""
        context = self._ema_weights() if self.ema_params is not None else nullcontext()
        with context:
            return super().export(path)

    @contextmanager
    def _ema_weights(self):
        reshard(self.model)  # under FSDP2: write into the shards that the export gathers
        params = self._policy_trainable()
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, ema in zip(params, self.ema_params, strict=True):
                p.copy_(ema)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)

    def export_metadata(self) -> dict[str, Any]:
        meta = super().export_metadata()
        meta["hparams"]["lora"] = lora_to_dict(self.hparams.lora)
        meta["ppo_iterations"] = self.iteration
        return meta
