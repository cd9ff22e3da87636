"""Shared fixtures: a tokenizer trained locally, tiny models built from configs, small record files.

No test touches a model hub: everything is built here from configs and local text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def shared_data(name: str) -> Path:
    """A file of ../shared/data, or skip the test (a user's clone has no ../shared)."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not found: the real-data samples live in ../shared/data beside the repo")
    return path


WORDS = ["cat", "dog", "sun", "tree", "bird", "fish", "moon", "star", "red", "blue", "cold", "warm"]


def reverse_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w = rng.choice(WORDS) + rng.choice(WORDS)
        out.append({"prompt": f"Reverse: {w}", "completion": w[::-1]})
    return out


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer (eos <|endoftext|>, pad <|pad|>) trained on the test texts."""
    from lit_rlhf.models import train_tokenizer

    texts = [f"\n\nHuman: {r['prompt']}\n\nAssistant: {r['completion']}" for r in reverse_records(400)]
    tok = train_tokenizer(texts * 2, vocab_size=320)
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(path)
    return path


@pytest.fixture
def tokenizer(tokenizer_dir):
    from lit_rlhf.models import load_tokenizer

    return load_tokenizer(str(tokenizer_dir))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests share two cores with each other's subprocesses: keep torch to one thread, deterministic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_cli(args: list[str]) -> str:
    """Run ``lit-rlhf ARGS`` in this process; its stdout, asserting a clean exit when it exits."""
    import contextlib
    import io

    from lit_rlhf.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(args)
        except SystemExit as e:
            assert e.code in (0, None), out.getvalue()
    return out.getvalue()


TINY_GPT2 = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 128}


@pytest.fixture(autouse=True)
def _finish_wandb_run():
    """Close a W&B run a test opened in this process, so the next test's logger starts its own run."""
    yield
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
