"""Best-of-n: the subset estimator against brute-force enumeration, the closed-form KL, and best-of-n as a policy of
``evaluate`` (it answers with the reward model's favourite sample, the same in any batch and in two processes)."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest
import yaml

from lit_rlhf.evaluation import EvaluateOptions, RewardModelJudge, evaluate
from lit_rlhf.evaluation import metrics as M
from lit_rlhf.evaluation.best_of_n import best_of_n_kl, expected_best_of_n, pick_best, sample_n, subset_max_weights
from lit_rlhf.evaluation.options import BestOfN
from lit_rlhf.evaluation.prompts import load_eval_prompts
from tests.conftest import reverse_records, run_cli, write_jsonl
from tests.test_evaluation import _export

# --------------------------------------------------------------------------- the estimator


def test_subset_weights_by_hand():
    # N=4, n=2: the i-th lowest is the max of a 2-subset with C(i-1, 1) / C(4, 2) = (i-1) / 6
    assert subset_max_weights(4, 2) == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6])
    assert subset_max_weights(3, 1) == pytest.approx([1 / 3] * 3)
    assert subset_max_weights(3, 3) == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="1 <= n <= 3"):
        subset_max_weights(3, 4)


def test_expected_best_of_n_equals_brute_force_over_every_subset():
    rng = random.Random(0)
    proxy = [rng.gauss(0, 1) for _ in range(6)]
    gold = [rng.gauss(0, 1) for _ in range(6)]
    for n in range(1, 7):
        subsets = list(itertools.combinations(range(6), n))
        brute = sum(gold[max(s, key=lambda i: proxy[i])] for s in subsets) / len(subsets)
        assert expected_best_of_n(proxy, gold, n) == pytest.approx(brute, abs=1e-12), n
    assert expected_best_of_n(proxy, gold, 1) == pytest.approx(sum(gold) / 6)  # n=1: the plain mean
    assert expected_best_of_n(proxy, gold, 6) == gold[max(range(6), key=lambda i: proxy[i])]  # n=N: the argmax
    assert expected_best_of_n(proxy, proxy, 6) == max(proxy)


def test_ties_are_broken_as_pick_best_breaks_them():
    assert pick_best([1.0, 3.0, 3.0, 2.0]) == 1  # the earliest of the highest
    # the two samples scored 3.0 count the earlier as higher: best of all 4 is sample 1 (gold 10)
    assert expected_best_of_n([1.0, 3.0, 3.0, 2.0], [0.0, 10.0, 20.0, 0.0], 4) == 10.0


def test_closed_form_kl():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)  # 0.1931
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)  # 1.8351
    with pytest.raises(ValueError, match="n >= 1"):
        best_of_n_kl(0)


# --------------------------------------------------------------------------- in evaluate


@pytest.fixture(scope="module")
def models(tokenizer_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bon")
    return {
        "sft": _export(tokenizer_dir, root / "sft", seed=0),
        "ppo": _export(tokenizer_dir, root / "ppo", seed=1),
        "rm": _export(tokenizer_dir, root / "rm", seed=2, head="score"),
        "prompts": write_jsonl(root / "prompts.jsonl", [{"prompt": r["prompt"]} for r in reverse_records(5, seed=3)]),
    }


def _options(models, out: Path | None, **kwargs) -> EvaluateOptions:
    return EvaluateOptions(
        {"sft": str(models["sft"]), "ppo": str(models["ppo"])},
        str(models["prompts"]),
        rm_dir=str(models["rm"]),
        judge="tests.test_evaluation:longer_judge",
        best_of_n={"bon3": {"n": 3}, "ppo_bon2": BestOfN(2, policy="ppo")},
        output_dir=out,
        max_new_tokens=6,
        **kwargs,
    )


def test_best_of_n_answers_with_the_reward_models_favourite_sample(models, tmp_path):
    results = evaluate(_options(models, tmp_path / "a", batch_size=16), print_table=False)
    assert list(results) == ["sft", "ppo", "bon3", "ppo_bon2"]
    samples = [json.loads(line) for line in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    # Independently: 3 seeded samples of the SFT policy per prompt, the RM's highest-scoring one.
    model, tokenizer = M.load_policy(models["sft"])
    prompts = load_eval_prompts(str(models["prompts"]))
    drawn = sample_n(model, tokenizer, prompts, 3, seed=0, max_new_tokens=6)
    rm = RewardModelJudge(models["rm"])
    for prompt, candidates, sample in zip(prompts, drawn, samples, strict=True):
        scores = rm.scores([prompt] * 3, [g.text for g in candidates])
        assert sample["bon3"] == candidates[pick_best(scores)].text
        assert rm.scores([prompt], [sample["bon3"]])[0] == max(scores)
    assert len({s["bon3"] for s in samples} | {s["sft"] for s in samples}) > len(samples)  # not the greedy answers
    bon = results["bon3"]
    assert bon["kl_to_sft"] == pytest.approx(math.log(3) - 2 / 3)
    assert results["ppo_bon2"]["kl_to_sft"] is None  # it samples ppo, not the baseline
    assert bon["lm_loss"] is None and bon["fewshot_accuracy"] is None  # the sampled policy's, not its own
    assert bon["n"] == 5 and bon["wins"] + bon["ties"] + bon["losses"] == 5 and bon["rm_win_rate"] is not None
    assert bon["response_tokens"] > 0 and 0 <= bon["eos_rate"] <= 1
    settings = json.loads((tmp_path / "a" / "settings.json").read_text())
    assert settings["best_of_n"]["bon3"] == {"n": 3, "policy": "sft", "reward_model": str(models["rm"])}
    # Every sample of a prompt is its own seeded stream: another batch size picks the same responses.
    again = evaluate(_options(models, tmp_path / "b", batch_size=2), print_table=False)
    assert (tmp_path / "b" / "samples.jsonl").read_text() == (tmp_path / "a" / "samples.jsonl").read_text()
    assert again["bon3"]["win_rate"] == results["bon3"]["win_rate"]


def test_bad_best_of_n_options_are_named_before_loading(models, tmp_path):
    options = EvaluateOptions(
        {"sft": str(models["sft"])},
        str(models["prompts"]),
        best_of_n={"sft": {"n": 2}, "zero": {"n": 0}, "other": {"n": 2, "policy": "ppo"},
                   "norm": {"n": 2, "reward_model": str(tmp_path)}},
    )  # fmt: skip
    with pytest.raises(ValueError) as err:
        evaluate(options, print_table=False)
    text = str(err.value)
    assert "--best_of_n 'sft': the name is taken by one of --policies" in text
    assert "--best_of_n 'zero': n must be >= 1, got 0" in text
    assert "--best_of_n 'other': policy 'ppo' is not one of --policies ['sft']" in text
    assert "no reward model to pick the best sample; give its reward_model or --rm_dir" in text
    assert f"--best_of_n 'norm': reward_model {tmp_path}: no config.json there" in text
    with pytest.raises(ValueError, match="--best_of_n 'x': give {n, policy, reward_model}"):
        EvaluateOptions({"sft": str(models["sft"])}, "p.jsonl", best_of_n={"x": {"policy": "sft"}})


def test_cli_parses_best_of_n(models, tmp_path):
    out = tmp_path / "cli"
    flags = ["evaluate", "--policies", f"{{sft: {models['sft']}}}", "--prompts_file", str(models["prompts"]),
             "--rm_dir", str(models["rm"]), "--best_of_n", "{bon2: {n: 2}}", "--output_dir", str(out),
             "--max_examples", "2", "--max_new_tokens", "3", "--trainer.logger=false"]  # fmt: skip
    printed = yaml.safe_load(run_cli([*flags, "--print_config"]))
    assert printed["best_of_n"] == {"bon2": {"n": 2, "policy": None, "reward_model": None}}
    run_cli(flags)
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["sft", "bon2"] and results["bon2"]["kl_to_sft"] == pytest.approx(math.log(2) - 0.5)


@pytest.mark.slow
def test_two_processes_pick_as_one_process(models, tmp_path):
    from tests.test_evaluation import _cli_evaluate

    exported = {**models, "text": write_jsonl(tmp_path / "text.jsonl", [{"text": "Reverse: catdog godtac"}])}
    flags = ["--best_of_n", "{bon3: {n: 3}, ppo_bon2: {policy: ppo, n: 2}}"]
    one = _cli_evaluate(exported, tmp_path / "one", *flags)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _cli_evaluate(exported, tmp_path / "two", *flags, "--trainer.devices=2", "--trainer.strategy=ddp")
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "one" / "samples.jsonl").read_text() == (tmp_path / "two" / "samples.jsonl").read_text()
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())
    for name in ("bon3", "ppo_bon2"):
        assert r2[name].keys() == r1[name].keys()
        for key, value in r1[name].items():
            assert r2[name][key] == (pytest.approx(value, abs=1e-5) if value is not None else None), (name, key)
