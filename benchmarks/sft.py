"""SFT throughput benchmark: trained tokens/s, padding waste and peak memory, for each way of batching.

    python benchmarks/sft.py --config configs/sft/tiny.yaml --steps 60

Runs the stage from a config exactly as ``lit-rlhf fit`` would (same module, data module and trainer), once per
batching mode (length-grouped, random order, packed), each in a fresh process so peak memory is its own, and prints
one row each plus the command line.
Trained tokens are the completion tokens the loss counts; processed tokens are all non-padding tokens.
Peak memory is the process's peak resident set size (CPU) or the CUDA allocator's peak (GPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time

import lightning as L
import torch

from lit_rlhf.cli import build_cli


class Throughput(L.Callback):
    """Counts tokens and time of the training batches after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.seen = 0
        self.trained = self.processed = self.slots = 0
        self.start = 0.0
        self.seconds = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen > self.warmup:
            self.trained += int((batch["labels"][:, 1:] != -100).sum())
            self.processed += int(batch["attention_mask"].sum())
            self.slots += batch["attention_mask"].numel()
            self.seconds = time.perf_counter() - self.start


def run(config: str, steps: int, warmup: int, mode: str, extra: list[str]) -> dict[str, float]:
    args = ["-c", config, f"--trainer.max_steps={steps + warmup}", "--trainer.logger=false",
            "--trainer.enable_checkpointing=false", "--trainer.limit_val_batches=0", "--trainer.callbacks=[]",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--model.export_dir=/tmp/lit_rlhf_bench_sft_hf", "--model.num_sample_prompts=0",
            f"--data.packing={mode == 'packed'}", f"--data.group_by_length={mode == 'grouped'}", *extra]  # fmt: skip
    cli = build_cli(args, run=False)
    meter = Throughput(warmup)
    cli.trainer.callbacks.append(meter)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    cli.trainer.fit(cli.model, cli.datamodule)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "trained_tok_s": meter.trained / meter.seconds,
        "processed_tok_s": meter.processed / meter.seconds,
        "padding_waste": 1 - meter.processed / max(meter.slots, 1),
        "peak_mib": peak,
        "steps_s": (meter.seen - warmup) / meter.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/sft/tiny.yaml")
    parser.add_argument("--steps", type=int, default=60, help="timed optimizer steps per mode")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--modes", default="grouped,random,packed")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # run one mode, print JSON
    parser.add_argument("extra", nargs="*", help="more lit-rlhf overrides, e.g. --data.batch_size=64")
    opts = parser.parse_args()
    if opts.one:
        print("RESULT " + json.dumps(run(opts.config, opts.steps, opts.warmup, opts.modes, opts.extra)))
        return
    rows = {}
    for mode in opts.modes.split(","):
        cmd = [sys.executable, __file__, "--one", "--config", opts.config, "--steps", str(opts.steps),
               "--warmup", str(opts.warmup), "--modes", mode, "--", *opts.extra]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows[mode] = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}")  # fmt: skip
    print(f"{'batching':<10}{'trained tok/s':>15}{'all tok/s':>12}{'steps/s':>10}{'padding':>10}{'peak MiB':>10}")
    for mode, r in rows.items():
        print(f"{mode:<10}{r['trained_tok_s']:>15.0f}{r['processed_tok_s']:>12.0f}{r['steps_s']:>10.2f}"
              f"{r['padding_waste']:>10.1%}{r['peak_mib']:>10.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
