"""lit-rlhf label: the export read by the stages' own loaders unchanged, agreement against scipy, the commands, the
page in the wheel."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import zipfile

import pytest

from lit_rlhf.data.records import DataError, load_records, parse_ranking_record, parse_sft_record
from lit_rlhf.label import db
from lit_rlhf.label.agreement import agreement, kendall_tau_b, pair_counts, ranks_of
from lit_rlhf.label.export import export_project
from tests.conftest import REPO, run_cli, write_jsonl
from tests.label_helpers import add_labelers, call, make_project, ranking_body, running


def shown(outputs, stored_ranking):
    """``stored_ranking`` (indices j of "answer i.j", best first; a list is a tie) in the labeler's shown positions."""
    at = {int(text.rsplit(".", 1)[1]): pos for pos, text in enumerate(outputs)}
    return [[at[j] for j in g] if isinstance(g, list) else at[g] for g in stored_ranking]


def label_everything(server, token, ranking):
    while (task := call(server, "GET", "/api/next", token)[1]["task"]) is not None:
        if task["kind"] == "ranking":
            body = ranking_body(len(task["outputs"]), shown(task["outputs"], ranking))
        else:
            body = {"idempotency_key": f"demo-{task['id']}-key", "completion": f"Answer {task['id']}."}
        assert call(server, "POST", f"/api/tasks/{task['id']}/answer", token, body)[0] == 200


def test_the_export_is_read_by_the_sft_and_rm_loaders_unchanged(tmp_path):
    path = make_project(tmp_path, n_rank=3, n_demo=2, overlap=1.0)
    tokens = add_labelers(path, "ann", "bob")
    with running(path) as server:
        label_everything(server, tokens["ann"], [0, [1, 2], 3])
        label_everything(server, tokens["bob"], [3, 2, 1, 0])
    assert export_project(path, tmp_path / "out") == {"demonstrations": 2, "rankings": 6, "skipped": 0}

    sft, _ = load_records(str(tmp_path / "out" / "demonstrations.jsonl"), parse_sft_record)
    assert [e.completion for e in sft] == ["Answer 1.", "Answer 2."]
    assert sft[0].prompt == [{"role": "user", "content": "Write about 0."}]
    # Ties are refused unless the tie policy is set: --data.ties=drop (InstructGPT dropped ties).
    rankings = str(tmp_path / "out" / "rankings.jsonl")
    with pytest.raises(DataError, match="--data.ties=drop"):
        load_records(rankings, parse_ranking_record)
    examples, _ = load_records(rankings, lambda r, s: parse_ranking_record(r, s, ties="drop"))
    assert len(examples) == 6  # one record per labeler of each overlap task
    records = [json.loads(line) for line in open(rankings)]
    for record, example in zip(records, examples, strict=True):
        assert {"labeler", "likert", "flags", "notes", "task_id", "started_at", "submitted_at"} <= set(record)
        groups = [g if isinstance(g, list) else [g] for g in record["ranking"]]
        # the stored ranking is in the file's completion order: its rank per completion is the loader's
        assert example.ranks == ranks_of(record["ranking"])
        assert record["ranking"] == ([0, [1, 2], 3] if record["labeler"] == "ann" else [3, 2, 1, 0])
        assert len(groups) == (3 if record["labeler"] == "ann" else 4)


def test_pair_counts_and_tau_b_by_hand():
    # a = [0, 1, 1]: items 1, 2 tied; b = [0, 1, 2] strict. Pairs (0,1) agree, (0,2) agree, (1,2) tied in a.
    assert pair_counts([0, 1, 1], [0, 1, 2]) == (2, 2, 1)
    # tau-b: concordant 2, discordant 0, n0 = 3, ties_a = 1, ties_b = 0: 2 / sqrt(2 * 3)
    assert kendall_tau_b([0, 1, 1], [0, 1, 2]) == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(kendall_tau_b([0, 0, 0], [0, 1, 2]))


def test_tau_b_matches_scipy_on_random_rankings_with_ties():
    from scipy.stats import kendalltau

    rng = random.Random(0)
    for _ in range(300):
        k = rng.randint(2, 9)
        a, b = [rng.randint(0, k - 1) for _ in range(k)], [rng.randint(0, k - 1) for _ in range(k)]
        theirs = kendalltau(a, b).statistic
        ours = kendall_tau_b(a, b)
        assert (math.isnan(ours) and math.isnan(theirs)) or ours == pytest.approx(theirs, abs=1e-12)


def test_agreement_pools_shared_pairs_excludes_ties_and_bootstraps_over_prompts():
    by_task = {
        1: {"ann": [0, 1, 2, 3], "bob": [0, 1, 2, 3], "cy": [3, 2, 1, 0]},  # ann-bob 6/6, ann-cy 0/6, bob-cy 0/6
        2: {"ann": [0, 1, 1, 2], "bob": [1, 0, 2, 3]},  # (1,2) tied by ann: 5 strict, (0,1) not alike
        3: {"ann": [0, 1]},  # one labeler: counts for nothing
    }
    rows = {r.labeler: r for r in agreement(by_task, n_boot=200, seed=0)}
    assert rows["overall"].pairs == 6 * 3 + 5 and rows["overall"].agreement == pytest.approx((6 + 4) / 23)
    assert rows["overall"].tie_rate == pytest.approx(1 / 24) and rows["overall"].prompts == 2
    assert rows["ann"].agreement == pytest.approx((6 + 0 + 4) / 17) and rows["cy"].agreement == 0.0
    assert rows["overall"].low <= rows["overall"].agreement <= rows["overall"].high
    assert rows["cy"].low == rows["cy"].high == 0.0  # one prompt: every resample is the same


