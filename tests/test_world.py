"""The instruction world: deterministic, correct, split cleanly, written atomically."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from lit_rlhf.world import build as build_module
from lit_rlhf.world import build_world, render_example
from lit_rlhf.world.labelers import DemoFlaws
from lit_rlhf.world.tasks import (
    DEFAULT_KINDS,
    DEV_FRACTION,
    HELDOUT_FRACTION,
    RL_FRACTION,
    TASK_KINDS,
    WORDS,
    canonical_inputs,
    human_mistake,
    input_pool,
    is_heldout,
    make_task,
    sample_tasks,
    split_inputs,
)

# Flawless writers (every demo_* rate 0): the control world, whose demonstrations are the exact answers.
CONTROL = {f"demo_{field}": 0.0 for field in DemoFlaws.__dataclass_fields__}
# Every kind, subtraction included, so the answer checks cover them all.
SMALL = {
    "n_train": 300,
    "n_val": 30,
    "n_heldout": 60,
    "n_corpus": 200,
    "vocab_size": 320,
    "kinds": ",".join(TASK_KINDS),
    "n_dev_prompts": 40,
    **CONTROL,
}
# The explicit constraints, written out here (not read from constraints.py) so the answer checks are independent:
# each instruction sentence and the form it asks for.
FORMS = {
    "Start with 'Answer:'.": ("Answer: ", ""),
    "Begin your reply with 'Answer:'.": ("Answer: ", ""),
    "End with a full stop.": ("", "."),
    "Finish your reply with a full stop.": ("", "."),
    "Put the answer in brackets.": ("[", "]"),
    "Answer inside square brackets.": ("[", "]"),
    "Put the answer in quotes.": ('"', '"'),
    "Answer inside double quotes.": ('"', '"'),
}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> build_module.WorldFiles:
    return build_world(tmp_path_factory.mktemp("world") / "w", seed=0, **SMALL)


def test_same_seed_identical_files_different_seed_different(world, tmp_path):
    again = build_world(tmp_path / "again", seed=0, **SMALL)
    other = build_world(tmp_path / "other", seed=1, **SMALL)
    files = _all_bytes(world.root)
    assert {
        "sft/train.jsonl",
        "sft/val.jsonl",
        "eval/heldout.jsonl",
        "corpus/train.jsonl",
        "corpus/val.jsonl",
        "world.json",
        "tokenizer/tokenizer.json",
    } <= set(files)
    assert _all_bytes(again.root) == files
    other_files = _all_bytes(other.root)
    for name in ("sft/train.jsonl", "sft/val.jsonl", "eval/heldout.jsonl", "corpus/train.jsonl"):
        assert other_files[name] != files[name], name


EVAL_KEYS = {"prompt", "completion", "kind", "difficulty", "constraint", "constrained"}


def test_records_have_the_right_keys_and_nonempty_strings(world):
    expected = {
        world.sft_train: ({"prompt", "completion"}, SMALL["n_train"]),
        world.sft_val: ({"prompt", "completion"}, SMALL["n_val"]),
        world.heldout: (EVAL_KEYS, SMALL["n_heldout"]),
        world.dev_prompts: (EVAL_KEYS, SMALL["n_dev_prompts"]),
        world.corpus_train: ({"text"}, SMALL["n_corpus"]),
        world.corpus_val: ({"text"}, SMALL["n_corpus"] // 20),
    }
    for path, (keys, n) in expected.items():
        records = _read(path)
        assert len(records) == n, path
        for record in records:
            assert set(record) == keys, (path, record)
            assert all(isinstance(record[k], str) and record[k] for k in keys - {"difficulty", "constrained"}), record
            if keys == EVAL_KEYS:
                assert record["constrained"] is (record["constraint"] != "none"), record


def test_heldout_prompts_never_in_training_data(world):
    heldout = {r["prompt"] for r in _read(world.heldout)}
    train = {r["prompt"] for r in _read(world.sft_train)} | {r["prompt"] for r in _read(world.sft_val)}
    assert heldout and not heldout & train
    # The corpus never states a held-out answer either: e.g. "<w> backwards is <answer>." for a held-out word.
    # Sentences end with "." and are joined by " ", so ". <w> backwards is" finds <w> as a whole word.
    corpus = " ".join(". " + r["text"] for r in _read(world.corpus_train))
    for r in _read(world.heldout):
        if r["kind"] == "reverse":
            word = r["prompt"].removeprefix("Reverse the letters ").removeprefix("Write ")
            word = word.removesuffix(".").removesuffix(" backwards")
            assert f". {word} backwards is" not in corpus


def test_split_is_disjoint_and_covers_every_kind():
    for kind in TASK_KINDS:
        train, heldout = set(split_inputs(kind, False)), set(split_inputs(kind, True))
        assert train and heldout and not train & heldout
        assert train | heldout == set(canonical_inputs(kind))
    assert all(not is_heldout(t.key) for t in sample_tasks(random.Random(0), 200, heldout=False))
    assert all(is_heldout(t.key) for t in sample_tasks(random.Random(0), 200, heldout=True))


def test_training_split_has_sft_rl_and_dev_pools():
    for kind in TASK_KINDS:
        sft, rl, dev = (set(split_inputs(kind, False, pool)) for pool in ("sft", "rl", "dev"))
        assert sft and rl and not sft & rl and not dev & (sft | rl), kind
        assert sft | rl | dev == set(split_inputs(kind, False)), kind
        assert all(input_pool(key) == "heldout" for key in split_inputs(kind, True)), kind
    keys = [key for kind in TASK_KINDS for key in split_inputs(kind, False)]
    # RL_FRACTION of the training inputs; DEV_FRACTION of all inputs, so DEV_FRACTION / (1 - HELDOUT_FRACTION) of
    # the training ones (0.0625). Binomial spread over the ~1200 training keys: sqrt(0.25 x 0.75 / 1200) = 0.0125 and
    # sqrt(0.0625 x 0.9375 / 1200) = 0.007; the bounds are 4 of them.
    share = sum(input_pool(key) == "rl" for key in keys) / len(keys)
    assert abs(share - RL_FRACTION) < 0.05, share
    dev_share = sum(input_pool(key) == "dev" for key in keys) / len(keys)
    assert abs(dev_share - DEV_FRACTION / (1 - HELDOUT_FRACTION)) < 0.028, dev_share
    assert all(input_pool(t.key) == "rl" for t in sample_tasks(random.Random(0), 200, heldout=False, pool="rl"))
    assert all(input_pool(t.key) == "sft" for t in sample_tasks(random.Random(0), 200, heldout=False, pool="sft"))
    with pytest.raises(ValueError, match="pool 'rl' is not a part of the held-out split"):
        split_inputs("reverse", True, "rl")


def _spelled_word(prompt: str) -> str:
    # The operand is the run of single letters separated by spaces, e.g. "c a t".
    match = re.search(r"\b([a-z](?: [a-z])+)\b", prompt)
    assert match, prompt
    return match.group(1).replace(" ", "")


def _without_constraint(prompt: str, completion: str) -> tuple[str, str]:
    # The prompt without its constraint sentence, and the completion without the form that sentence asks for.
    for sentence, (start, end) in FORMS.items():
        if prompt.endswith(" " + sentence):
            assert completion.startswith(start) and completion.endswith(end), (prompt, completion)
            return prompt.removesuffix(" " + sentence), completion[len(start) : len(completion) - len(end)]
    return prompt, completion


def test_answers_are_correct_recomputed_independently(world):
    checked, constrained = set(), 0
    for r in _read(world.sft_train) + _read(world.heldout):
        prompt, answer = _without_constraint(r["prompt"], r["completion"])
        constrained += prompt != r["prompt"]
        numbers = [int(x) for x in re.findall(r"\d+", prompt)]
        if " plus " in prompt or prompt.startswith("Add "):
            assert int(answer) == numbers[0] + numbers[1], r
            checked.add("add")
        elif " minus " in prompt:
            assert int(answer) == numbers[0] - numbers[1], r
            checked.add("subtract")
        elif prompt.startswith("Subtract "):  # "Subtract b from a."
            assert int(answer) == numbers[1] - numbers[0], r
            checked.add("subtract")
        elif "backwards" in prompt or prompt.startswith("Reverse"):
            word = _spelled_word(prompt)
            assert answer.replace(" ", "") == "".join(reversed(word)), r
            checked.add("reverse")
        elif "uppercase" in prompt or "capital" in prompt:
            assert answer.replace(" ", "") == _spelled_word(prompt).upper(), r
            checked.add("uppercase")
        elif "letters are in" in prompt or "Count the letters" in prompt:
            assert int(answer) == len(_spelled_word(prompt)), r
            checked.add("length")
        elif "alphabetical" in prompt or prompt.startswith("Sort"):
            assert answer.replace(" ", "") == "".join(sorted(_spelled_word(prompt))), r
            checked.add("sort")
    assert checked == {"add", "subtract", "reverse", "uppercase", "length", "sort"}
    assert constrained > 0
    # Answers keep one letter a token: "t a c", never "tac".
    assert make_task("reverse:cat").answer == "t a c"
    assert make_task("repeat:dog").answer == "d o g d o g"
    assert make_task("last_letter:owl").answer == "l"
    assert make_task("subtract:7,2", 1).prompt == "Subtract 2 from 7."


def test_demo_error_rate_makes_small_mistakes_only_in_demonstrations(tmp_path):
    exact = build_world(tmp_path / "exact", seed=0, **SMALL)
    noisy = build_world(tmp_path / "noisy", seed=0, **{**SMALL, "demo_error_rate": 0.5})
    exact_train, noisy_train = _read(exact.sft_train), _read(noisy.sft_train)
    assert [r["prompt"] for r in exact_train] == [r["prompt"] for r in noisy_train]
    wrong = sum(a["completion"] != b["completion"] for a, b in zip(exact_train, noisy_train, strict=True))
    # Every kind here is an operation, so each demonstration slips with its writer's rate, Beta(2, 2) around 0.5
    # (variance 0.25 / 5 = 0.05): the 40 writers' mean is 0.5 +- sqrt(0.05 / 40) = 0.035, and 300 draws add
    # sqrt(0.25 / 300) = 0.029; together 0.046, so 0.35..0.65 is about 3.3 of them either side.
    assert 0.35 * len(exact_train) < wrong < 0.65 * len(exact_train)
    assert exact.heldout.read_bytes() == noisy.heldout.read_bytes()
    rng = random.Random(0)
    for word in WORDS[:50]:
        for kind in ("reverse", "first_letter", "add"):
            task = make_task(f"{kind}:{word}" if kind != "add" else f"add:{len(word)},3")
            assert human_mistake(task, rng) != task.answer


def test_tokenizer_pad_is_not_eos_and_round_trips(world):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world.tokenizer)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.eos_token == "<|endoftext|>"
    text = render_example("Reverse the letters c a t.", "t a c")
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    # Every spelled letter is its own token, which is what makes the string tasks learnable.
    assert tokenizer.tokenize(" t a c") == ["Ġt", "Ġa", "Ġc"]


def test_rebuild_skipped_when_parameters_match_redone_when_they_change(tmp_path, monkeypatch):
    files = build_world(tmp_path / "w", seed=0, **SMALL)
    before = files.sft_train.read_bytes()

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt a world that was already there")

    monkeypatch.setattr(build_module, "train_tokenizer", fail)
    assert build_world(tmp_path / "w", seed=0, **SMALL) == files
    monkeypatch.undo()

    changed = build_world(tmp_path / "w", seed=0, **{**SMALL, "n_train": SMALL["n_train"] + 1})
    assert len(_read(changed.sft_train)) == SMALL["n_train"] + 1
    assert json.loads(changed.manifest.read_text())["params"]["n_train"] == SMALL["n_train"] + 1
    assert changed.sft_train.read_bytes().startswith(before)  # the first n_train demonstrations are unchanged


def test_failure_mid_build_leaves_no_world(tmp_path, monkeypatch):
    real_write = build_module.write_jsonl
    calls = []

    def write_then_fail(path, records):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real_write(path, records)

    monkeypatch.setattr(build_module, "write_jsonl", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        build_world(tmp_path / "w", seed=0, **SMALL)
    assert not (tmp_path / "w").exists()
    assert list(tmp_path.iterdir()) == []


def test_kinds_selects_the_tasks_and_default_leaves_out_subtract(tmp_path):
    # Two kinds have few dev-pool inputs (about 5%): fewer distinct dev prompts than SMALL asks for elsewhere.
    files = build_world(tmp_path / "w", seed=0, **{**SMALL, "kinds": "reverse,add", "n_dev_prompts": 20})
    assert {r["kind"] for r in _read(files.heldout)} == {"reverse", "add"}
    prompts = [r["prompt"] for r in _read(files.sft_train)]
    assert all(p.startswith(("Reverse", "Write", "What is", "Add")) for p in prompts)
    assert "subtract" not in DEFAULT_KINDS and set(DEFAULT_KINDS) < set(TASK_KINDS)


def test_bad_parameters_are_all_reported(tmp_path):
    with pytest.raises(ValueError, match="n_train.*vocab_size.*demo_error_rate.*bogus"):
        build_world(tmp_path / "w", n_train=0, vocab_size=100, demo_error_rate=2.0, kinds="reverse,bogus")
    assert not (tmp_path / "w").exists()
