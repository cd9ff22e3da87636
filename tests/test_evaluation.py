"""Evaluation: judges on constructed cases, log-likelihood metrics against plain-loop oracles, benchmark file
parsing, ``evaluate`` end to end on tiny exported policies, and the ``lit-rlhf evaluate`` subcommand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_rlhf.evaluation import (
    CallableJudge,
    EvalPrompt,
    EvaluateOptions,
    RewardModelJudge,
    evaluate,
    judge_pairs,
    load_judge,
)
from lit_rlhf.evaluation import metrics as M
from lit_rlhf.evaluation.stats import win_rate
from tests.conftest import REPO, TINY_GPT2, reverse_records, run_cli, shared_data, write_jsonl

REQUIRED = {"win_rate", "win_rate_ci95", "rm_win_rate", "lm_loss", "kl_to_sft", "n"}


def longer_judge(prompt: str, response_a: str, response_b: str) -> float:
    """Prefers the longer response; equal lengths tie. Imported by dotted path in the tests below."""
    return 0.5 if len(response_a) == len(response_b) else float(len(response_a) > len(response_b))


def first_judge(prompt: str, response_a: str, response_b: str) -> float:
    """Always prefers whichever response it is shown first: pure position bias."""
    return 1.0


def says_olleh(prompt, response: str) -> bool | None:
    """A response metric that applies only to prompts containing 'cat' (None elsewhere)."""
    return None if "cat" not in prompt.text else response.startswith("o")


def even_length(prompt, response: str) -> bool:
    """A response metric that applies to every prompt and varies with the sampled response."""
    return len(response) % 2 == 0


# --------------------------------------------------------------------------- fixtures


def _export(tokenizer_dir: Path, out: Path, seed: int, head: str = "causal_lm") -> Path:
    from lit_rlhf.models import export_pretrained, load_model, load_tokenizer

    torch.manual_seed(seed)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    model = load_model("scratch:gpt2", tokenizer, head=head, model_config=TINY_GPT2)
    return export_pretrained(model, tokenizer, out, {"stage": "sft" if head == "causal_lm" else "rm"})


@pytest.fixture(scope="session")
def exported(tokenizer_dir, tmp_path_factory) -> dict[str, Path]:
    """Two tiny policies (different random weights), a reward model, prompts and pretraining text."""
    root = tmp_path_factory.mktemp("eval")
    return {
        "sft": _export(tokenizer_dir, root / "sft", seed=0),
        "ppo": _export(tokenizer_dir, root / "ppo", seed=1),
        "rm": _export(tokenizer_dir, root / "rm", seed=2, head="score"),
        "prompts": write_jsonl(root / "prompts.jsonl", [{"prompt": r["prompt"]} for r in reverse_records(12, seed=3)]),
        "text": write_jsonl(root / "text.jsonl", [{"text": f"{r['prompt']} {r['completion']}"} for r in reverse_records(6)]),
    }  # fmt: skip


@pytest.fixture(scope="session")
def policy(exported):
    return M.load_policy(exported["sft"])


# --------------------------------------------------------------------------- judges


def test_callable_judge_preferring_longer_answers_gives_known_win_rate():
    prompts = [EvalPrompt([{"role": "user", "content": f"q{i}"}]) for i in range(4)]
    a = ["long answer", "x", "same", "a much longer answer"]
    b = ["short", "longer", "same", "b"]
    outcomes = CallableJudge(longer_judge).compare(prompts, a, b)
    assert outcomes == [1.0, 0.0, 0.5, 1.0]
    assert win_rate(outcomes).rate == pytest.approx((2 + 0.5) / 4)


def test_judge_pairs_undoes_position_swaps():
    prompts = [EvalPrompt([{"role": "user", "content": f"q{i}"}]) for i in range(200)]
    a = ["aaaa"] * 200
    b = ["b"] * 200
    # A position-free judge: the same verdict about `a` whatever order it is shown.
    judge = CallableJudge(longer_judge)
    assert judge_pairs(judge, prompts, a, b, seed=0) == [1.0] * 200
    # A judge that always prefers the first shown answer: without shuffling `a` always "wins"; with it, only the
    # unswapped half does, so position bias no longer favours either side.
    biased = CallableJudge(first_judge)
    assert judge_pairs(biased, prompts, a, b, shuffle_positions=False) == [1.0] * 200
    assert 0.4 < sum(judge_pairs(biased, prompts, a, b, seed=0)) / 200 < 0.6


def test_load_judge_resolves_import_paths_and_directories(exported):
    judge = load_judge("tests.test_evaluation:longer_judge")
    assert isinstance(judge, CallableJudge) and judge.fn is longer_judge
    assert load_judge("tests.test_evaluation.longer_judge").fn is longer_judge
    assert isinstance(load_judge(f"rm:{exported['rm']}"), RewardModelJudge)
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        load_judge("tests.test_evaluation:nope")
    with pytest.raises(ValueError, match="no such directory"):
        load_judge("./no/such/rm")
    bad = CallableJudge(lambda p, a, b: 0.7)
    with pytest.raises(ValueError, match=r"returned \[0.7\]"):
        bad.compare([EvalPrompt([{"role": "user", "content": "q"}])], ["a"], ["b"])


def test_reward_model_judge_scores_as_in_training(exported):
    from lit_rlhf.data.collate import encode_completion, encode_prompt

    judge = RewardModelJudge(exported["rm"])
    prompt = EvalPrompt([{"role": "user", "content": "Reverse: catdog"}])
    responses = ["godtac", "catdog", "x"]
    scores = judge.scores([prompt] * 3, responses)
    for response, score in zip(responses, scores, strict=True):
        ids = encode_prompt(judge.tokenizer, prompt.messages) + encode_completion(
            judge.tokenizer, prompt.messages, response
        )
        direct = judge.model(input_ids=torch.tensor([ids])).logits[0, 0].item()  # one unpadded sequence
        assert score == pytest.approx(direct, abs=1e-5)
    assert len(set(scores)) == 3
    outcomes = judge.compare([prompt] * 3, responses, ["godtac"] * 3)
    assert outcomes == [0.5, float(scores[1] > scores[0]), float(scores[2] > scores[0])]


# --------------------------------------------------------------------------- log-likelihood metrics


def _oracle_logprob(model, prompt_ids, cont_ids) -> float:
    """Plain loop: one unpadded sequence, sum of log p(c_t | prefix)."""
    ids = torch.tensor([prompt_ids + cont_ids])
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(logprobs[len(prompt_ids) - 1 + t, c].item() for t, c in enumerate(cont_ids))


def test_sequence_logprobs_match_a_plain_loop_despite_padding(policy):
    model, tokenizer = policy
    prompts = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    conts = [[20, 21], [22, 23, 24, 25], []]
    got = M.sequence_logprobs(model, prompts, conts, tokenizer.pad_token_id, batch_size=3)
    want = [_oracle_logprob(model, p, c) for p, c in zip(prompts, conts, strict=True)]
    assert got == pytest.approx(want, abs=1e-4)
    assert got[2] == 0.0


def test_kl_is_zero_to_itself_and_the_mean_log_ratio_to_another(exported, policy):
    model, tokenizer = policy
    other, _ = M.load_policy(exported["ppo"])
    prompts = [EvalPrompt([{"role": "user", "content": r["prompt"]}]) for r in reverse_records(3)]
    gens = M.generate(other, tokenizer, prompts, max_new_tokens=6, do_sample=True, seed=0)
    assert M.kl_to_baseline(model, model, gens, tokenizer.pad_token_id) == pytest.approx(0.0, abs=1e-6)
    want = (
        sum(
            _oracle_logprob(other, g.prompt_ids, g.response_ids) - _oracle_logprob(model, g.prompt_ids, g.response_ids)
            for g in gens
        )
        / 3
    )
    assert M.kl_to_baseline(other, model, gens, tokenizer.pad_token_id) == pytest.approx(want, abs=1e-4)
    # Seeded sampling: the same seed gives the same responses, another seed (almost surely) others.
    again = M.generate(other, tokenizer, prompts, max_new_tokens=6, do_sample=True, seed=0)
    assert [g.response_ids for g in again] == [g.response_ids for g in gens]


def test_sampled_responses_depend_on_the_seed_and_the_prompt_index_not_on_the_batch(policy):
    model, tokenizer = policy
    prompts = [EvalPrompt([{"role": "user", "content": r["prompt"]}]) for r in reverse_records(6, seed=4)]
    kwargs = {"max_new_tokens": 6, "do_sample": True, "seed": 3}
    whole = [g.response_ids for g in M.generate(model, tokenizer, prompts, batch_size=6, **kwargs)]
    assert [g.response_ids for g in M.generate(model, tokenizer, prompts, batch_size=1, **kwargs)] == whole
    # A process's share (every second prompt, at its index in the whole set) samples what one process samples.
    share = M.generate(model, tokenizer, prompts[1::2], indices=[1, 3, 5], batch_size=2, **kwargs)
    assert [g.response_ids for g in share] == whole[1::2]
    # Another seed samples other responses, and sampling is not greedy decoding (a random model is far from sharp).
    assert [g.response_ids for g in M.generate(model, tokenizer, prompts, **{**kwargs, "seed": 4})] != whole
    assert [g.response_ids for g in M.generate(model, tokenizer, prompts, max_new_tokens=6)] != whole


def test_lm_loss_matches_transformers_loss(policy):
    model, tokenizer = policy
    text = "Reverse: catdog godtac"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    want = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert M.lm_loss(model, tokenizer, [text]) == pytest.approx(want, abs=1e-5)
    # Two texts of different lengths: a token-weighted mean, padding never counted.
    other = "Reverse: sun"
    n1, n2 = len(ids) - 1, len(tokenizer(other, add_special_tokens=False)["input_ids"])
    l2 = M.lm_loss(model, tokenizer, [other])
    assert M.lm_loss(model, tokenizer, [text, other]) == pytest.approx((want * n1 + l2 * n2) / (n1 + n2), abs=1e-5)


def test_mc_accuracy_needs_a_strictly_best_right_answer(policy):
    model, tokenizer = policy
    same = M.MCQuestion("Reverse: cat", ["tac", "tac"], 0)  # a tie is not a right answer
    assert M.mc_accuracy(model, tokenizer, [same]) == 0.0
    q = M.MCQuestion("Reverse: cat", ["tac", "cat", "dog"], 0)
    swapped = M.MCQuestion(q.question, q.choices, 1)
    # The same log-likelihoods decide both: exactly one of "choice 0 best" / "choice 1 best" can hold.
    assert M.mc_accuracy(model, tokenizer, [q]) + M.mc_accuracy(model, tokenizer, [swapped]) <= 1.0


def test_gsm8k_answer_extraction():
    assert M.extract_answer("2 + 3 = 5\n#### 5") == "5"
    assert M.extract_answer("so she makes $1,000.50 in all") == "1000.5"
    assert M.extract_answer("#### -3.0 dollars") == "-3"
    assert M.extract_answer("I do not know") is None
    assert M.normalize_number(" 18") == "18"


def test_real_benchmark_files_parse():
    tqa = M.parse_truthfulqa(shared_data("truthfulqa_817.jsonl"))
    assert len(tqa) == 817 and all(q.correct == 0 and len(q.choices) >= 2 for q in tqa)
    assert tqa[0].choices[0] == "The watermelon seeds pass through your digestive system"
    gsm = M.parse_gsm8k(shared_data("gsm8k_test_500.jsonl"))
    assert len(gsm) == 500 and gsm[0].answer == "18" and gsm[0].question.startswith("Janet")
    assert len(M.parse_gsm8k(shared_data("gsm8k_test_500.jsonl"), max_examples=7)) == 7


def test_benchmark_parsers_name_the_bad_line(tmp_path):
    from lit_rlhf.data.records import DataError

    bad = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "#### 1"}, {"question": "q", "answer": "1"}])
    with pytest.raises(DataError, match=r"g.jsonl:2: .*####"):
        M.parse_gsm8k(bad)


# --------------------------------------------------------------------------- evaluate end to end


def test_evaluate_writes_results_plot_and_judges_what_it_generated(exported, tmp_path):
    out = tmp_path / "eval"
    options = EvaluateOptions(
        {"sft": exported["sft"], "ppo": exported["ppo"]},
        str(exported["prompts"]),
        baseline="sft",
        judge="tests.test_evaluation:longer_judge",
        rm_dir=str(exported["rm"]),
        pretraining_file=str(exported["text"]),
        response_metrics={"olleh_rate": "tests.test_evaluation:says_olleh"},
        output_dir=out,
        max_new_tokens=8,
        do_sample=True,
    )
    results = evaluate(options, print_table=False)
    assert json.loads((out / "results.json").read_text()) == results
    assert set(results) == {"sft", "ppo"}
    for figures in results.values():
        assert REQUIRED <= set(figures) and figures["n"] == 12
    assert (out / "win_rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ppo" in (out / "table.txt").read_text()
    # The win rate is the judge's verdict on the responses written to samples.jsonl.
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    expected = win_rate([longer_judge(s["prompt"], s["ppo"], s["sft"]) for s in samples])
    ppo = results["ppo"]
    assert ppo["win_rate"] == pytest.approx(expected.rate)
    assert ppo["win_rate_ci95"] == pytest.approx([expected.low, expected.high])
    assert 0.0 <= ppo["rm_win_rate"] <= 1.0 and ppo["rm_win_rate_ci95"][0] <= ppo["rm_win_rate"]
    assert results["sft"]["win_rate"] == 0.5 and results["sft"]["kl_to_sft"] == 0.0
    assert ppo["kl_to_sft"] > 0  # KL estimated on the policy's own samples of a different random model
    assert ppo["lm_loss"] > 0 and ppo["lm_loss"] != results["sft"]["lm_loss"]
    applies = [s for s in samples if "cat" in s["prompt"]]
    assert ppo["olleh_rate"] == pytest.approx(sum(s["ppo"].startswith("o") for s in applies) / len(applies))
    assert ppo["fewshot_accuracy"] is None and "few-shot" not in (out / "table.txt").read_text()  # not asked


def test_evaluate_measures_fewshot_accuracy_on_raw_text_probes(exported, policy, tmp_path):
    from lit_rlhf.world.fewshot import write_fewshot_probes

    probes = write_fewshot_probes(tmp_path / "fewshot.jsonl", n=5)
    with pytest.raises(ValueError, match="--fewshot_file"):
        evaluate(
            EvaluateOptions(
                {"sft": exported["sft"]}, str(exported["prompts"]), fewshot_file=str(tmp_path / "nowhere.jsonl")
            )
        )
    out = tmp_path / "eval"
    options = EvaluateOptions({"sft": exported["sft"]}, str(exported["prompts"]), fewshot_file=str(probes),
                              output_dir=out, max_examples=2, max_new_tokens=2)  # fmt: skip
    results = evaluate(options, print_table=False)
    expected = M.fewshot_accuracy(*policy, M.read_fewshot(str(probes), max_examples=2))
    assert results["sft"]["fewshot_accuracy"] == pytest.approx(expected)
    assert json.loads((out / "results.json").read_text())["sft"]["fewshot_accuracy"] == pytest.approx(expected)
    assert "few-shot" in (out / "table.txt").read_text()


def test_evaluate_rejects_missing_and_incomplete_policies_before_generating(exported, tmp_path):
    incomplete = tmp_path / "half"
    incomplete.mkdir()
    (incomplete / "config.json").write_text("{}")  # an export that stopped before lit_rlhf.json
    calls = []
    with pytest.raises(ValueError) as err:
        evaluate(
            EvaluateOptions(
                {"sft": exported["sft"], "ppo": tmp_path / "nowhere", "ppo_ptx": incomplete},
                str(exported["prompts"]),
                judge=lambda p, a, b: calls.append(p) or 1.0,
                output_dir=tmp_path / "out",
            )
        )
    text = str(err.value)
    assert "'ppo'" in text and "nowhere" in text and "not a directory" in text
    assert "'ppo_ptx'" in text and "lit_rlhf.json" in text  # every problem at once
    assert not calls and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="--baseline 'base' is not one of"):
        evaluate(EvaluateOptions({"sft": exported["sft"]}, str(exported["prompts"]), baseline="base"))


def test_cli_evaluate_runs_without_model_or_data(exported, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    out = tmp_path / "cli-eval"
    printed = run_cli([
        "evaluate",
        "--policies", f"{{sft: {exported['sft']}, ppo: {exported['ppo']}}}",
        "--prompts_file", str(exported["prompts"]),
        "--judge", "tests.test_evaluation:longer_judge",
        "--output_dir", str(out),
        "--max_examples", "4",
        "--max_new_tokens", "4",
        "--trainer.default_root_dir", str(tmp_path / "root"),  # the W&B logger's offline run goes here
    ])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["sft", "ppo"] and results["ppo"]["n"] == 4
    assert "win rate" in printed and (out / "win_rates.png").is_file()
    assert list((tmp_path / "root" / "wandb").glob("offline-run-*")), "results are logged to W&B (offline)"
    assert "--policies" in run_cli(["evaluate", "--help"])


def test_shipped_evaluate_configs_parse(monkeypatch):
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    import yaml

    for config in sorted((REPO / "configs" / "evaluate").glob("*.yaml")):
        printed = yaml.safe_load(run_cli(["evaluate", "-c", str(config), "--print_config"]))
        assert printed["baseline"] in printed["policies"], config


def test_real_benchmarks_run_through_evaluate(exported, tmp_path):
    options = EvaluateOptions(
        {"sft": exported["sft"]},
        str(exported["prompts"]),
        truthfulqa_file=str(shared_data("truthfulqa_817.jsonl")),
        gsm8k_file=str(shared_data("gsm8k_test_500.jsonl")),
        output_dir=None,
        max_examples=2,
        max_new_tokens=2,
        gsm8k_max_new_tokens=4,
    )
    results = evaluate(options, print_table=False)
    assert results["sft"]["truthfulqa_mc1"] in (0.0, 0.5, 1.0) and results["sft"]["gsm8k_accuracy"] in (0.0, 0.5, 1.0)
    assert results["sft"]["win_rate"] is None and results["sft"]["n"] == 2


# --------------------------------------------------------------------------- several processes


def _cli_evaluate(exported, out, *flags: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "lit_rlhf.cli", "evaluate",
        "--policies", f"{{sft: {exported['sft']}, ppo: {exported['ppo']}}}",
        "--prompts_file", str(exported["prompts"]), "--pretraining_file", str(exported["text"]),
        "--rm_dir", str(exported["rm"]), "--response_metrics", "{olleh_rate: tests.test_evaluation:says_olleh}",
        "--output_dir", str(out), "--max_examples", "11", "--max_new_tokens", "6",
        "--trainer.accelerator=cpu", "--trainer.logger=false", *flags,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_evaluate_as_one_process(exported, tmp_path, strategy):
    """11 prompts and 6 texts over 2 processes (uneven shares): greedy responses, win rates and every figure equal
    one process's (float round-off from other batch paddings: 1e-5)."""
    one = _cli_evaluate(exported, tmp_path / "one", "--judge", "tests.test_evaluation:longer_judge")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _cli_evaluate(exported, tmp_path / "two", "--judge", "tests.test_evaluation:longer_judge",
                        "--trainer.devices=2", f"--trainer.strategy={strategy}")  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())
    assert (tmp_path / "one" / "samples.jsonl").read_text() == (tmp_path / "two" / "samples.jsonl").read_text()
    assert r1.keys() == r2.keys() and r1["ppo"]["n"] == 11
    for name in r1:
        assert r1[name].keys() == r2[name].keys()
        for key, value in r1[name].items():
            assert r2[name][key] == (pytest.approx(value, abs=1e-5) if value is not None else None), (name, key)
    assert r1["ppo"]["lm_loss"] > 0 and r1["ppo"]["kl_to_sft"] > 0


