"""FSDP2 by a flag: ``--trainer.strategy=fsdp2``, and the sharding and gathering the stages need for it.

Lightning's ``fsdp`` strategy is FSDP1, which refuses a CPU and needs an accelerator. FSDP2 (``fully_shard``) runs
through Lightning's ``ModelParallelStrategy`` on CPU (gloo) and GPU (nccl) alike: the strategy builds a device mesh,
and each stage shards its trainable model in ``configure_model`` with :func:`shard_model` (each transformer block,
then the root). Frozen models (PPO's reference and reward models) can be sharded the same way or kept replicated.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    SingleDeviceXLAStrategy,
    Strategy,
    StrategyRegistry,
    XLAStrategy,
)
from torch import nn

FSDP2 = "fsdp2"
SUPPORTED_STRATEGIES = (
    "auto or single_device (one process), ddp (and its variants: ddp_spawn, ddp_find_unused_parameters_true, ...) "
    "or fsdp2"
)
FSDP2_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-true")
"""What Lightning's ModelParallelStrategy accepts; fp16 mixed precision would need a sharded gradient scaler."""


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy as pure FSDP2: every process is one data-parallel shard (no tensor
    parallelism). Selected with ``--trainer.strategy=fsdp2``.

    Args:
        save_distributed_checkpoint: Each rank saves its own shard (a checkpoint folder); False gathers one file.
        process_group_backend: ``gloo`` (CPU) or ``nccl`` (GPU); None picks by accelerator.
    """

    def __init__(self, save_distributed_checkpoint: bool = True, process_group_backend: str | None = None) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
        )

    def setup_environment(self) -> None:
        # "auto" would mean one data-parallel group per node; FSDP2 here shards over every process.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


if FSDP2 not in StrategyRegistry:
    StrategyRegistry.register(
        FSDP2,
        FSDP2Strategy,
        description="FSDP2 (fully_shard per transformer block, then the root) over all processes; CPU or GPU",
    )


def strategy_problem(strategy: str | Strategy | type[Strategy], precision: str | None = None) -> str | None:
    """Why the stages cannot run under ``strategy``, naming the supported ones; None when they can.

    Args:
        strategy: A ``--trainer.strategy`` name, a Strategy or a Strategy class. Names Lightning does not know are
            left to Lightning to report.
        precision: The trainer's precision (e.g. ``bf16-mixed``), checked for FSDP2; None skips that check.
    """
    if isinstance(strategy, str):
        if strategy not in StrategyRegistry:
            return None
        cls, flag = StrategyRegistry[strategy]["strategy"], f"--trainer.strategy={strategy}"
    else:
        cls = strategy if isinstance(strategy, type) else type(strategy)
        flag = f"the strategy {cls.__name__}"
    supported = f"Supported strategies: {SUPPORTED_STRATEGIES}."
    if issubclass(cls, FSDPStrategy):
        return (
            f"{flag} is Lightning's FSDP1, which lit_rlhf does not support (it refuses a CPU, and the stages shard "
            f"and export with FSDP2). Use --trainer.strategy=fsdp2 for sharded training. {supported}"
        )
    if issubclass(cls, DeepSpeedStrategy):  # before DDPStrategy: DeepSpeedStrategy subclasses it
        return (
            f"{flag}: DeepSpeed is not supported (not a dependency; ZeRO-sharded weights are not gathered for the "
            f"export). Use --trainer.strategy=fsdp2 for sharded training. {supported}"
        )
    if issubclass(cls, ModelParallelStrategy):
        if getattr(strategy, "_tensor_parallel_size", 1) not in (1, "auto") and not isinstance(strategy, type):
            return (
                f"{flag} with tensor_parallel_size={strategy._tensor_parallel_size}: tensor parallelism is not "
                f"supported; the stages shard with FSDP2 over all processes. Use --trainer.strategy=fsdp2. {supported}"
            )
        if precision is not None and precision not in FSDP2_PRECISIONS:
            return (
                f"{flag} does not support --trainer.precision={precision} (fp16 mixed precision needs a sharded "
                f"gradient scaler); use one of {', '.join(FSDP2_PRECISIONS)}."
            )
        return None
    if issubclass(cls, (SingleDeviceStrategy, DDPStrategy)) and not issubclass(
        cls, (XLAStrategy, SingleDeviceXLAStrategy)
    ):
        return None  # XLA's strategies subclass these, but nothing here runs on TPUs
    return f"{flag} is not supported by lit_rlhf's stages. {supported}"


def is_fsdp2(strategy: Any) -> bool:
    return isinstance(strategy, ModelParallelStrategy)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformer: the children of its largest ``nn.ModuleList`` (``h``, ``layers``...)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        return []
    biggest = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
    return list(biggest)


def shard_model(model: nn.Module, mesh: Any, mixed_precision: torch.dtype | None = None) -> nn.Module:
    """Apply FSDP2 ``fully_shard`` to each transformer block and then to the root, over ``mesh``.

    Args:
        model: The model to shard in place.
        mesh: The data-parallel device mesh (``self.device_mesh["data_parallel"]`` in a LightningModule).
        mixed_precision: Compute dtype of parameters in forward/backward (fp32 master weights kept), or None.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {"mesh": mesh}
    if mixed_precision is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=mixed_precision, reduce_dtype=torch.float32)
    for block in transformer_blocks(model):
        fully_shard(block, **kwargs)
    # Under peft the root is the wrapped transformers model: peft's generate() calls it, not the PeftModel, and
    # FSDP2 needs the first forward of a sharded model to go through its root.
    fully_shard(model.get_base_model() if hasattr(model, "get_base_model") else model, **kwargs)
    return model


