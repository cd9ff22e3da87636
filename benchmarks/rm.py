"""Reward-model training throughput: InstructGPT's K-wise batch against the pairwise formulation of the same data.

Both train the same model on the same prompts, each with K ranked completions, and make the same C(K, 2)
comparisons per prompt with the same loss (eq. 1). The K-wise batch forwards each completion once (K sequences
per prompt); the pairwise formulation forwards every pair as its own example (2 * C(K, 2) sequences per prompt,
12 instead of 4 at K = 4). Reported: comparisons (ordered pairs) trained per second and peak memory. On CPU each
formulation runs in its own process so that peak RSS is its own; on CUDA, peak allocated memory.

    python benchmarks/rm.py                       # K = 4, tiny GPT-2, CPU, 1 thread
    python benchmarks/rm.py --device cuda --n_layer 12 --n_embd 768 --prompts 16 --seq_len 256

Not a test: it prints figures and the command that produced them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import time

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=4, help="completions per prompt")
    p.add_argument("--prompts", type=int, default=8, help="prompts per optimizer step")
    p.add_argument("--prompt_len", type=int, default=64, help="prompt tokens")
    p.add_argument("--seq_len", type=int, default=128, help="prompt + completion tokens")
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--vocab_size", type=int, default=512)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup_steps", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="autocast dtype on CUDA")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["kwise", "pairwise"], default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build(args: argparse.Namespace):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from lit_rlhf.reward import init_score_head

    torch.manual_seed(args.seed)
    pad_id = args.vocab_size - 1
    config = GPT2Config(
        vocab_size=args.vocab_size,
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        n_head=args.n_head,
        n_positions=args.seq_len,
        num_labels=1,
        pad_token_id=pad_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2ForSequenceClassification(config).to(args.device)
    init_score_head(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(args.seed)
    prompts = torch.randint(0, pad_id, (args.prompts, args.prompt_len), generator=gen)
    completions = torch.randint(0, pad_id, (args.prompts, args.k, args.seq_len - args.prompt_len), generator=gen)
    ranks = torch.stack([torch.randperm(args.k, generator=gen) for _ in range(args.prompts)])
    return model, optimizer, prompts, completions, ranks


def kwise_batch(prompts, completions, ranks):
    """Each completion once: (prompts * K, seq_len), grouped by prompt."""
    n, k, _ = completions.shape
    input_ids = torch.cat([prompts[:, None].expand(-1, k, -1), completions], dim=2).reshape(n * k, -1)
    group_ids = torch.arange(n).repeat_interleave(k)
    return input_ids, group_ids, ranks.reshape(-1)


def pairwise_batch(prompts, completions, ranks):
    """Each ordered pair as its own example: (prompts * 2 * C(K, 2), seq_len), one group per pair."""
    n, k, _ = completions.shape
    rows, group_ids, pair_ranks = [], [], []
    for p in range(n):
        for i, j in itertools.combinations(range(k), 2):
            better, worse = (i, j) if ranks[p, i] < ranks[p, j] else (j, i)
            for rank, c in ((0, better), (1, worse)):
                rows.append(torch.cat([prompts[p], completions[p, c]]))
                group_ids.append(len(group_ids) // 2)
                pair_ranks.append(rank)
    return torch.stack(rows), torch.tensor(group_ids), torch.tensor(pair_ranks)


def memory_now(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmHWM"].split()[0]) * 1024  # peak resident set size, bytes


def run_one(args: argparse.Namespace, mode: str) -> dict:
    from lit_rlhf.reward import kwise_ranking_loss

    torch.set_num_threads(args.threads)
    model, optimizer, prompts, completions, ranks = build(args)
    make = kwise_batch if mode == "kwise" else pairwise_batch
    input_ids, group_ids, batch_ranks = (t.to(args.device) for t in make(prompts, completions, ranks))
    attention_mask = torch.ones_like(input_ids)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16" and "cuda" in args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base = memory_now(args.device)

    def step() -> float:
        with autocast:
            scores = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
        loss = kwise_ranking_loss(scores, group_ids, batch_ranks)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # synchronises

    for _ in range(args.warmup_steps):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - start
    comparisons = args.prompts * math.comb(args.k, 2) * args.steps
    return {
        "mode": mode,
        "sequences_per_step": int(input_ids.shape[0]),
        "comparisons_per_s": comparisons / elapsed,
        "peak_memory_mib": memory_now(args.device) / 2**20,
        "baseline_memory_mib": base / 2**20,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.only:
        print(json.dumps(run_one(args, args.only)))
        return
    results = {}
    for mode in ("kwise", "pairwise"):
        if args.device.startswith("cuda"):
            results[mode] = run_one(args, mode)
        else:  # a fresh process each, so each peak RSS is its own
            argv_child = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--only", mode]
            out = subprocess.run(argv_child, check=True, capture_output=True, text=True, env=os.environ).stdout
            results[mode] = json.loads(out.strip().splitlines()[-1])
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} thread(s)"
    memory = "peak allocated" if args.device.startswith("cuda") else "peak RSS (process baseline before training)"
    print(
        f"command: {shlex.join(['python', os.path.relpath(__file__), *(argv if argv is not None else sys.argv[1:])])}"
    )
    print(
        f"device: {device}; GPT-2 n_layer={args.n_layer} n_embd={args.n_embd}, K={args.k}, {args.prompts} prompts "
        f"per step, {args.seq_len} tokens per sequence, {args.steps} timed steps, torch {torch.__version__}"
    )
    print(f"{'formulation':<10} {'seqs/step':>9} {'comparisons/s':>14}  {memory}")
    for mode, r in results.items():
        print(
            f"{mode:<10} {r['sequences_per_step']:>9} {r['comparisons_per_s']:>14.1f}  "
            f"{r['peak_memory_mib']:.0f} MiB ({r['baseline_memory_mib']:.0f} MiB)"
        )
    k, p = results["kwise"], results["pairwise"]
    print(
        f"K-wise / pairwise: {k['comparisons_per_s'] / p['comparisons_per_s']:.2f}x comparisons/s, "
        f"{k['peak_memory_mib'] / p['peak_memory_mib']:.2f}x peak memory"
    )


if __name__ == "__main__":
    main()