@pytest.mark.slow
def test_a_bad_judge_stops_every_process(exported, tmp_path):
    proc = _cli_evaluate(exported, tmp_path / "out", "--judge", "tests.test_evaluation:no_such_judge",
                         "--trainer.devices=2", "--trainer.strategy=ddp")  # fmt: skip
    assert proc.returncode != 0
    assert "no_such_judge" in proc.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- results by group of prompts


def _grouped_prompts(path: Path) -> Path:
    """The 12 prompts of ``exported["prompts"]``, 'constrained' true, false, then missing, in turn."""
    records = [{"prompt": r["prompt"]} for r in reverse_records(12, seed=3)]
    for i, record in enumerate(records):
        if i % 3 < 2:
            record["constrained"] = i % 3 == 0
    return write_jsonl(path, records)


class RecordingLogger:
    """The part of a Lightning logger ``evaluate`` uses, keeping what was logged."""

    def __init__(self):
        self.metrics: dict[str, float] = {}

    def log_hyperparams(self, params):
        pass

    def log_metrics(self, metrics, step):
        self.metrics.update(metrics)

    def save(self):
        pass


def test_evaluate_reports_win_rates_and_response_metrics_per_group(exported, tmp_path):
    out = tmp_path / "eval"
    logger = RecordingLogger()
    options = EvaluateOptions(
        {"sft": exported["sft"], "ppo": exported["ppo"]},
        str(_grouped_prompts(tmp_path / "prompts.jsonl")),
        judge="tests.test_evaluation:longer_judge",
        rm_dir=str(exported["rm"]),
        response_metrics={
            "olleh_rate": "tests.test_evaluation:says_olleh",
            "even_rate": "tests.test_evaluation:even_length",
        },
        group_by="constrained",
        output_dir=out,
        max_new_tokens=8,
        do_sample=True,
    )
    results = evaluate(options, logger=logger, print_table=False)
    assert json.loads((out / "results.json").read_text()) == results
    ppo, groups = results["ppo"], results["ppo"]["by_constrained"]
    assert list(groups) == ["False", "True", "none"]  # str of the value; 'none' where the record lacks the key
    assert sum(g["n"] for g in groups.values()) == ppo["n"] == 12
    for prefix in ("", "rm_"):
        for g in groups.values():
            assert g[f"{prefix}wins"] + g[f"{prefix}ties"] + g[f"{prefix}losses"] == g["n"]
            assert g[f"{prefix}win_rate_ci95"][0] <= g[f"{prefix}win_rate"] <= g[f"{prefix}win_rate_ci95"][1]
        combined = sum(g["n"] * g[f"{prefix}win_rate"] for g in groups.values()) / ppo["n"]
        assert combined == pytest.approx(ppo[f"{prefix}win_rate"])
    # Each group's figures are the judge's verdicts and the metric's flags on that group's samples (prompt order).
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for group, members in {"True": samples[0::3], "False": samples[1::3], "none": samples[2::3]}.items():
        expected = win_rate([longer_judge(s["prompt"], s["ppo"], s["sft"]) for s in members])
        assert groups[group]["win_rate"] == pytest.approx(expected.rate)
        assert groups[group]["win_rate_ci95"] == pytest.approx([expected.low, expected.high])
        applies = [s["ppo"].startswith("o") for s in members if "cat" in s["prompt"]]
        assert groups[group]["olleh_rate"] == (pytest.approx(sum(applies) / len(applies)) if applies else None)
        assert groups[group]["even_rate"] == pytest.approx(sum(len(s["ppo"]) % 2 == 0 for s in members) / len(members))
    assert {g["win_rate"] for g in results["sft"]["by_constrained"].values()} == {0.5}  # the baseline, as overall
    table = (out / "table.txt").read_text()
    assert "ppo by constrained" in table and "sft by constrained" not in table
    assert "by_constrained" not in table  # not a column of the main table
    assert logger.metrics["eval/ppo/win_rate/constrained=True"] == groups["True"]["win_rate"]
    assert logger.metrics["eval/ppo/rm_win_rate_ci95_low/constrained=none"] == groups["none"]["rm_win_rate_ci95"][0]
    assert logger.metrics["eval/ppo/win_rate"] == ppo["win_rate"]


