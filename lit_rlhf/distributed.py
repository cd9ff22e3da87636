"""FSDP2 by a flag: ``--trainer.strategy=fsdp2``, and the sharding and gathering the stages need for it.

Lightning's ``fsdp`` strategy is FSDP1, which refuses a CPU and needs an accelerator. FSDP2 (``fully_shard``) runs
through Lightning's ``ModelParallelStrategy`` on CPU (gloo) and GPU (nccl) alike: the strategy builds a device mesh,
and each stage shards its trainable model in ``configure_model`` with :func:`shard_model` (each transformer block,
then the root). Frozen models (PPO's reference and reward models) can be sharded the same way or kept replicated.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch import nn

FSDP2 = "fsdp2"


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
    fully_shard(model, **kwargs)
    return model


def is_sharded(model: nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole (unsharded) state dict of an FSDP2 model on CPU, or None for a model that is not sharded.

    A collective: every rank must call it.
    """
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a (possibly sharded) parameter; a collective for a DTensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


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