def test_the_commands_create_add_export_agree_and_report(tmp_path, capsys):
    prompts = REPO / "tests" / "label_helpers.py"  # not a record file: a one-line error
    assert_error(capsys, ["label", "create", str(tmp_path / "bad.db"), "--prompts", str(prompts)], "unknown file type")
    path = make_project(tmp_path, n_rank=3, n_demo=1, overlap=1.0)
    out = run_cli(["label", "labeler", "add", str(path), "ann", "bob", "--url", "http://127.0.0.1:9/"])
    lines = [line.split("\t") for line in out.strip().splitlines()]
    assert [n for n, _, _ in lines] == ["ann", "bob"] and lines[0][2] == f"http://127.0.0.1:9/#token={lines[0][1]}"
    assert_error(capsys, ["label", "labeler", "add", str(path), "ann"], "already exists")
    with running(path) as server:
        label_everything(server, lines[0][1], [0, 1, 2, 3])
        label_everything(server, lines[1][1], [0, 1, 3, 2])
    out = run_cli(["label", "export", str(path), str(tmp_path / "out")])
    assert "1 demonstrations, 6 rankings, 0 skipped" in out
    out = run_cli(["label", "agreement", str(path), "--json", str(tmp_path / "agree.json"), "--n_boot", "50"])
    assert "overall" in out and "83.3%" in out  # 5 of 6 pairs alike on each of 3 prompts
    assert json.loads((tmp_path / "agree.json").read_text())["overall"]["agreement"] == pytest.approx(5 / 6)
    status = json.loads(run_cli(["label", "status", str(path)]))
    assert status["answers"] == {"demonstration": 1, "ranking": 6} and status["overlap_tasks"] == 3
    run_cli(["label", "labeler", "revoke", str(path), "bob"])
    assert_error(capsys, ["label", "labeler", "revoke", str(path), "nobody"], "no labeler named 'nobody'")
    assert_error(capsys, ["label", "export", str(tmp_path / "missing.db"), str(tmp_path)], "no labeling project here")
    assert_error(capsys, ["label", "create", str(path), "--prompts", "x.jsonl"], "already exists")
    assert_error(capsys, ["label", "frobnicate"], "invalid choice")


def assert_error(capsys, args, says):
    from lit_rlhf.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = [line for line in err.splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("lit-rlhf label: error:") and says in lines[0], err


def test_lit_rlhf_help_mentions_label_and_label_help_lists_its_commands(capsys):
    from lit_rlhf import cli

    assert "lit-rlhf label --help" in cli._DESCRIPTION
    with pytest.raises(SystemExit) as exit_:
        cli.main(["label", "--help"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    for command in ("create", "labeler", "serve", "export", "agreement", "status", "--data.ties=drop"):
        assert command in printed


def test_the_built_wheel_ships_the_page(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("lit_rlhf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lit_rlhf/label/static/index.html" in names and "lit_rlhf/label/static/label.js" in names


def test_ranking_tasks_sampled_from_a_policy_are_seeded_and_refuse_prompts_the_model_cannot_hold(
    tmp_path, tokenizer, capsys
):
    import torch

    from lit_rlhf.label.project import read_prompts, sample_completions
    from lit_rlhf.models import load_model
    from tests.conftest import TINY_GPT2

    torch.manual_seed(0)
    policy = tmp_path / "policy"
    load_model("scratch:gpt2", tokenizer, model_config=TINY_GPT2).save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    prompts_file = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"reverse {w}"} for w in ("abc", "dog", "sun")])
    prompts = read_prompts(str(prompts_file))
    one = sample_completions(str(policy), prompts, 3, seed=7, max_new_tokens=6, batch_size=1)
    many = sample_completions(str(policy), prompts, 3, seed=7, max_new_tokens=6, batch_size=32)
    assert one == many and all(len(set(texts)) == len(texts) >= 2 for texts in one)  # the same whatever the batch
    assert sample_completions(str(policy), prompts, 3, seed=8, max_new_tokens=6) != one

    path = tmp_path / "project.db"
    run_cli(["label", "create", str(path), "--prompts", str(prompts_file), "--policy", str(policy), "--k", "3",
             "--max_new_tokens", "6", "--seed", "7", "--demonstrations", "1"])  # fmt: skip
    conn = db.connect(path, readonly=True)
    try:
        tasks = sorted(db.all_tasks(conn).values(), key=lambda t: t.id)
    finally:
        conn.close()
    assert [t.kind for t in tasks] == ["demonstration", "ranking", "ranking"]
    # The ranked prompts (those after the demonstrations) are sampled as sample_completions does, and say how.
    assert [t.completions for t in tasks[1:]] == sample_completions(str(policy), prompts[1:], 3, 7, max_new_tokens=6)
    assert [(t.source["policy"], t.source["seed"], t.source["prompt_index"]) for t in tasks[1:]] == [
        (str(policy.resolve()), 7, 0),
        (str(policy.resolve()), 7, 1),
    ]
    # A prompt longer than the model's positions is refused before anything is sampled or written, naming its line.
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "reverse abc"}, {"prompt": "reverse " + "abc " * 200}])
    args = ["label", "create", str(tmp_path / "long.db"), "--prompts", str(long), "--policy", str(policy)]
    from lit_rlhf.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(args)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-rlhf label: error:")]
    assert exit_.value.code == 2 and len(errors) == 1 and f"{long}:2: the prompt is" in errors[0]
    assert "(1 of the 2 prompts do not)" in errors[0]
    assert not (tmp_path / "long.db").exists()
