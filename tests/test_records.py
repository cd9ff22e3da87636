"""Record files and SFT record formats: every source type, every format, and every kind of bad input."""

from __future__ import annotations

import json

import pytest

from lit_rlhf.data.records import DataError, Source, load_records, parse_sft_record, read_records
from tests.conftest import shared_data, write_jsonl


def _sft(files, on_error="error"):
    return load_records(files, parse_sft_record, on_error)


def test_formats_normalise_to_prompt_messages_and_completion(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"prompt": "Say hi", "completion": "hi"},
            {"instruction": "Add", "input": "2 and 3", "output": "5"},
            {"instruction": "Name a colour", "input": "", "output": "red"},
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Q1"},
                    {"role": "assistant", "content": "A1"},
                    {"role": "user", "content": "Q2"},
                    {"role": "assistant", "content": "A2"},
                ]
            },
        ],
    )
    examples, skipped = _sft(str(path))
    assert skipped == []
    assert [e.completion for e in examples] == ["hi", "5", "red", "A2"]
    assert examples[0].prompt == [{"role": "user", "content": "Say hi"}]
    assert examples[1].prompt == [{"role": "user", "content": "Add\n\n2 and 3"}]
    assert examples[2].prompt == [{"role": "user", "content": "Name a colour"}]  # empty input adds nothing
    assert [m["content"] for m in examples[3].prompt] == ["Be brief.", "Q1", "A1", "Q2"]
    assert str(examples[3].source) == f"{path}:4"


def test_every_source_type_reads_the_same_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    records = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)]
    write_jsonl(tmp_path / "a.jsonl", records)
    (tmp_path / "b.json").write_text(json.dumps(records))
    (tmp_path / "c.json").write_text(json.dumps({"data": records}))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    (tmp_path / "e.csv").write_text("prompt,completion\n" + "".join(f"p{i},c{i}\n" for i in range(3)))
    Dataset.from_list(records).save_to_disk(str(tmp_path / "f_saved"))
    for name in ["a.jsonl", "b.json", "c.json", "d.parquet", "e.csv", "f_saved"]:
        examples, _ = _sft(str(tmp_path / name))
        assert [(e.prompt[0]["content"], e.completion) for e in examples] == [(f"p{i}", f"c{i}") for i in range(3)]
    # globs and lists, as in datasets.load_dataset(data_files=...)
    assert len(_sft(str(tmp_path / "*.json"))[0]) == 6
    assert len(_sft([str(tmp_path / "a.jsonl"), str(tmp_path / "e.csv")])[0]) == 6
    # CSV errors name the line of the file
    (tmp_path / "bad.csv").write_text("prompt,completion\np0,c0\np1,\n")
    with pytest.raises(DataError, match=r"bad\.csv:3: 'completion' is empty"):
        _sft(str(tmp_path / "bad.csv"))


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r":2: not valid JSON"),
        ('["a list"]', r":2: a record must be a JSON object"),
        ('{"prompt": "p"}', r":2: missing key 'completion'"),
        ('{"prompt": "p", "completion": 3}', r":2: 'completion' must be a string, got int"),
        ('{"prompt": "p", "completion": "  "}', r":2: 'completion' is empty"),
        ('{"prompt": "", "completion": "c"}', r":2: 'prompt' is empty"),
        ('{"instruction": "i", "input": ""}', r":2: missing key 'output'"),
        ('{"messages": [{"role": "user", "content": "q"}]}', r":2: the last message must be the assistant"),
        ('{"messages": [{"role": "bot", "content": "q"}]}', r":2: messages\[0\]\.role is 'bot'"),
        ('{"messages": []}', r":2: 'messages' must be a non-empty list"),
        ('{"text": "only text"}', r":2: unknown SFT record with keys \['text'\]"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "data.jsonl", ['{"prompt": "ok", "completion": "fine"}', line])
    with pytest.raises(DataError, match=r"data\.jsonl" + message):
        _sft(str(path))


def test_all_bad_records_are_reported_at_once_or_skipped_with_a_count(tmp_path):
    lines = ['{"prompt": "ok", "completion": "fine"}'] + ['{"prompt": "p"}'] * 12
    path = write_jsonl(tmp_path / "data.jsonl", lines)
    with pytest.raises(DataError) as err:
        _sft(str(path))
    text = str(err.value)
    assert text.startswith("12 bad record(s)")
    assert "data.jsonl:2:" in text and "data.jsonl:11:" in text and "... and 2 more" in text
    assert "--data.on_bad_record=skip" in text
    examples, skipped = _sft(str(path), on_error="skip")
    assert len(examples) == 1 and len(skipped) == 12


