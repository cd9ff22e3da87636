"""PPO throughput on CPU: episodes/s and generated tokens/s, with the time split generation / scoring / training.

    python benchmarks/ppo.py                       # tiny random-init GPT-2 policy and RM, the tiny config's sizes
    python benchmarks/ppo.py --sft runs/sft-tiny/hf --rm runs/rm-tiny/hf   # the embedded default's models

Not a test: numbers depend on the machine and its load. Prints the command line that produced them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch


def build_models(root: Path) -> tuple[str, str]:
    from lit_rlhf.models import export_pretrained, load_model, train_tokenizer

    texts = [f"\n\nHuman: Reverse: {w}\n\nAssistant: {w[::-1]}" for w in ("catdog", "sunmoon", "redblue") * 50]
    tok = train_tokenizer(texts, vocab_size=512)
    shape = {"n_layer": 2, "n_head": 4, "n_embd": 128, "n_positions": 256}
    sft = export_pretrained(load_model("scratch:gpt2", tok, model_config=shape), tok, root / "sft")
    rm = export_pretrained(load_model("scratch:gpt2", tok, head="score", model_config=shape), tok, root / "rm")
    return str(sft), str(rm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft", help="policy directory (default: a tiny random-init GPT-2)")
    parser.add_argument("--rm", help="reward-model directory (default: a tiny random-init GPT-2 RM)")
    parser.add_argument("--iterations", type=int, default=6, help="timed PPO iterations (after 1 warm-up)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per iteration (rollout batch)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lit_rlhf.data.prompts import PromptDataModule
    from lit_rlhf.ppo.module import PPOModule

    tmp = Path(tempfile.mkdtemp(prefix="ppo-bench-"))
    sft, rm = (args.sft, args.rm) if args.sft and args.rm else build_models(tmp)
    prompts = tmp / "prompts.jsonl"
    words = ["cat", "dog", "sun", "moon", "red", "blue", "tree", "bird"]
    lines = [
        json.dumps({"prompt": f"{v}: {a}{b}"}) for v in ("Reverse", "Repeat", "Spell") for a in words for b in words
    ]
    prompts.write_text("\n".join(lines) + "\n")

    rows: list[dict[str, float]] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("ppo/")}
            m["wall"] = time.perf_counter() - self.start
            rows.append(m)

    module = PPOModule(
        model_name_or_path=sft, reward_model_path=rm, minibatch_size=8, micro_batch_size=8,
        ppo_epochs=args.ppo_epochs, max_new_tokens=args.max_new_tokens, no_eos_score=None,
        learning_rate=1e-4, warmup=0, log_samples_every_n_iterations=0,
    )  # fmt: skip
    data = PromptDataModule(train_files=str(prompts), val_files=str(prompts), tokenizer_name_or_path=sft,
                            batch_size=args.batch_size)  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=args.iterations + 1, limit_val_batches=0,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Record()], default_root_dir=tmp,
    )  # fmt: skip
    trainer.fit(module, data)

    timed = rows[1:]  # the first iteration warms up allocators and caches
    wall = sum(r["wall"] for r in timed)
    episodes = args.batch_size * len(timed)
    tokens = sum(r["ppo/response_length"] * args.batch_size for r in timed)
    split = {k: sum(r[f"ppo/time_{k}"] for r in timed) for k in ("generation", "scoring", "training")}
    print(f"command: python {' '.join(sys.argv)}")
    print(f"device: CPU, {torch.get_num_threads()} thread(s); torch {torch.__version__}")
    print(f"{len(timed)} iterations x {args.batch_size} prompts, max_new_tokens={args.max_new_tokens}, "
          f"ppo_epochs={args.ppo_epochs}, minibatch 8")  # fmt: skip
    print(f"episodes/s: {episodes / wall:.2f}   generated tokens/s: {tokens / wall:.1f}   "
          f"(mean response {tokens / episodes:.1f} tokens)")  # fmt: skip
    for k, v in split.items():
        print(f"  {k:<10} {v:7.2f} s  {100 * v / wall:5.1f}%")
    print(f"  {'other':<10} {wall - sum(split.values()):7.2f} s")


if __name__ == "__main__":
    main()
