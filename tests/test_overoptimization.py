"""The over-optimisation curve (Gao et al. 2022): the fits recover known coefficients, ``lit-rlhf overoptimization``
writes its points (checked against an independent computation) and plot, bad options name their flag, and PPO
exports its policy along training for the curve's RL points."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from lit_rlhf.evaluation import RewardModelJudge
from lit_rlhf.evaluation import metrics as M
from lit_rlhf.evaluation.best_of_n import pick_best, sample_n
from lit_rlhf.evaluation.overoptimization import (
    OveroptimizationOptions,
    fit_gao,
    gao_curve,
    overoptimization,
)
from lit_rlhf.evaluation.prompts import load_eval_prompts
from lit_rlhf.models import read_export_metadata
from tests.conftest import reverse_records, run_cli, write_jsonl
from tests.test_evaluation import _export
from tests.test_ppo_module import build_dirs, make, trainer


def length_gold(prompts: list[str], responses: list[str]) -> list[float]:
    """A gold scorer for the tests: the response's length in characters."""
    return [float(len(r)) for r in responses]


# --------------------------------------------------------------------------- fits


def test_fits_recover_known_coefficients_from_noiseless_points():
    ds = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    # best-of-n: R = d (2 - 0.5 d), peak at 2 / (2 x 0.5) = 2
    fit = fit_gao("best_of_n", ds, [d * (2 - 0.5 * d) for d in ds])
    assert (fit.alpha, fit.beta, fit.r2) == pytest.approx((2.0, 0.5, 1.0))
    assert fit.peak_sqrt_kl == pytest.approx(2.0) and fit.n_points == 5  # d = 0 is not fitted
    assert fit.record()["peak_kl"] == pytest.approx(4.0)
    # RL: R = d (1 - 0.8 log d), peak at exp(1 / 0.8 - 1) = exp(0.25)
    fit = fit_gao("rl", ds, [gao_curve("rl", d, 1.0, 0.8) for d in ds])
    assert (fit.alpha, fit.beta, fit.r2) == pytest.approx((1.0, 0.8, 1.0))
    assert fit.peak_sqrt_kl == pytest.approx(math.exp(0.25))
    assert gao_curve("rl", 0.0, 1.0, 0.8) == 0.0  # the limit of d log d
    # no peak when the curve never turns down; no fit from fewer than two points at d > 0
    assert fit_gao("best_of_n", ds, [d * (1 + 0.5 * d) for d in ds]).peak_sqrt_kl is None
    assert fit_gao("rl", [0.0, 1.0], [0.0, 0.3]) is None
    # Two points at d > 0: the two coefficients pass through both, so R^2 = 1 would say nothing; it is None.
    two = fit_gao("rl", [0.0, 0.5, 1.2], [0.0, 0.1, 0.3])
    assert two.n_points == 2 and two.r2 is None
    assert (two(0.5), two(1.2)) == pytest.approx((0.1, 0.3))


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def models(tokenizer_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("overopt")
    return {
        "sft": _export(tokenizer_dir, root / "sft", seed=0),
        "ppo": _export(tokenizer_dir, root / "ppo", seed=1),
        "rm": _export(tokenizer_dir, root / "rm", seed=2, head="score"),
        "prompts": write_jsonl(root / "prompts.jsonl", [{"prompt": r["prompt"]} for r in reverse_records(3, seed=3)]),
    }


def test_command_writes_points_fits_and_plot(models, tmp_path):
    out = tmp_path / "out"
    printed = run_cli([
        "overoptimization", "--sft", str(models["sft"]), "--rm_dir", str(models["rm"]),
        "--gold", "tests.test_overoptimization:length_gold", "--prompts_file", str(models["prompts"]),
        "--checkpoints", f"{{ppo: {models['ppo']}}}", "--judge", "tests.test_evaluation:longer_judge",
        "--ns", "[1, 2, 4]", "--max_new_tokens", "5", "--batch_size", "4", "--output_dir", str(out),
        "--trainer.logger=false",
    ])  # fmt: skip
    record = json.loads((out / "overoptimization.json").read_text())
    assert (out / "overoptimization.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Gao et al. fits" in printed
    points = {(p["method"], p["name"]): p for p in record["points"]}
    assert list(points) == [("best_of_n", "n=1"), ("best_of_n", "n=2"), ("best_of_n", "n=4"), ("rl", "sft"),
                            ("rl", "ppo")]  # fmt: skip
    # Independently: the 4 seeded SFT samples per prompt, scored by the proxy RM and the gold.
    model, tokenizer = M.load_policy(models["sft"])
    prompts = load_eval_prompts(str(models["prompts"]))
    drawn = sample_n(model, tokenizer, prompts, 4, seed=0, max_new_tokens=5)
    rm = RewardModelJudge(models["rm"])
    proxies = [rm.scores([p] * 4, [g.text for g in samples]) for p, samples in zip(prompts, drawn, strict=True)]
    mean_gold = sum(len(g.text) for samples in drawn for g in samples) / 12
    best_gold = sum(len(s[pick_best(p)].text) for s, p in zip(drawn, proxies, strict=True)) / 3  # n = N: the argmax
    assert points["best_of_n", "n=1"]["gold"] == pytest.approx(mean_gold)
    assert points["best_of_n", "n=4"]["gold"] == pytest.approx(best_gold)
    assert points["best_of_n", "n=4"]["proxy"] == pytest.approx(sum(max(p) for p in proxies) / 3, abs=1e-6)
    assert points["best_of_n", "n=4"]["kl"] == pytest.approx(math.log(4) - 3 / 4)
    assert points["best_of_n", "n=4"]["sqrt_kl"] == pytest.approx(math.sqrt(math.log(4) - 3 / 4))
    sft = points["rl", "sft"]
    assert sft["kl"] == 0.0 and sft["gold"] == pytest.approx(mean_gold) and sft["path"] == str(models["sft"])
    assert record["baseline"]["gold"] == pytest.approx(mean_gold)
    ppo = points["rl", "ppo"]
    assert ppo["kl"] > 0 and ppo["n_prompts"] == 3  # another random model's samples are far from the SFT's
    assert all(0 <= p["win_rate"] <= 1 for p in record["points"])
    # Three best-of-n points (two at d > 0) fit; one RL point at d > 0 does not.
    assert record["fits"]["best_of_n"]["gold"]["n_points"] == 2 and record["fits"]["rl"]["gold"] is None
    assert record["settings"]["n_samples"] == 4 and record["settings"]["ns"] == [1, 2, 4]


def test_gold_reward_model_and_no_judge(models, tmp_path):
    options = OveroptimizationOptions(str(models["sft"]), str(models["rm"]), f"rm:{models['rm']}",
                                      str(models["prompts"]), ns=[1, 2], max_new_tokens=4, output_dir=None)  # fmt: skip
    record = overoptimization(options, print_table=False)
    for point in record["points"]:
        assert point["gold"] == pytest.approx(point["proxy"], abs=1e-6)  # the same model as gold and proxy
        assert point["win_rate"] is None


def test_bad_options_name_their_flags(models, tmp_path):
    options = OveroptimizationOptions(
        str(tmp_path / "no_sft"), str(tmp_path / "no_rm"), "tests.test_overoptimization:no_such_gold",
        str(tmp_path / "none.jsonl"), checkpoints={"sft": str(models["ppo"]), "gone": str(tmp_path / "gone")},
        ns=[0, 2], max_new_tokens=0,
    )  # fmt: skip
    with pytest.raises(ValueError) as err:
        overoptimization(options, print_table=False)
    text = str(err.value)
    for expected in ("--sft: policy 'sft'", "--checkpoints: policy 'gone'", "--checkpoints has one named 'sft'",
                     "--rm_dir", "--gold 'tests.test_overoptimization:no_such_gold'", "--prompts_file",
                     "--ns must be a non-empty list of n >= 1, got [0, 2]", "--max_new_tokens must be >= 1"):  # fmt: skip
        assert expected in text, expected
    with pytest.raises(ValueError, match=r"--gold rm:nowhere: no config.json"):
        OveroptimizationOptions(str(models["sft"]), str(models["rm"]), "rm:nowhere", str(models["prompts"])).check()


# --------------------------------------------------------------------------- PPO along training


def test_ppo_exports_the_policy_every_n_iterations(tmp_path, tokenizer_dir):
    dirs = build_dirs(tmp_path / "models", tokenizer_dir)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in reverse_records(16)])
    L.seed_everything(0)
    module, data = make(dirs, (prompts, prompts), tokenizer_dir, export_every_n_iterations=1, ema_decay=0.5)
    trainer(tmp_path / "run", iterations=2).fit(module, data)
    iterations = tmp_path / "run" / "hf_iterations"
    assert sorted(p.name for p in iterations.iterdir()) == ["iter_0001", "iter_0002"]
    for i in (1, 2):
        assert read_export_metadata(iterations / f"iter_{i:04d}")["ppo_iterations"] == i
        M.load_policy(iterations / f"iter_{i:04d}")  # a loadable policy directory
    first, last = (load_file(iterations / f"iter_{i:04d}" / "model.safetensors") for i in (1, 2))
    final = load_file(tmp_path / "run" / "hf" / "model.safetensors")
    assert all((last[k] == final[k]).all() for k in final)  # after the last iteration: the final policy
    assert any((first[k] != final[k]).any() for k in final)  # the policy moved in between
    # Exporting along training changes nothing in it: the same run without exports ends on the same weights, bit for
    # bit (the EMA weights swapped in for each export are swapped back exactly; the same ops in the same order).
    L.seed_everything(0)
    module, data = make(dirs, (prompts, prompts), tokenizer_dir, export_every_n_iterations=0, ema_decay=0.5)
    trainer(tmp_path / "plain", iterations=2).fit(module, data)
    assert not (tmp_path / "plain" / "hf_iterations").exists()
    plain = load_file(tmp_path / "plain" / "hf" / "model.safetensors")
    assert plain.keys() == final.keys() and all(torch.equal(plain[k], final[k]) for k in final)
    with pytest.raises(ValueError, match="--model.export_every_n_iterations must be >= 0, got -1"):
        make(dirs, (prompts, prompts), tokenizer_dir, export_every_n_iterations=-1)


@pytest.mark.slow
def test_fsdp2_exports_the_gathered_policy_every_n_iterations(tmp_path, tokenizer_dir):
    """Under FSDP2 every rank joins the gather of each iteration's export (a rank that skipped it would hang)."""
    from tests.test_ppo_ddp import ppo_config, run_ppo

    sft, rm = build_dirs(tmp_path / "models", tokenizer_dir)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in reverse_records(32, seed=4)])
    setup = (sft, rm, prompts, prompts)  # the corpus is unused without ptx_coef
    config = ppo_config(tmp_path / "ppo.yaml", setup, export_every_n_iterations=1, ema_decay=0.5)
    run_ppo(config, tmp_path / "run", 2, 4, "fsdp2", "--trainer.limit_train_batches=2")
    iterations = tmp_path / "run" / "hf_iterations"
    assert sorted(p.name for p in iterations.iterdir()) == ["iter_0001", "iter_0002"]
    last = load_file(iterations / "iter_0002" / "model.safetensors")
    final = load_file(tmp_path / "run" / "hf" / "model.safetensors")
    assert last.keys() == final.keys() and all((last[k] == final[k]).all() for k in final)  # whole, EMA weights
