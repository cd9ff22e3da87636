"""Generation on an FSDP2-sharded policy: weights gathered once per rollout (``lit_rlhf.distributed.gathered``,
what PPOModule does) against FSDP2's default of gathering each block at every decode step.

    python benchmarks/fsdp2_generation.py [--processes 2] [--layers 4] [--width 256] [--batch 16] [--new-tokens 32]

Starts ``--processes`` CPU processes (gloo), shards a random GPT-2 of the given shape over them as the stages do
(each block, then the root) and times ``generate`` both ways on the same prompts, alternating, 3 repetitions each;
prints the median seconds per call, the ratio, and whether both ways produced the same tokens. Not a test: the
figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _run(rank: int, args: argparse.Namespace, port: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import GPT2Config, GPT2LMHeadModel

    from lit_rlhf.distributed import gathered, shard_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // args.processes))
    dist.init_process_group("gloo", rank=rank, world_size=args.processes)
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=args.layers,
        n_embd=args.width,
        n_head=4,
        vocab_size=1536,
        n_positions=256,
        bos_token_id=1,
        eos_token_id=1,
    )
    model = GPT2LMHeadModel(config).eval()
    shard_model(model, init_device_mesh("cpu", (args.processes,)))
    prompts = torch.randint(0, 1536, (args.batch, 24), generator=torch.Generator().manual_seed(rank))
    kwargs = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False,
              "pad_token_id": 0}  # fmt: skip

    def per_step() -> torch.Tensor:
        return model.generate(prompts, **kwargs)

    def once() -> torch.Tensor:
        with gathered(model) as whole:
            return whole.generate(prompts, **kwargs)

    times: dict[str, list[float]] = {"gathered once": [], "gathered per block and step": []}
    outputs = {}
    with torch.no_grad():
        once(), per_step()  # warm-up
        for _ in range(args.repeats):
            for name, fn in (("gathered once", once), ("gathered per block and step", per_step)):
                dist.barrier()
                start = time.perf_counter()
                outputs[name] = fn()
                dist.barrier()
                times[name].append(time.perf_counter() - start)
    if rank == 0:
        a, b = (statistics.median(t) for t in times.values())
        same = torch.equal(*outputs.values())
        print(f"{args.processes} processes, GPT-2 {args.layers}x{args.width}, batch {args.batch} per process, "
              f"{args.new_tokens} new tokens, median of {args.repeats}:")  # fmt: skip
        print(f"  gathered once (PPOModule):     {a:7.3f} s")
        print(f"  per block and decode step:     {b:7.3f} s  ({b / a:.2f}x the time)")
        print(f"  same tokens both ways: {same}")
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--port", type=int, default=29541)
    args = p.parse_args()
    mp.spawn(_run, args=(args, args.port), nprocs=args.processes, join=True)


if __name__ == "__main__":
    main()