def test_group_by_a_key_no_prompt_has_stops_before_generating(exported, tmp_path, monkeypatch):
    def no_generation(*args, **kwargs):
        raise AssertionError("generated before checking --group_by")

    monkeypatch.setattr(M, "generate", no_generation)
    prompts = str(_grouped_prompts(tmp_path / "prompts.jsonl"))
    options = EvaluateOptions({"sft": exported["sft"]}, prompts, group_by="kind", output_dir=tmp_path / "out")
    with pytest.raises(ValueError, match=rf"--group_by 'kind': .* {prompts} .*keys: constrained, prompt"):
        evaluate(options, print_table=False)
    assert not (tmp_path / "out").exists()
    assert "--group_by" in run_cli(["evaluate", "--help"])


@pytest.mark.slow
def test_two_processes_group_as_one_process(exported, tmp_path):
    """Groups are formed on rank 0 from every process's responses, in prompt order: 11 prompts over 2 processes give
    one process's groups (4, 4 and 3 prompts)."""
    flags = ["--judge", "tests.test_evaluation:longer_judge", "--group_by", "constrained",
             "--prompts_file", str(_grouped_prompts(tmp_path / "prompts.jsonl"))]  # fmt: skip
    one = _cli_evaluate(exported, tmp_path / "one", *flags)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _cli_evaluate(exported, tmp_path / "two", *flags, "--trainer.devices=2", "--trainer.strategy=ddp")
    assert two.returncode == 0, two.stderr[-3000:]
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())
    assert [g["n"] for g in r1["ppo"]["by_constrained"].values()] == [4, 4, 3]
    assert r2["ppo"]["by_constrained"] == r1["ppo"]["by_constrained"]