def test_every_invalid_json_line_is_listed_with_the_bad_records_or_skipped(tmp_path):
    good = '{"prompt": "ok", "completion": "fine"}'
    lines = [good, "{not json", good, '{"prompt": "p"}', "[1,", good, '{"a": }']
    path = write_jsonl(tmp_path / "data.jsonl", lines)
    with pytest.raises(DataError) as err:
        _sft(str(path))
    text = str(err.value)
    assert text.startswith("4 bad record(s)")
    # in file order: the three unreadable lines and the bad record between them
    listed = [line.split(": ", 1)[0].rsplit(":", 1)[1] for line in text.splitlines()[1:]]
    assert listed == ["2", "4", "5", "7"]
    assert "data.jsonl:5: not valid JSON" in text
    examples, skipped = _sft(str(path), on_error="skip")
    assert len(examples) == 3 and len(skipped) == 4
    # a file of nothing but unreadable lines is reported as such, not as a file with no records
    bad_only = write_jsonl(tmp_path / "bad_only.jsonl", ["{", "}"])
    with pytest.raises(DataError, match=r"2 bad record\(s\)(.|\n)*bad_only\.jsonl:2: not valid JSON"):
        _sft(str(bad_only))


def test_missing_empty_and_unmatched_files(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        list(read_records(str(tmp_path / "nope.jsonl")))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: file has no records"):
        list(read_records(str(tmp_path / "empty.jsonl")))
    with pytest.raises(DataError, match=r"no file matches"):
        list(read_records(str(tmp_path / "*.parquet")))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match=r"unknown file type '\.txt'"):
        list(read_records(str(tmp_path / "x.txt")))


def test_real_alpaca_samples_parse():
    for name, n in [("alpaca_seed_tasks_175.jsonl", 175), ("alpaca_sample_2k.jsonl", 2000)]:
        examples, skipped = _sft(str(shared_data(name)))
        assert len(examples) == n and not skipped
        with_input = [e for e in examples if "\n\n" in e.prompt[0]["content"]]
        assert with_input, "Alpaca inputs are appended to the instruction"


def test_parse_sft_record_rejects_answer_after_system_message():
    from lit_rlhf.data.records import Source

    record = {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}
    with pytest.raises(DataError, match="must follow a user message"):
        parse_sft_record(record, Source("x.jsonl", 1))


@pytest.mark.parametrize("template", ["plain", "auto"])
def test_one_hh_dialogue_renders_the_same_prompt_as_sft_rm_and_ppo_record(tokenizer, template):
    # An hh-rlhf prompt is already a dialogue: it is split into turns, never wrapped in a second Human/Assistant.
    from lit_rlhf.data.collate import encode_completion, render_prompt
    from lit_rlhf.data.prompts import parse_prompt_record
    from lit_rlhf.data.records import parse_ranking_record

    if template == "auto":  # a chat template renders the turns in its own format
        import copy

        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.chat_template = (
            "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}"
        )
    dialogue = "\n\nHuman: What is 2+2?\n\nAssistant: Four?\n\nHuman: Sure?\n\nAssistant:"
    src = Source("x.jsonl", 1)
    sft = parse_sft_record({"prompt": dialogue, "completion": " Yes, 4."}, src)
    rm = parse_ranking_record({"chosen": dialogue + " Yes, 4.", "rejected": dialogue + " 5."}, src)
    ppo = parse_prompt_record({"prompt": dialogue}, src)
    rendered = {render_prompt(tokenizer, ex.prompt, template) for ex in (sft, rm, ppo)}
    assert len(rendered) == 1
    if template == "plain":
        assert rendered == {dialogue}, "the plain format gives the dialogue back, not wrapped again"
    assert [m["role"] for m in sft.prompt] == ["user", "assistant", "user"]
    # the answer's leading space is the format's: SFT learns the same completion tokens the RM scores
    assert sft.completion == rm.completions[rm.ranks.index(0)] == "Yes, 4."
    assert encode_completion(tokenizer, sft.prompt, sft.completion, template) == encode_completion(
        tokenizer, rm.prompt, rm.completions[0], template
    )
    # the files of any stage serve as PPO prompts: a preference record's prompt is the RM's
    pair = {"chosen": dialogue + " Yes, 4.", "rejected": dialogue + " 5."}
    assert parse_prompt_record(pair, src).prompt == rm.prompt
    alpaca = {"instruction": "Add 2 and 2.", "input": "", "output": "4"}
    assert parse_prompt_record(alpaca, src).prompt == parse_sft_record(alpaca, src).prompt
    # plain prompts stay one user message
    assert parse_prompt_record({"prompt": "What is 2+2?"}, src).prompt == [{"role": "user", "content": "What is 2+2?"}]