def mixed_precision_dtype(precision: str) -> torch.dtype | None:
    """The FSDP2 compute dtype for a trainer precision: parameters are gathered in it, the fp32 shards stay the
    master weights and gradients are reduced in fp32. ``bf16-mixed`` gives bfloat16 (Lightning's autocast runs as
    well); ``32-true`` gives None (plain fp32)."""
    return {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-true": torch.float16}.get(precision)


def is_sharded(model: nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole (unsharded) state dict of an FSDP2 model on CPU, or None for a model that is not sharded.

    A collective: every rank must call it.
    """
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Tied weights (GPT-2's lm_head is its wte) come back as separate copies; make them one tensor again, so that
    # save_pretrained writes them once, as it does for an unsharded model.
    first_name: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        tied_to = first_name.setdefault(id(param), name)
        if tied_to != name and name in state_dict and tied_to in state_dict:
            state_dict[name] = state_dict[tied_to]
    return state_dict


def unsharded_peft_copy(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A plain, unsharded copy of a sharded LoRA (peft) model, holding ``state_dict`` (its :func:`full_state_dict`).

    Exporting merges the adapters into a copy of the model, but an FSDP2 module cannot be deep-copied: this builds
    the same architecture afresh from the base model's config and peft config, then loads the gathered weights
    (strictly, so a missing or extra key fails loudly). Costs one more full copy of the model in CPU memory.
    """
    from peft import get_peft_model
    from torch.distributed.fsdp import FSDPModule

    base = model.get_base_model()
    base_cls = next(c for c in type(base).__mro__ if not issubclass(c, FSDPModule))  # fully_shard subclasses it
    dtype = next(t.dtype for t in state_dict.values() if t.is_floating_point())
    fresh = base_cls(base.config).to(dtype)
    copy = get_peft_model(fresh, model.peft_config[model.active_adapter])
    copy.load_state_dict(state_dict, strict=True)
    return copy


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a (possibly sharded) parameter; a collective for a DTensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def shard_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``param``: this rank's shard of it for an FSDP2 (DTensor) parameter, else ``full`` on
    the parameter's device and dtype. Every rank holds ``full``, so no communication happens."""
    full = full.to(device=param.device, dtype=param.dtype)
    if not hasattr(param, "device_mesh"):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)


def add_to_parameter(param: torch.Tensor, delta: torch.Tensor) -> None:
    """``param += delta`` in place, for a plain or an FSDP2-sharded (DTensor) parameter; ``delta`` is whole."""
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        delta = distribute_tensor(delta.to(param.dtype), param.device_mesh, param.placements)
    param.add_(delta.to(param.dtype))


def reshard(model: nn.Module) -> None:
    """Put every FSDP2 module of ``model`` back in its sharded state.

    FSDP2 keeps the root's parameters unsharded after a forward; an in-place edit of a parameter then lands in
    the temporary unsharded copy and is lost. Call this before editing sharded parameters.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Hold an FSDP2 model's parameters whole for the duration of the block (no-op for an unsharded model).

    For generation: without it, every decode step all-gathers and frees each block again (one collective per
    block per token). Inside, each rank holds the whole model once (the memory of a replicated copy); on leaving,
    the parameters are sharded again and the modules go back to resharding after forward (the root never does:
    FSDP2's default). Collective: every rank must enter it.
    """
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not modules:
        yield model
        return
    root = modules[0]  # modules() is pre-order: the outermost sharded module comes first
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield model
    finally:
        for module in modules:
            module.reshard()
            module.set_reshard_after_forward(module is not root, recurse=False)
