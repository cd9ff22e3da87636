"""Preference records, their batching and the world's rankings: every format, every bad ranking, the real samples."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

from lit_rlhf.data.collate import render_plain
from lit_rlhf.data.modules import PreferenceCollator, PreferenceDataModule
from lit_rlhf.data.records import DataError, load_records, parse_hh_dialogue, parse_ranking_record
from lit_rlhf.world.rankings import damage, damaged_answers, make_rankings, write_world_rankings
from lit_rlhf.world.tasks import make_task
from tests.conftest import shared_data, write_jsonl


def _rank(files, on_error="error", ties="error"):
    return load_records(files, lambda r, s: parse_ranking_record(r, s, ties=ties), on_error)


def test_every_preference_format_becomes_prompt_completions_and_ranks(tmp_path):
    user = [{"role": "user", "content": "Q"}]
    path = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "Q", "chosen": "good", "rejected": "bad"},
            {"chosen": "\n\nHuman: Q\n\nAssistant: good", "rejected": "\n\nHuman: Q\n\nAssistant: bad"},
            {"prompt": "Q", "completions": ["ok", "best", "worst"], "ranking": [1, 0, 2]},
            {"messages": user, "completions": ["ok", "best"], "ranking": [1, 0]},
            {"prompt": user, "chosen": [{"role": "assistant", "content": "good"}], "rejected": "bad"},
            {
                "chosen": [*user, {"role": "assistant", "content": "good"}],
                "rejected": [*user, {"role": "assistant", "content": "bad"}],
            },
        ],
    )
    examples, skipped = _rank(str(path))
    assert skipped == []
    assert all(e.prompt == user for e in examples)
    assert [e.completions for e in examples[:2]] == [["good", "bad"]] * 2
    assert examples[2].completions == ["ok", "best", "worst"] and examples[2].ranks == [1, 0, 2]
    assert examples[3].ranks == [1, 0]
    assert [e.completions for e in examples[4:]] == [["good", "bad"]] * 2


def test_hh_prompt_is_the_common_prefix_through_the_last_assistant_cue():
    # The rejected answer invents a further turn: the prompt still ends at the last *shared* cue.
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: Knock knock."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: No.\n\nHuman: ok\n\nAssistant: bye"
    ex = parse_ranking_record({"chosen": chosen, "rejected": rejected}, source=None)
    assert ex.prompt == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Joke?"},
    ]
    assert ex.completions == ["Knock knock.", "No.\n\nHuman: ok\n\nAssistant: bye"]
    assert render_plain(ex.prompt) + " " + ex.completions[1] == rejected


def test_hh_string_prompt_of_a_ranking_record_is_parsed_into_messages():
    text = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c"
    assert parse_hh_dialogue(text, source=None) == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert render_plain(parse_hh_dialogue(text, source=None)) == text + "\n\nAssistant:"


BAD_RANKINGS = [
    ({"prompt": "Q", "completions": ["a", "b", "c"], "ranking": [0, 0, 1]}, "repeats index [0]"),
    ({"prompt": "Q", "completions": ["a", "b", "c"], "ranking": [0, 1, 1]}, "misses index [2]"),
    ({"prompt": "Q", "completions": ["a", "b", "c"], "ranking": [0, 1]}, "has 2 indices but there are K = 3"),
    ({"prompt": "Q", "completions": ["a", "b"], "ranking": [0, 1, 2]}, "has 3 indices but there are K = 2"),
    ({"prompt": "Q", "completions": ["a", "b"], "ranking": [0, 5]}, "not indices of the 2 completions"),
    ({"prompt": "Q", "completions": ["a"], "ranking": [0]}, "K = 1 completion(s); a ranking needs K >= 2"),
    ({"prompt": "Q", "completions": ["a", "b", "c"], "ranking": [0, [1, 2]]}, "has ties [[1, 2]]"),
    ({"prompt": "Q", "completions": ["a", "b", "a"], "ranking": [0, 1, 2]}, "completions 0 and 2 are the same"),
    ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "completions 0 and 1 are the same string"),
    ({"prompt": "Q", "completions": ["a", "b"]}, "'ranking' must be a non-empty list"),
    ({"prompt": "Q", "completions": ["a", ""], "ranking": [0, 1]}, "'completions[1]' is empty"),
    ({"completions": ["a", "b"], "ranking": [0, 1]}, "needs 'prompt'"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"}, "share no prefix"),
]


@pytest.mark.parametrize(("record", "message"), BAD_RANKINGS)
def test_bad_rankings_name_file_and_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "b"}, record])
    with pytest.raises(DataError) as e:
        _rank(str(path))
    assert f"{path}:2: " in str(e.value)
    assert message in str(e.value)


def test_tie_policy_drop_keeps_the_record_without_tied_pairs(tmp_path):
    path = write_jsonl(
        tmp_path / "ties.jsonl", [{"prompt": "Q", "completions": ["a", "b", "c"], "ranking": [2, [0, 1]]}]
    )
    (ex,), _ = _rank(str(path), ties="drop")
    assert ex.ranks == [1, 1, 0]
    all_tied = write_jsonl(tmp_path / "all.jsonl", [{"prompt": "Q", "completions": ["a", "b"], "ranking": [[0, 1]]}])
    with pytest.raises(DataError, match="every completion is tied"):
        _rank(str(all_tied), ties="drop")


def test_real_hh_rlhf_sample_parses_and_round_trips_through_the_plain_template():
    path = shared_data("hh_rlhf_helpful_base_test_500.jsonl")
    examples, skipped = _rank(str(path))
    assert len(examples) == 500 and skipped == []
    raws = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for ex, raw in zip(examples, raws, strict=True):
        assert render_plain(ex.prompt) + " " + ex.completions[0] == raw["chosen"]
        assert render_plain(ex.prompt) + " " + ex.completions[1] == raw["rejected"]
    # The tail file has the two source records whose chosen == rejected (data README): errors with their lines.
    with pytest.raises(DataError, match=r"hh_rlhf_helpful_base_test_tail_1854.jsonl:222: completions 0 and 1"):
        _rank(str(shared_data("hh_rlhf_helpful_base_test_tail_1854.jsonl")))


def test_real_openassistant_kwise_samples_parse():
    first, skipped = _rank(str(shared_data("oasst1_en_val_kwise_first_turn_162.jsonl")), on_error="skip")
    assert len(first) == 161 and len(skipped) == 1 and "same string" in skipped[0]  # one duplicated reply
    multi, _ = _rank(str(shared_data("oasst1_en_val_kwise_multi_turn_118.jsonl")))
    assert {len(e.completions) for e in first + multi} == {3, 4, 5}
    assert all(e.prompt[-1]["role"] == "user" for e in multi) and max(len(e.prompt) for e in multi) >= 3


def test_collator_flattens_mixed_k_with_group_ids_and_right_padding(tokenizer):
    examples = [
        {"prompt_ids": [5, 6], "completion_ids": [[7, 0], [8, 9, 0]], "ranks": [1, 0]},
        {"prompt_ids": [5], "completion_ids": [[7, 0], [9, 0], [8, 8, 8, 0]], "ranks": [2, 0, 1]},
    ]
    batch = PreferenceCollator(pad_token_id=1)(examples)
    assert batch["group_ids"].tolist() == [0, 0, 1, 1, 1]
    assert batch["ranks"].tolist() == [1, 0, 2, 0, 1]
    assert batch["input_ids"][1].tolist() == [5, 6, 8, 9, 0]
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 0, 1]
    assert batch["attention_mask"].sum(1).tolist() == [4, 5, 3, 3, 5]


def test_datamodule_encodes_with_the_sft_template_and_truncates_the_shared_prompt(tmp_path, tokenizer_dir, tokenizer):
    long_prompt = " ".join(["cat dog"] * 60)
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [{"prompt": long_prompt, "completions": ["sun", "moon tree", "red"], "ranking": [2, 0, 1]}] * 3,
    )
    dm = PreferenceDataModule(
        train_files=str(path), val_files=str(path), tokenizer_name_or_path=str(tokenizer_dir), max_length=40
    )
    dm.setup()
    row = dm.train_dataset[0]
    assert all(len(row["prompt_ids"]) + len(c) <= 40 for c in row["completion_ids"])
    assert dm.counts["train"].truncated == 3
    # Completions are tokenised exactly as SFT tokenises them: " answer" + EOS.
    assert row["completion_ids"][1] == tokenizer(" moon tree", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[0] == 9  # 3 prompts x K = 3


@pytest.mark.parametrize("truncation", ["left_truncate", "skip"])
def test_a_completion_too_long_is_dropped_and_the_others_keep_their_ranking(
    tmp_path, tokenizer_dir, tokenizer, caplog, truncation
):
    from lit_rlhf.data.collate import encode_completion

    long = " ".join(["moon star"] * 30)  # ~60 tokens: over max_length on its own
    records = [
        # ranks [2, 1, 0, 3]; the rank-1 completion does not fit: the other three remain a ranking, ranks kept
        {"prompt": "Q", "completions": ["sun", long, "red", "cat dog"], "ranking": [2, 1, 0, 3]},
        # one completion fits: no pair is left, so the prompt goes
        {"prompt": "Q", "completions": [long, "sun", long + " x"], "ranking": [0, 1, 2]},
    ]
    path = write_jsonl(tmp_path / "t.jsonl", records)
    dm = PreferenceDataModule(train_files=str(path), val_files=str(path), tokenizer_name_or_path=str(tokenizer_dir),
                              max_length=24, truncation=truncation)  # fmt: skip
    with caplog.at_level("WARNING", logger="lit_rlhf.data.modules"):
        dm.setup()
    (row,) = dm.train_dataset.items
    prompt = [{"role": "user", "content": "Q"}]
    assert row["completion_ids"] == [
        encode_completion(tokenizer, prompt, c, dm.template) for c in ["sun", "red", "cat dog"]
    ]
    assert row["ranks"] == [2, 0, 3]
    counts = dm.counts["train"]
    assert (counts.examples, counts.skipped, counts.dropped_completions) == (1, 1, 1)
    assert "1 of 2 prompts dropped as too long" in caplog.text
    assert "1 completion(s) dropped from prompts that kept two or more" in caplog.text


def test_world_rankings_have_strictly_increasing_damage_and_are_reproducible(tmp_path):
    rng = random.Random(0)
    for key in ("reverse:horse", "first_letter:cat", "add:3,4", "repeat:owl", "length:zebra"):
        answer = make_task(key).answer
        for k in (4, 9):
            answers = damaged_answers(answer, k, rng)
            assert len(set(answers)) == k and answers[0] == answer
            damages = [damage(answer, a) for a in answers]
            assert all(a < b for a, b in itertools.pairwise(damages)), (answer, answers)
    train, val = write_world_rankings(tmp_path / "w1", seed=3, n_train=50, n_val=10)
    train2, _ = write_world_rankings(tmp_path / "w2", seed=3, n_train=50, n_val=10)
    assert train.read_bytes() == train2.read_bytes()
    examples, _ = _rank([str(train), str(val)])
    assert len(examples) == 60 and {len(e.completions) for e in examples} <= set(range(4, 10))


def test_world_rankings_best_completion_is_the_exact_answer():
    rng = random.Random(1)
    tasks = [make_task("reverse:cat"), {"prompt": "What is 2 plus 2?", "completion": "4"}]
    records = make_rankings(tasks, rng)
    assert records[0]["completions"][records[0]["ranking"][0]] == "t a c"
    assert records[1]["completions"][records[1]["ranking"][0]] == "4"
    assert all(4 <= len(r["completions"]) <= 9 for r in records)


def test_collator_rows_end_with_eos_so_the_rm_reads_the_eos(tmp_path, tokenizer_dir, tokenizer):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Q", "completions": ["a b", "cat"], "ranking": [1, 0]}] * 2)
    dm = PreferenceDataModule(train_files=str(path), val_files=str(path), tokenizer_name_or_path=str(tokenizer_dir))
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    last = batch["attention_mask"].sum(1) - 1
    assert torch.all(batch["input_ids"][torch.arange(len(last)), last] == tokenizer.eos_token_id)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
