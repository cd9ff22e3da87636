"""`lit-rlhf pipeline` on your own model and files: the data step's splits (the preferences in two halves with no
prompt in common, the evaluation prompts held out of PPO), every record format, options that name their flag, the
shipped hh-rlhf config, and a tiny end-to-end run (a scratch model, then a model directory and a judge of one's own)
that writes the layout and results.json with its judge, and continues where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lit_rlhf.cli import build_cli
from lit_rlhf.data.records import DataError, Source
from lit_rlhf.models import load_tokenizer, read_export_metadata
from lit_rlhf.pipeline import OwnDataPipeline, StageSpec
from lit_rlhf.pipeline_data import PipelineData, parse_any_prompt, prepare_data, prompt_key, split_by_prompt
from tests.conftest import REPO, SHARED_DATA, WORDS, reverse_records, run_cli, write_jsonl

# --------------------------------------------------------------------------- files written by the tests


def own_files(root: Path) -> dict[str, Path]:
    """Small files in several formats: SFT demonstrations ("Reverse: ..."), K-wise rankings ("Mirror: ..."), pairs
    ("Say ...": hh-rlhf dialogues, chat messages, prompt apart), one prompt in two records of rankings and of pairs,
    prompts in four formats (one repeated) none of which the other files hold, pretraining text."""
    rankings = [
        {"prompt": f"Mirror: {w}{v}", "completions": [(w + v)[::-1], w + v, (w + v).upper()], "ranking": [0, 2, 1]}
        for w, v in zip(WORDS, reversed(WORDS), strict=True)
    ]
    # The same prompt again, other answers, as `lit-rlhf label export` writes it: a tie, the labeler's scores.
    rankings.append({**rankings[0], "completions": ["x", "y", "z"], "ranking": [0, [1, 2]], "likert": [6, 2, 2],
                     "labeler": "ann"})  # fmt: skip
    pairs = [{"chosen": f"\n\nHuman: Say {w}\n\nAssistant: {w}", "rejected": f"\n\nHuman: Say {w}\n\nAssistant: no"}
             for w in WORDS]  # fmt: skip
    pairs.append({"chosen": "\n\nHuman: Say cat\n\nAssistant: cat!", "rejected": "\n\nHuman: Say cat\n\nAssistant: ?"})
    user = {"role": "user", "content": "Say hello"}  # chat messages, and a pair with its prompt apart
    pairs.append({"chosen": [user, {"role": "assistant", "content": "hello"}],
                  "rejected": [user, {"role": "assistant", "content": "bye"}]})  # fmt: skip
    pairs.append({"prompt": "Say bye", "chosen": "bye", "rejected": "hello"})
    prompts = [{"prompt": f"Upper: {w}"} for w in WORDS]
    prompts += [{"prompt": f"Join: {w} {v}"} for w, v in zip(WORDS[:-1], WORDS[1:], strict=True)]
    prompts += [
        {"messages": [{"role": "user", "content": "Join: sun moon"}]},
        {"instruction": "Upper the word.", "input": "treebird", "output": "TREEBIRD"},  # an SFT record
        {
            "chosen": "\n\nHuman: Join: red cat\n\nAssistant: redcat",
            "rejected": "\n\nHuman: Join: red cat\n\nAssistant: no",
        },
        {"prompt": "Join: sun moon"},  # the same prompt as the messages record above: dropped as a repeat
    ]
    return {
        "sft": write_jsonl(root / "sft.jsonl", reverse_records(48)),
        "rankings": write_jsonl(root / "rankings.jsonl", rankings),
        "pairs": write_jsonl(root / "pairs.jsonl", pairs),
        "prompts": write_jsonl(root / "prompts.jsonl", prompts),
        "text": write_jsonl(root / "text.jsonl", [{"text": " ".join(WORDS[i:] + WORDS[:i])} for i in range(12)]),
    }


def own_data(files: dict[str, Path], **kwargs) -> PipelineData:
    options = {
        "sft_files": str(files["sft"]),
        "preference_files": [str(files["rankings"]), str(files["pairs"])],
        "prompt_files": str(files["prompts"]),
        "pretraining_files": str(files["text"]),
        "eval_prompts": 6,
    }
    return PipelineData(**{**options, **kwargs})


def lit_rlhf(args: list[str]) -> None:
    """``lit-rlhf ARGS`` in this process, its exceptions raised as they are (``main`` prints them as messages)."""
    build_cli(args)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def prompts_of(path: Path) -> set[str]:
    return {prompt_key(parse_any_prompt(r, Source(str(path), i)).messages) for i, r in enumerate(read_jsonl(path))}


# --------------------------------------------------------------------------- the data step


def test_split_by_prompt_keeps_each_prompt_on_one_side():
    keys = ["a", "b", "a", "c", "b", "d"]
    first, second = split_by_prompt(keys, 0.5, seed=0)  # 4 distinct prompts: 2 on each side
    assert sorted(first + second) == list(range(6))
    assert len({keys[i] for i in first}) == 2 and not {keys[i] for i in first} & {keys[i] for i in second}
    assert split_by_prompt(keys, 0.5, seed=0) == (first, second)  # seeded
    assert len({tuple(split_by_prompt(keys, 0.5, seed=s)[0]) for s in range(10)}) > 1  # the seed matters
    first, second = split_by_prompt(keys, 3, seed=0)  # a count of prompts
    assert len({keys[i] for i in first}) == 3 and len({keys[i] for i in second}) == 1


def test_every_record_format_gives_its_prompt():
    src = Source("p.jsonl", 1)
    user = [{"role": "user", "content": "Say hi"}]
    assert parse_any_prompt({"prompt": "Say hi", "id": 7}, src).record == {"prompt": "Say hi", "id": 7}  # as written
    chat = {"messages": [*user, {"role": "assistant", "content": "hi"}]}  # an SFT record: its answer is dropped
    assert parse_any_prompt(chat, src).messages == user
    assert parse_any_prompt({"instruction": "Say hi", "input": "", "output": "hi"}, src).messages == user
    pair = {"chosen": "\n\nHuman: Say hi\n\nAssistant: hi", "rejected": "\n\nHuman: Say hi\n\nAssistant: no"}
    assert parse_any_prompt(pair, src).record == {"messages": user}
    ranking = {"prompt": "Say hi", "completions": ["hi", "no"], "ranking": [1, 0]}
    assert parse_any_prompt(ranking, src).messages == user
    with pytest.raises(DataError, match=r"p.jsonl:1: unknown prompt record with keys \['question'\]"):
        parse_any_prompt({"question": "Say hi"}, src)


def test_data_step_splits_preferences_by_prompt_and_holds_out_evaluation_prompts(tmp_path):
    files = own_files(tmp_path / "in")
    report = prepare_data(own_data(files), tmp_path / "data", seed=0, gold_rm=True)
    out = tmp_path / "data"
    # Two halves of the preference prompts, with no prompt in common; every record in one of them, unchanged.
    rm, gold = prompts_of(out / "rm_preferences.jsonl"), prompts_of(out / "gold_rm_preferences.jsonl")
    assert not rm & gold and len(rm) == len(gold) == 13 and report["preferences"]["prompts"] == 12 + 14
    written = read_jsonl(out / "rm_preferences.jsonl") + read_jsonl(out / "gold_rm_preferences.jsonl")
    given = read_jsonl(files["rankings"]) + read_jsonl(files["pairs"])
    assert sorted(map(json.dumps, written)) == sorted(map(json.dumps, given))
    assert report["preferences"]["rm"]["prompts"] == 13 and report["preferences"]["gold_rm"]["prompts"] == 13
    # Evaluation prompts: 6 distinct ones, none of them a PPO prompt; the repeat is gone.
    ppo, held_out = prompts_of(out / "ppo_prompts.jsonl"), prompts_of(out / "eval_prompts.jsonl")
    assert len(held_out) == 6 and not ppo & held_out and len(ppo) + 6 == 12 + 11 + 3
    assert report["prompts"]["repeats_dropped"] == 1 and report["prompts"]["eval"]["records"] == 6
    assert "seeded" in report["prompts"]["eval"]["split"]
    # The base LM's corpus holds the demonstrations and the RM's half, nothing of the gold RM's or the evaluation's.
    corpus = "\n".join(r["text"] for r in read_jsonl(out / "corpus.jsonl"))
    assert all(f"Human: {json.loads(p)[-1][1]}\n" in corpus for p in rm)
    assert not [p for p in gold | held_out if f"Human: {json.loads(p)[-1][1]}\n" in corpus]
    assert json.loads((out / "split.json").read_text()) == report
    # With a judge of one's own, every preference record trains the RM.
    report = prepare_data(own_data(files), tmp_path / "all", seed=0, gold_rm=False)
    assert report["preferences"]["rm"]["records"] == len(given) and "gold_rm" not in report["preferences"]
    assert not (tmp_path / "all" / "gold_rm_preferences.jsonl").exists()
    # Evaluation prompts of one's own: every prompt goes to PPO.
    report = prepare_data(own_data(files, eval_prompt_files=str(files["sft"])), tmp_path / "given", 0, gold_rm=True)
    assert report["prompts"]["ppo"]["prompts"] == 26 and not (tmp_path / "given" / "eval_prompts.jsonl").exists()
    assert report["prompts"]["eval"] == {"files": [str(files["sft"])], "split": "given: --data.eval_prompt_files"}


def test_a_bad_record_stops_the_data_step_naming_its_line_or_is_skipped(tmp_path):
    files = own_files(tmp_path / "in")
    pairs = read_jsonl(files["pairs"])
    write_jsonl(files["pairs"], [*pairs[:2], {"chosen": "same", "rejected": "same"}, *pairs[2:]])
    with pytest.raises(DataError, match=r"(?s)--data.preference_files: .*pairs.jsonl:3: "):
        prepare_data(own_data(files), tmp_path / "data", seed=0, gold_rm=True)
    assert not (tmp_path / "data").exists()  # nothing half-written
    report = prepare_data(own_data(files, on_bad_record="skip"), tmp_path / "data", seed=0, gold_rm=True)
    assert report["preferences"]["skipped"] == 1


def _pipeline_config(tmp_path: Path, files: dict[str, Path], **more) -> Path:
    """A pipeline config on ``files``, every stage cut to a few steps of a one-layer scratch model."""
    ppo = {"model": {"max_new_tokens": 6, "minibatch_size": 4, "micro_batch_size": 4, "ppo_epochs": 1, "warmup": 0},
           "data": {"batch_size": 4}, "trainer": {"limit_train_batches": 1}}  # fmt: skip
    steps = {"max_steps": 2, "val_check_interval": None, "limit_val_batches": 0, "log_every_n_steps": 1}
    config = {
        "name": "own",
        "wandb": False,
        "vocab_size": 300,
        "data": {k: v for k, v in vars(own_data(files)).items()},
        "pretrain": {"config": "configs/pretrain/tiny.yaml", "overrides": {
            "model": {"model_config": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 128}, "warmup": 1},
            "trainer": steps}},
        "sft": {"config": "configs/sft/tiny.yaml",
                "overrides": {"model": {"warmup": 1}, "trainer": {**steps, "callbacks": []}}},
        "rm": {"config": "configs/rm/tiny.yaml",
               "overrides": {"model": {"max_references": 8}, "trainer": {**steps, "max_steps": 3}}},
        "dpo": {"config": "configs/dpo/tiny.yaml", "overrides": {"trainer": steps}},
        "ppo": {"config": "configs/ppo/tiny.yaml", "overrides": ppo},
        "ppo_ptx": {"config": "configs/ppo_ptx/tiny.yaml", "overrides": ppo},
        "evaluate": {"config": "configs/evaluate/tiny.yaml", "overrides": {"max_new_tokens": 6}},
        **more,
    }  # fmt: skip
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_options_name_what_to_change(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    files = own_files(tmp_path / "in")
    args = ["pipeline", "-c", str(_pipeline_config(tmp_path, files)), "--runs_dir", str(tmp_path / "runs")]
    with pytest.raises(ValueError) as e:
        lit_rlhf([*args, "--data.prompt_files", "null", "--data.eval_prompts", "0", "--judge_model_path", str(tmp_path),
              "--until", "comparisons"])  # fmt: skip
    for problem in (
        "--data.prompt_files is required",
        "--data.eval_prompts must be a count >= 1 or a share in (0, 1), got 0",
        f"--judge_model_path {tmp_path}: no config.json there",
        "--until 'comparisons' is not a stage of this pipeline",
    ):
        assert problem in str(e.value)
    assert not (tmp_path / "runs").exists()  # all reported at once, before anything ran


def test_world_and_own_data_options_do_not_mix(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    runs = ["--runs_dir", str(tmp_path / "runs")]
    with pytest.raises(ValueError, match=r"give either world: \(the instruction world\) or data: \(your files\)"):
        lit_rlhf(["pipeline", "-c", str(_pipeline_config(tmp_path, own_files(tmp_path / "in"))), *runs,
              "--world", "{n_train: 10}"])  # fmt: skip
    with pytest.raises(ValueError, match="--model_name_or_path is for your own data"):
        lit_rlhf(["pipeline", "-c", "configs/pipeline/smoke.yaml", *runs, "--model_name_or_path", str(tmp_path)])


def test_a_stage_config_still_reading_the_world_is_refused_naming_the_key(tmp_path):
    stage_yaml = {
        "model": {"class_path": "lit_rlhf.sft.SFTModule", "init_args": {"model_name_or_path": "scratch:gpt2"}},
        "trainer": {"callbacks": [{"class_path": "lit_rlhf.callbacks.ExactMatchCallback",
                                   "init_args": {"files": "runs/world/eval/heldout.jsonl"}}]},
    }  # fmt: skip
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(stage_yaml))
    specs = {"sft": StageSpec(str(tmp_path / "sft.yaml"))}
    pipeline = OwnDataPipeline("own", str(tmp_path), 0, own_data(own_files(tmp_path)), specs, None, None, 300, False)
    with pytest.raises(ValueError, match=r"trainer\.callbacks\[0\]\.init_args\.files: runs/world/eval/heldout"):
        pipeline.merged_config("sft", {})
    specs["sft"].overrides = {"trainer": {"callbacks": []}}  # the fix the message asks for
    assert pipeline.merged_config("sft", {})["trainer"] == {"callbacks": []}


# --------------------------------------------------------------------------- what the evaluation gives it


def test_a_reward_model_judge_scores_within_the_positions_of_its_model(tmp_path, tokenizer):
    from lit_rlhf.evaluation.judges import RewardModelJudge
    from lit_rlhf.models import export_pretrained, load_model

    small = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}
    export_pretrained(load_model("scratch:gpt2", tokenizer, head="score", model_config=small), tokenizer, tmp_path)
    judge = RewardModelJudge(tmp_path, device="cpu")  # max_length 1024 asked, 32 positions there
    assert judge.max_length == 32
    long_prompt = " ".join(["cat dog sun tree"] * 40)  # ~160 tokens: cut to its newest ones, not an index error
    assert len(judge.scores([long_prompt], ["tac"])) == 1


def test_judge_info_names_a_key_no_policy_may_take(tmp_path):
    from lit_rlhf.evaluation.options import EvaluateOptions

    options = EvaluateOptions({"sft": str(tmp_path), "judge": str(tmp_path)}, "p.jsonl", judge_info={"made": "x"})
    with pytest.raises(ValueError, match="--policies has one named 'judge', the key of --judge_info"):
        options.check()


# --------------------------------------------------------------------------- the shipped hh-rlhf config


def test_hh_rlhf_config_parses_and_splits_the_shared_data(tmp_path, monkeypatch):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found: configs/pipeline/hh_rlhf.yaml reads the samples in ../shared/data")
    monkeypatch.chdir(REPO)
    printed = yaml.safe_load(run_cli(["pipeline", "-c", "configs/pipeline/hh_rlhf.yaml", "--print_config"]))
    assert printed["world"] is None and printed["model_name_or_path"] is None  # a scratch model: no model needed
    for stage in ("pretrain", "sft", "rm", "ppo", "ppo_ptx", "evaluate"):
        assert Path(printed[stage]["config"]).is_file(), stage
    report = prepare_data(PipelineData(**printed["data"]), tmp_path / "data", seed=printed["seed"], gold_rm=True)
    assert report["sft"]["records"] == 2000
    p = report["preferences"]  # two hh-rlhf records have chosen == rejected
    assert (p["records"], p["skipped"], p["rm"]["prompts"], p["gold_rm"]["prompts"]) == (2352, 2, 1176, 1176)
    assert (report["prompts"]["ppo"]["records"], report["prompts"]["eval"]["records"]) == (400, 100)
    assert report["pretraining"]["train"]["records"] == 450


# --------------------------------------------------------------------------- the config for your files


def user_clone(root: Path) -> Path:
    """The parts of a clone the pipeline reads (its configs), in a directory with no ../shared beside it."""
    import shutil

    clone = root / "clone"
    shutil.copytree(REPO / "configs", clone / "configs")
    assert not (clone.parent / "shared").exists()
    return clone


def user_files(root: Path, n_prompts: int) -> dict[str, str]:
    """A user's files: demonstrations, pairs and ``n_prompts`` PPO prompts none of which the other files hold."""
    sft = [{"prompt": f"Repeat: {w} {i}", "completion": f"{w} {i}"} for i, w in enumerate(WORDS * 5)]
    pairs = [{"prompt": f"Name {w} {i}", "chosen": w, "rejected": "no"} for i, w in enumerate(WORDS * 4)]
    prompts = [{"prompt": f"Count to {i} in {WORDS[i % len(WORDS)]}s"} for i in range(n_prompts)]
    return {
        "sft_files": str(write_jsonl(root / "sft.jsonl", sft)),
        "preference_files": str(write_jsonl(root / "pairs.jsonl", pairs)),
        "prompt_files": str(write_jsonl(root / f"prompts_{n_prompts}.jsonl", prompts)),
    }


