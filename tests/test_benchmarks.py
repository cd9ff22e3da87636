"""benchmarks/compare.py: both sides get identical data and batch geometry; each side runs at a minimal size.
benchmarks/label_load.py: its store check finds a lost or altered answer; a smoke run passes every check."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_rlhf.data.collate import IGNORE_INDEX, SFTCollator
from lit_rlhf.data.prompts import PromptCollator

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_compare", ROOT / "benchmarks" / "compare.py")
compare = importlib.util.module_from_spec(_spec)
sys.modules["bench_compare"] = compare
_spec.loader.exec_module(compare)

S = compare.SMOKE

_spec = importlib.util.spec_from_file_location("bench_label_load", ROOT / "benchmarks" / "label_load.py")
label_load = importlib.util.module_from_spec(_spec)
sys.modules["bench_label_load"] = label_load
_spec.loader.exec_module(label_load)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, str]:
    return compare.build_assets(tmp_path_factory.mktemp("compare"), S)


def test_sft_rows_are_lit_examples_with_the_same_loss_mask(assets):
    dm = compare.sft_data(assets, S)
    rows = compare.trl_sft_rows(dm)
    assert len(rows) == len(dm.train_dataset) > 0
    collate = SFTCollator(dm.pad_token_id)
    for lit_row, trl_row in zip(dm.train_dataset.items, rows, strict=True):
        batch = collate([lit_row])
        n = len(trl_row["input_ids"])
        assert batch["input_ids"][0].tolist() == trl_row["input_ids"]
        # TRL's labels: input_ids where completion_mask is 1, else -100; lit_rlhf's labels, the same positions
        assert (batch["labels"][0] != IGNORE_INDEX).tolist() == [bool(m) for m in trl_row["completion_mask"]]
        assert n <= S.sft_max_length


def test_rm_pairs_are_every_ordered_pair_of_the_kwise_examples(assets):
    dm = compare.rm_data(assets, S)
    pairs = compare.trl_rm_rows(dm)
    # every prompt has K = 4 completions without ties: C(4, 2) = 6 pairs each
    assert len(pairs) == len(dm.train_dataset) * math.comb(S.rm_k, 2)
    first = dm.train_dataset.items[0]
    seqs = [first["prompt_ids"] + c for c in first["completion_ids"]]
    best = seqs[first["ranks"].index(0)]
    worst = seqs[first["ranks"].index(S.rm_k - 1)]
    first_pairs = pairs[: math.comb(S.rm_k, 2)]
    assert sum(p["chosen_ids"] == best for p in first_pairs) == S.rm_k - 1  # the best beats the 3 others
    assert sum(p["rejected_ids"] == worst for p in first_pairs) == S.rm_k - 1
    assert all(p["chosen_ids"] != worst and p["rejected_ids"] != best for p in first_pairs)
    # the same comparisons per optimizer step on both sides
    assert S.rm_pairs_micro * S.rm_trl_accumulation == S.rm_prompts * math.comb(S.rm_k, 2)


def test_dpo_rows_give_trl_the_pairs_of_each_lit_batch_in_order(assets):
    dm = compare.dpo_data(assets, S)
    rows = compare.trl_dpo_rows(dm)
    assert len(rows) == len(dm.train_dataset) > S.dpo_batch_size  # every pair, and more than one batch to order
    n_batches = 0
    for i, batch in enumerate(dm.train_dataloader()):  # the loader lit_rlhf trains on, first epoch
        trl_rows = rows[i * S.dpo_batch_size : (i + 1) * S.dpo_batch_size]
        lengths = batch["attention_mask"].sum(1).tolist()
        seqs = [ids[:n] for ids, n in zip(batch["input_ids"].tolist(), lengths, strict=True)]
        completion = [(labels[:n] != IGNORE_INDEX).tolist() for labels, n in zip(batch["labels"], lengths, strict=True)]
        for rank, key in ((0, "chosen_ids"), (1, "rejected_ids")):
            rows_of_rank = (batch["ranks"] == rank).nonzero().flatten().tolist()
            # TRL's row: prompt_ids + chosen_ids (or rejected_ids); its completion_mask is 1 on the second part only
            assert [seqs[j] for j in rows_of_rank] == [r["prompt_ids"] + r[key] for r in trl_rows]
            assert [completion[j] for j in rows_of_rank] == [
                [False] * len(r["prompt_ids"]) + [True] * len(r[key]) for r in trl_rows
            ]
        # TRL pads its 2 x batch rows to the longest, as lit_rlhf does: the same tensor shape
        longest = max(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in trl_rows)
        assert batch["input_ids"].shape == (2 * len(trl_rows), longest)
        n_batches += 1
    assert n_batches * S.dpo_batch_size >= len(rows)
    assert max(len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in rows) <= S.dpo_max_length


def test_rm_batch_match_is_checked():
    with pytest.raises(ValueError, match="must divide"):
        compare.dataclasses.replace(S, rm_pairs_micro=5).rm_trl_accumulation  # noqa: B018


def test_ppo_prompts_pad_to_the_same_tensor(assets):
    from transformers import AutoTokenizer, DataCollatorWithPadding

    dm = compare.ppo_data(assets, S)
    rows = compare.trl_ppo_rows(dm)
    tok = AutoTokenizer.from_pretrained(assets["policy"], padding_side="left")
    trl_batch = DataCollatorWithPadding(tok)(rows[:4])  # what TRL's PPOTrainer collates with
    lit_batch = PromptCollator(dm.pad_token_id)(dm.train_dataset.items[:4])
    assert torch.equal(trl_batch["input_ids"], lit_batch["input_ids"])
    assert torch.equal(trl_batch["attention_mask"].bool(), lit_batch["attention_mask"])
    assert max(len(r["input_ids"]) for r in rows) <= S.ppo_max_prompt_len


def test_a_shared_value_head_is_listed_as_a_difference():
    import dataclasses

    names = [name for name, _ in compare.differences(S)]
    assert "PPO value model" not in names  # the matched setting: a separate value model, as TRL's
    shared = dataclasses.replace(S, ppo_value_model="shared")
    assert "PPO value model" in [name for name, _ in compare.differences(shared)]


def test_step_clock_times_only_the_steps_after_warmup():
    clock = compare.StepClock(warmup=1, steps=2)
    for stamp, counts in ((10.0, (99, 999)), (12.0, (4, 40)), (13.0, (4, 20))):
        clock.stamps.append(stamp)
        clock.counts.append(counts)
    # timed: steps 2 and 3, from the end of step 1 (t = 10) to the end of step 3 (t = 13): 8 samples in 3 s
    result = clock.result()
    assert result["samples_s"] == pytest.approx(8 / 3)
    assert result["tokens_s"] == pytest.approx(60 / 3)
    short = compare.StepClock(warmup=2, steps=2)
    short.stamps, short.counts = clock.stamps, clock.counts
    with pytest.raises(RuntimeError, match="only 3 steps"):
        short.result()


def test_summary_ratio_is_per_repetition_min_median_max():
    lit = [{"samples_s": s, "tokens_s": 1.0, "peak_rss_mib": 100.0} for s in (2.0, 6.0, 3.0)]
    trl = [{"samples_s": s, "tokens_s": 1.0, "peak_rss_mib": 200.0} for s in (1.0, 2.0, 3.0)]
    summary = compare.summarise({"lit_rlhf": lit, "trl": trl})
    # per-repetition ratios 2, 3, 1
    assert (summary["ratio_min"], summary["ratio"], summary["ratio_max"]) == (1.0, 2.0, 3.0)
    assert summary["memory_ratio"] == 0.5
    assert summary["lit_rlhf"]["samples_s"] == 3.0


@pytest.mark.slow
def test_lit_side_runs_every_stage(assets, tmp_path):
    (tmp_path / "assets.json").write_text(json.dumps(assets))
    results = compare.run_child("sft,rm,ppo,dpo", "lit_rlhf", str(tmp_path / "assets.json"), S)
    sft, rm, ppo, dpo = results
    assert sft["samples"] == S.sft_steps * S.sft_batch_size
    assert rm["samples"] == S.rm_steps * S.rm_prompts * math.comb(S.rm_k, 2)
    assert ppo["samples"] == S.ppo_iterations * S.ppo_rollout
    assert dpo["samples"] == S.dpo_steps * S.dpo_batch_size
    assert all(r["samples_s"] > 0 and r["peak_rss_mib"] > 0 for r in results)


@pytest.mark.slow
def test_trl_side_runs_every_stage(assets, tmp_path):
    why_not = compare.trl_available()
    if why_not:
        pytest.skip(f"TRL side not run: {why_not}")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(compare.dataclasses.asdict(S)))
    (tmp_path / "assets.json").write_text(json.dumps(assets))
    # a separate process: TRL's Accelerator state must not leak into the other tests
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--child", "sft,rm,ppo,dpo", "trl",
           "--assets", str(tmp_path / "assets.json"), "--settings", str(settings)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sft, rm, ppo, dpo = (json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    assert sft["samples"] == S.sft_steps * S.sft_batch_size
    assert rm["samples"] == S.rm_steps * S.rm_prompts * math.comb(S.rm_k, 2)
    assert ppo["samples"] == S.ppo_iterations * S.ppo_rollout
    assert dpo["samples"] == S.dpo_steps * S.dpo_batch_size


# --------------------------------------------------------------------------- label_load.py


def test_label_load_check_finds_lost_altered_and_unacknowledged_answers(tmp_path):
    from lit_rlhf.label import db
    from tests.label_helpers import add_labelers, make_project

    path = make_project(tmp_path, n_rank=3, n_demo=0)
    add_labelers(path, "ann")
    conn = db.connect(path)
    texts = {}
    for key in ("kept-key-1", "changed-key", "no-ack-key"):
        task = db.lease_next(conn, 1)
        texts[key] = (task.id, task.completions)
        payload = {"ranking": [0, [1, 2], 3], "likert": [7, 5, 5, 1], "flags": [{}] * 4, "notes": [""] * 4}
        db.submit(conn, 1, task.id, key, "ranking", payload)
    ids = {r["idempotency_key"]: r["id"] for r in db.answers(conn)}
    conn.close()

    def sent(key, best_first):
        task_id, c = texts[key]
        ranking = [sorted(c[i] for i in g) for g in best_first]
        return {"answer_id": ids[key], "task_id": task_id, "labeler": "ann", "sent": {"ranking": ranking,
                "likert": dict(zip(c, [7, 5, 5, 1], strict=True))}}  # fmt: skip

    record = label_load.Record()
    record.acked["kept-key-1"] = sent("kept-key-1", [[0], [1, 2], [3]])  # as stored
    record.acked["changed-key"] = sent("changed-key", [[0], [1], [2], [3]])  # the tie was not what was sent
    record.acked["lost-key-1"] = {**sent("kept-key-1", [[0], [1, 2], [3]]), "answer_id": 99}
    checks = label_load.check_store(path, record)
    assert checks["lost"] == 1 and checks["stored_not_as_sent"] == 1 and checks["stored_without_ack"] == 1
    assert checks["integrity_check"] == "ok" and checks["rows_per_task_labeler_over_1"] == 0
    phase = {"phase": "x", "checks": checks, "statuses": {"POST answer 503": 2}, "server_exceptions": {}}
    assert label_load.failures([phase]) == ["x: lost = 1", "x: stored_not_as_sent = 1", "x: 2 x POST answer 503"]


@pytest.mark.slow
def test_label_load_smoke_run_kills_restarts_and_loses_nothing(tmp_path):
    # 4 labelers, 3 s a phase: the server starts three times (under a second each: `python -m lit_rlhf label` imports
    # no Lightning), the kill lands 1.5 s into the second phase, while the clients are mid-request.
    out = tmp_path / "load.json"
    argv = ["--labelers", "4", "--seconds", "3", "--tasks", "200", "--demonstrations", "5", "--skip-prob", "0.2",
            "--json", str(out)]  # fmt: skip
    assert label_load.main(argv) == 0
    result = json.loads(out.read_text())
    steady, kill = result["phases"]
    assert result["failures"] == [] and (steady["phase"], kill["phase"]) == ("steady", "kill")
    for phase in (steady, kill):
        assert phase["acknowledged"] > 0 and phase["checks"]["integrity_check"] == "ok"
        assert phase["checks"]["lost"] == 0 and phase["checks"]["stored"] >= phase["acknowledged"]
        assert set(phase["routes"]) == {"GET /api/next", "POST answer", "POST skip"}
    assert steady["connection_errors"] == {} and sum(kill["connection_errors"].values()) > 0
    assert kill["acknowledged"] > kill["acked_before_kill"] > 0  # submits before and after the restart
