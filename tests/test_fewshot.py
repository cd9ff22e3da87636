"""Few-shot skill probes (alignment tax): the world's probes use held-out operands after training-split shots, with
answers recomputed here from the text alone; ``fewshot_accuracy`` scores raw-text continuations cut at the first
period or newline."""

from __future__ import annotations

import json
import re

import pytest
import torch

from lit_rlhf.evaluation import metrics as M
from lit_rlhf.world.fewshot import N_SHOTS, fewshot_probes, write_fewshot_probes
from lit_rlhf.world.tasks import is_heldout
from tests.conftest import TINY_GPT2

# kind -> (statement pattern with the answer as its last group, operand from the match, answer from the operand)
SPELLED = r"((?:[a-z] )*[a-z])"
ORACLES = {
    "reverse": (rf"{SPELLED} backwards is (.+)", lambda m: m[1].replace(" ", ""), lambda w: " ".join(w[::-1])),
    "uppercase": (rf"{SPELLED} in capitals is (.+)", lambda m: m[1].replace(" ", ""), lambda w: " ".join(w.upper())),
    "first_letter": (rf"{SPELLED} starts with (.+)", lambda m: m[1].replace(" ", ""), lambda w: w[0]),
    "length": (rf"{SPELLED} has (.+)", lambda m: m[1].replace(" ", ""), lambda w: f"{len(w)} letters"),
    "add": (r"(\d) plus (\d) is (.+)", lambda m: f"{m[1]},{m[2]}", lambda ab: str(sum(map(int, ab.split(","))))),
}


def test_probes_are_reproducible_and_state_held_out_operands_after_training_shots():
    kinds = tuple(ORACLES)
    probes = fewshot_probes(60, seed=3, kinds=kinds)
    assert probes == fewshot_probes(60, seed=3, kinds=kinds)
    assert probes != fewshot_probes(60, seed=4, kinds=kinds)
    assert {p["kind"] for p in probes} == set(kinds)
    for probe in probes:
        pattern, operand, answer = ORACLES[probe["kind"]]
        *shots, last = (probe["prompt"] + " " + probe["completion"] + ".").split(". ")
        assert len(shots) == N_SHOTS and not probe["prompt"].endswith((" ", "."))
        m = re.fullmatch(pattern, last.removesuffix("."))
        assert m, probe
        assert is_heldout(f"{probe['kind']}:{operand(m)}"), probe
        assert probe["completion"] == answer(operand(m)) == m[m.lastindex]
        for shot in shots:
            m = re.fullmatch(pattern, shot)
            assert m and not is_heldout(f"{probe['kind']}:{operand(m)}") and m[m.lastindex] == answer(operand(m))
    with pytest.raises(KeyError):
        fewshot_probes(1, kinds=("closed_qa",))


def test_write_fewshot_probes_is_atomic_and_reads_back(tmp_path):
    path = write_fewshot_probes(tmp_path / "eval" / "fewshot.jsonl", n=7, seed=1)
    assert [json.loads(line) for line in path.read_text().splitlines()] == fewshot_probes(7, seed=1)
    assert [p.name for p in path.parent.iterdir()] == ["fewshot.jsonl"]  # no temporary file left
    assert M.read_fewshot(str(path), max_examples=3) == fewshot_probes(7, seed=1)[:3]


@pytest.fixture
def tiny_lm(tokenizer):
    from lit_rlhf.models import load_model

    torch.manual_seed(0)
    return load_model("scratch:gpt2", tokenizer, model_config=TINY_GPT2).eval()


def test_fewshot_accuracy_cuts_the_continuation_at_the_first_period_or_newline(tiny_lm, tokenizer, monkeypatch):
    cat, add = {"prompt": "c a t backwards is", "completion": "t a c"}, {"prompt": "3 plus 4 is", "completion": "7"}
    records = [cat] * 5 + [add]
    continuations = [" t a c. d o g backwards is", " t a c\nmore", " t a", " t a c a.", " x", " 7."]
    seen = []

    def fake_generate(model, prompts, **kwargs):
        seen.extend(prompts)
        return [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]

    monkeypatch.setattr(M, "generate_greedy", fake_generate)
    assert M.fewshot_accuracy(tiny_lm, tokenizer, records) == pytest.approx(3 / 6)
    assert seen[0] == tokenizer("c a t backwards is", add_special_tokens=False)["input_ids"]  # raw text, no template
    continuations[:] = [" t a c."]
    assert M.fewshot_accuracy(tiny_lm, tokenizer, records[:1]) == 1.0
    continuations[:] = [" c a t."]
    assert M.fewshot_accuracy(tiny_lm, tokenizer, records[:1]) == 0.0


def test_fewshot_accuracy_runs_greedy_generation_on_a_real_model(tiny_lm, tokenizer):
    records = fewshot_probes(4, seed=0)
    accuracy = M.fewshot_accuracy(tiny_lm, tokenizer, records, max_new_tokens=4, batch_size=3)
    assert accuracy == M.fewshot_accuracy(tiny_lm, tokenizer, records, max_new_tokens=4, batch_size=4)
    assert 0.0 <= accuracy <= 1.0