def own_data_args(files: dict[str, str], runs: Path) -> list[str]:
    flags = [arg for key, path in files.items() for arg in (f"--data.{key}", path)]
    return ["pipeline", "-c", "configs/pipeline/own_data.yaml", "--runs_dir", str(runs), *flags, "--until", "data"]


def test_own_data_config_names_no_file_outside_the_repository():
    config = yaml.safe_load((REPO / "configs" / "pipeline" / "own_data.yaml").read_text())
    assert {k: v for k, v in config["data"].items() if k.endswith("_files")} == {}
    stage_configs = [spec["config"] for spec in config.values() if isinstance(spec, dict) and "config" in spec]
    assert stage_configs and all((REPO / c).is_file() for c in stage_configs)


@pytest.mark.parametrize(("n_prompts", "n_eval"), [(30, 6), (100, 20), (500, 100)])
def test_the_data_step_splits_small_and_large_files_by_share(tmp_path, monkeypatch, n_prompts, n_eval):
    # The README's command for your files, from a clone with nothing beside it: the evaluation takes a share (0.2),
    # so 30, 100 and 500 prompts all leave PPO at least the 20 it needs, and every split's count is printed.
    monkeypatch.chdir(user_clone(tmp_path))
    out = run_cli(own_data_args(user_files(tmp_path, n_prompts), tmp_path / "runs"))
    report = json.loads((tmp_path / "runs" / "own_data" / "data" / "split.json").read_text())
    assert (report["prompts"]["eval"]["prompts"], report["prompts"]["ppo"]["prompts"]) == (n_eval, n_prompts - n_eval)
    for line in (f"PPO       {n_prompts - n_eval} prompts", f"evaluate  {n_eval} held-out prompts", "SFT       60 ",
                 "RM        24 preference records", "gold RM   24 preference records"):  # fmt: skip
        assert line in out, out


def test_a_file_too_small_for_ppo_gets_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(user_clone(tmp_path))
    from lit_rlhf.cli import main

    with pytest.raises(SystemExit) as e:
        main(own_data_args(user_files(tmp_path, 22), tmp_path / "runs"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        "--data.prompt_files: 18 distinct PPO prompt(s) of 22, after the 4 held out for the evaluation "
        "(--data.eval_prompts); the recipe needs at least 20 (--data.min_ppo_prompts): give more prompts, or the "
        "evaluation's own with --data.eval_prompt_files"
    ), err
    assert not (tmp_path / "runs" / "own_data" / "data").exists()


def test_an_evaluation_count_is_capped_at_half_the_prompts():
    keys = [str(i) for i in range(30)]
    held, rest = split_by_prompt(keys, 100, "s", cap=0.5)  # a count written for a 500-prompt file
    assert (len(held), len(rest)) == (15, 15)
    assert len(split_by_prompt(keys, 100, "s")[0]) == 30  # uncapped: all of them
    assert len(split_by_prompt(keys, 0.2, "s", cap=0.5)[0]) == 6  # a share is never capped


# --------------------------------------------------------------------------- end to end


def _statuses(root: Path) -> dict[str, str]:
    return {k: v["status"] for k, v in json.loads((root / "pipeline.json").read_text())["stages"].items()}


TRAINED = ("pretrain", "sft", "rm", "gold_rm", "dpo", "ppo", "ppo_ptx")
FIGURES = {"n", "win_rate", "win_rate_ci95", "wins", "ties", "losses", "rm_win_rate", "kl_to_sft", "lm_loss"}


@pytest.mark.slow
def test_own_data_pipeline_end_to_end_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # stage configs are named relative to the repository
    files = own_files(tmp_path / "in")
    args = ["pipeline", "-c", str(_pipeline_config(tmp_path, files)), "--runs_dir", str(tmp_path / "runs"),
            "--trainer.enable_progress_bar=false"]  # fmt: skip
    root = tmp_path / "runs" / "own"

    # 1. Interrupted in PPO: the stages before it are complete, nothing after it exists.
    def boom(self, console):
        raise KeyboardInterrupt("simulated interruption in ppo")

    with monkeypatch.context() as m:
        m.setattr(OwnDataPipeline, "run_ppo", boom)
        with pytest.raises(KeyboardInterrupt):
            lit_rlhf(args)
    for stage in ("pretrain", "sft", "rm", "gold_rm"):
        assert read_export_metadata(root / stage / "hf") is not None, stage
    assert not (root / "ppo" / "hf").exists() and not (root / "evaluate").exists()
    rm_export = (root / "rm" / "hf" / "model.safetensors").stat().st_mtime_ns
    assert len(load_tokenizer(str(root / "pretrain" / "tokenizer"))) == 300  # --vocab_size, trained on the text

    # The stages are wired to the data step's files: each RM on its half, from SFT, which starts from the base LM.
    configs = {s: yaml.safe_load((root / "configs" / f"{s}.yaml").read_text()) for s in ("sft", "rm", "gold_rm", "dpo")}
    assert configs["sft"]["model"]["init_args"]["model_name_or_path"] == str(root / "pretrain" / "hf")
    halves = (("rm", "rm_preferences.jsonl"), ("gold_rm", "gold_rm_preferences.jsonl"), ("dpo", "rm_preferences.jsonl"))
    for stage, half in halves:  # DPO learns from the RM's half: the gold RM's stays unseen by every policy
        assert configs[stage]["data"]["init_args"]["train_files"] == str(root / "data" / half)
        assert configs[stage]["model"]["init_args"]["model_name_or_path"] == str(root / "sft" / "hf")
        assert configs[stage]["data"]["init_args"]["ties"] == "drop"  # the tied ranking trains, its tie unpaired

    # 2. Rerun: the finished stages are skipped, PPO and what follows run.
    lit_rlhf(args)
    statuses = _statuses(root)
    assert [statuses[s] for s in ("data", *TRAINED[:5])] == ["skipped"] * 6
    assert [statuses[s] for s in ("ppo", "ppo_ptx", "evaluate")] == ["done"] * 3
    assert (root / "rm" / "hf" / "model.safetensors").stat().st_mtime_ns == rm_export
    for stage in TRAINED:
        assert read_export_metadata(root / stage / "hf") is not None, stage
    results = json.loads((root / "evaluate" / "results.json").read_text())
    assert set(results) == {"sft", "dpo", "ppo", "ppo_ptx", "judge"}
    for policy in ("sft", "dpo", "ppo", "ppo_ptx"):
        assert FIGURES <= set(results[policy]) and results[policy]["n"] == 6, policy
    for policy in ("dpo", "ppo", "ppo_ptx"):
        counts = [results[policy][k] for k in ("wins", "ties", "losses")]
        assert sum(counts) == 6 and results[policy]["win_rate"] == (counts[0] + counts[1] / 2) / 6
    assert results["sft"]["win_rate"] == 0.5 and results["sft"]["kl_to_sft"] == 0.0
    judge = results["judge"]
    split = json.loads((root / "data" / "split.json").read_text())
    assert judge["name"] == f"rm:{root / 'gold_rm' / 'hf'}" and judge["path"] == str(root / "gold_rm" / "hf")
    assert "gold RM" in judge["made"] and judge["records"] == split["preferences"]["gold_rm"]["records"]
    settings = json.loads((root / "evaluate" / "settings.json").read_text())
    assert settings["prompts_file"] == str(root / "data" / "eval_prompts.jsonl")
    assert settings["rm_dir"] == str(root / "rm" / "hf")

    # 3. Once more: nothing left to do.
    lit_rlhf(args)
    assert set(_statuses(root).values()) == {"skipped"}

    # 4. A model directory and a judge of one's own: no base LM, no gold RM, every preference trains the RM; no
    #    pretraining files, no PPO-ptx. The model: a plain Hugging Face directory, as save_pretrained writes it.
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = load_tokenizer(str(root / "pretrain" / "tokenizer"))
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_embd=32, n_head=2, n_positions=128)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "my_model")
    tokenizer.save_pretrained(tmp_path / "my_model")
    lit_rlhf([*args, "--name", "mine", "--model_name_or_path", str(tmp_path / "my_model"),
              "--judge_model_path", str(root / "gold_rm" / "hf"), "--data.pretraining_files", "null",
              "--dpo", "null"])  # fmt: skip
    mine = tmp_path / "runs" / "mine"
    assert set(_statuses(mine)) == {"data", "sft", "rm", "ppo", "evaluate"}
    assert not {"pretrain", "gold_rm", "dpo", "ppo_ptx"} & {p.name for p in mine.iterdir()}
    sft_config = yaml.safe_load((mine / "configs" / "sft.yaml").read_text())
    assert sft_config["model"]["init_args"]["model_name_or_path"] == str(tmp_path / "my_model")
    assert len(read_jsonl(mine / "data" / "rm_preferences.jsonl")) == split["preferences"]["records"]
    results = json.loads((mine / "evaluate" / "results.json").read_text())
    assert set(results) == {"sft", "ppo", "judge"} and results["ppo"]["lm_loss"] is None
    assert results["judge"]["path"] == str(root / "gold_rm" / "hf") and "--judge_model_path" in results["judge"]["made"]
