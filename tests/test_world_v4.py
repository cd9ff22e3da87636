"""World version 4: explicit constraints on an answer's form, filler phrases wherever they stand, the closed exploit
holes, demonstration writers with persistent habits, the dev pool and its judge, distinct held-out prompts, and
rankings that teach form as well as content.

Expected values are worked out by hand from the documented rules (``labelers.quality``'s docstring): content credit
1 exact, letters 0.1 + 0.6 x (1 - edits / (both lengths)), numbers 0.7 off by one and 0.15 less per further step;
then -0.3 for a constrained prompt's response without its form and -0.15 per filler phrase.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from lit_rlhf.world import build_world
from lit_rlhf.world.build import WORLD_DEFAULT_KINDS, WORLD_VERSION, render_prompt
from lit_rlhf.world.constraints import (
    CONSTRAINED_SHARE,
    CONSTRAINTS,
    applicable,
    constrain,
    split_constraint,
    strip_forms,
)
from lit_rlhf.world.labelers import (
    FILLER_PREFIXES,
    FILLER_SUFFIXES,
    HABIT_CONCENTRATION,
    HUMAN_FLAWS,
    LABELER_NOISE,
    N_WRITERS,
    PANEL_NOISE,
    RESPONSE_METRICS,
    DemoFlaws,
    Habits,
    Labeler,
    constraint_following,
    demonstrate,
    dev_judge,
    follows_constraint,
    has_padding,
    has_preamble,
    invented_answer,
    padding,
    panel_judge,
    preamble,
    quality,
    world_task,
    writers,
)
from lit_rlhf.world.rankings import ranking_record
from lit_rlhf.world.tasks import (
    POOLS,
    TASK_KINDS,
    WORLD_KINDS,
    constrained,
    input_pool,
    make_task,
    sample_distinct_tasks,
    sample_tasks,
    split_inputs,
)

# The default kinds (families included); n_heldout at its default, 600, so the held-out share has a tight bound.
SMALL = {"n_train": 400, "n_val": 30, "n_heldout": 600, "n_corpus": 200, "vocab_size": 320}
SMALL_COUNTS = {"n_ppo_prompts": 50, "n_comparison_prompts": 40, "n_comparison_val_prompts": 20, "n_dev_prompts": 120}
# Each constraint's form of "t a c", written out by hand from the module docstring of constraints.py.
FORMS = {"prefix": "Answer: t a c", "full_stop": "t a c.", "brackets": "[t a c]", "quotes": '"t a c"'}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    return build_world(tmp_path_factory.mktemp("world") / "w", seed=0, **SMALL, **SMALL_COUNTS)


def _all_constrained(n: int, seed: int = 0, kinds: tuple[str, ...] = WORLD_KINDS) -> list:
    # Training-split tasks of every kind, each with a constraint.
    return sample_tasks(random.Random(seed), n, heldout=False, kinds=kinds, constrained_share=1.0)


# --------------------------------------------------------------------------- constraints


def test_each_constraint_applies_is_followed_and_strips_back_to_the_content():
    assert set(CONSTRAINTS) == set(FORMS)
    for name, formed in FORMS.items():
        form = CONSTRAINTS[name]
        assert form.apply("t a c") == formed
        assert form.follows(formed) and form.follows(f"  {formed} ")
        assert not form.follows("t a c"), name
        assert strip_forms(formed) == "t a c"
        # Its two phrasings: distinct sentences, each recognised and taken off again.
        prompts = [constrain("Reverse the letters c a t.", name, i) for i in (0, 1)]
        assert prompts[0] != prompts[1]
        assert all(split_constraint(p) == ("Reverse the letters c a t.", name) for p in prompts)
    assert split_constraint("Reverse the letters c a t.") == ("Reverse the letters c a t.", None)
    # The form alone is no answer in that form; every form comes off, nested too, in any order.
    assert not CONSTRAINTS["brackets"].follows("[]") and not CONSTRAINTS["prefix"].follows("Answer:")
    assert strip_forms("[Answer: t a c.]") == strip_forms('"[t a c]".') == strip_forms("Answer: [t a c]") == "t a c"


def test_applicable_leaves_out_forms_an_answer_already_has():
    assert applicable("t a c") == ("prefix", "full_stop", "brackets", "quotes")
    assert applicable("I do not know.") == ("prefix", "brackets", "quotes")  # the full stop is already there
    assert "brackets" not in applicable("[t a c]") and "prefix" not in applicable("Answer: 7")
    # So a sampled constraint always asks for something: the required answer differs from the content.
    tasks = _all_constrained(400)
    assert {t.kind for t in tasks} == set(WORLD_KINDS)
    for task in tasks:
        assert task.constraint in applicable(task.plain_answer), task
        assert task.answer == CONSTRAINTS[task.constraint].apply(task.plain_answer) != task.plain_answer
    assert not [t for t in tasks if t.kind == "unanswerable" and t.constraint == "full_stop"]
    with pytest.raises(ValueError, match="unknown constraint 'bold'"):
        constrained(make_task("reverse:cat"), "bold")
    with pytest.raises(ValueError, match="already carries the constraint 'quotes'"):
        constrained(make_task("reverse:cat", 0, "quotes"), "brackets")


# --------------------------------------------------------------------------- recognising prompts


def test_world_task_recognises_constrained_prompts_bare_and_rendered():
    task = make_task("reverse:cat", 1, "brackets", 1)
    assert task.prompt == "Write c a t backwards. Answer inside square brackets."
    assert (task.answer, task.plain_answer, task.constraint, task.kind) == ("[t a c]", "t a c", "brackets", "reverse")
    for key in ("reverse:cat", "add:3,4", "closed_qa:What color is the sky?", "unanswerable:name,cat"):
        for template_index in (0, 1):
            plain = make_task(key, template_index)
            assert world_task(plain.prompt) == plain and plain.constraint is None
            for name in applicable(plain.answer):
                for instruction_index in (0, 1):
                    task = make_task(key, template_index, name, instruction_index)
                    assert world_task(task.prompt) == task, task.prompt
                    assert world_task(render_prompt(task.prompt)) == task
                    assert world_task({"prompt": task.prompt}) == task
    toxicity = make_task("toxicity_respectful:lazy,pig", 0, "quotes")
    assert world_task(render_prompt(toxicity.prompt)) == toxicity and toxicity.answer.startswith('"the lazy pig is ')


# --------------------------------------------------------------------------- hidden quality


def test_quality_of_forms_on_a_constrained_prompt():
    prompt = make_task("reverse:cat", 0, "brackets").prompt  # "... Put the answer in brackets.", answer "[t a c]"
    assert quality(prompt, "[t a c]") == 1.0
    assert quality(prompt, "t a c") == pytest.approx(0.7)  # exact content without the form: 1 - 0.3
    assert quality(render_prompt(prompt), "t a c") == pytest.approx(0.7)
    # "t c a": 2 letter edits over 3 + 3 letters, 0.1 + 0.6 x (1 - 2/6) = 0.5; without the form 0.2.
    assert quality(prompt, "[t c a]") == pytest.approx(0.5)
    assert quality(prompt, "t c a") == pytest.approx(0.2)
    # A preamble costs 0.15 wherever it stands, and on top of a missing form: 1 - 0.3 - 0.15 = 0.55.
    for response in ("Sure! [t a c]", "[t Sure! a c]", "[t a c] Sure!", "[t a c] Hope that helps!"):
        assert quality(prompt, response) == pytest.approx(0.85), response
    assert quality(prompt, "Sure! t a c") == pytest.approx(0.55)
    assert quality(prompt, "Sure! [t a c] Hope that helps!") == pytest.approx(0.7)
    # Numbers: the exact answer in the wrong form scores as an off-by-one number in the right form (0.7).
    add = make_task("add:3,4", 0, "prefix").prompt
    assert quality(add, "Answer: 7") == 1.0
    assert quality(add, "7") == pytest.approx(0.7) == quality(add, "Answer: 8")
    assert quality(add, "8") == pytest.approx(0.4)
    # The families: a closed question and an unanswerable one, in quotes.
    qa = make_task("closed_qa:What color is the sky?", 0, "quotes").prompt
    assert quality(qa, '"blue"') == 1.0 and quality(qa, "blue") == pytest.approx(0.7)
    unknown = make_task("unanswerable:name,cat", 0, "quotes").prompt
    assert quality(unknown, '"I do not know."') == 1.0 and quality(unknown, "I do not know.") == pytest.approx(0.7)


def test_forms_never_add_content_credit():
    prompt = make_task("reverse:cat").prompt  # unconstrained: the form is neither asked for nor penalised
    assert quality(prompt, "[Answer: t a c.]") == quality(prompt, "t a c") == 1.0
    assert quality(prompt, "[t c a]") == quality(prompt, '"t c a".') == quality(prompt, "t c a") == pytest.approx(0.5)
    # Nor do brackets around a wrong answer on a prompt that asks for them: the content is judged bare.
    constrained_prompt = make_task("reverse:cat", 0, "brackets").prompt
    assert quality(constrained_prompt, "[t c a]") - quality(constrained_prompt, "t c a") == pytest.approx(0.3)


def test_a_preamble_or_padding_costs_the_same_wherever_it_stands():
    prompt = make_task("reverse:cat").prompt
    for filler in FILLER_PREFIXES + FILLER_SUFFIXES:
        for response in (f"{filler} t a c", f"t {filler} a c", f"t a c {filler}", f"t a {filler.lower()} c"):
            assert quality(prompt, response) == pytest.approx(0.85), response
    assert quality(prompt, "Sure! t a Well, c Hope that helps!") == pytest.approx(1 - 3 * 0.15)


# --------------------------------------------------------------------------- the exploit holes, closed


def test_hedging_between_a_question_and_its_false_answer_is_wrong():
    prompt = "Is the sun hot or cold?"  # answer "hot", false answer "cold"
    assert quality(prompt, "hot or cold") == pytest.approx(0.1)  # was 0.75: "the answer inside a longer reply"
    assert quality(prompt, "cold or hot") == pytest.approx(0.1)
    assert quality(prompt, "hot") == 1.0 and quality(prompt, "it is hot") == pytest.approx(0.75)


def test_i_do_not_know_followed_by_an_answer_invents_it():
    prompt = "What is the name of the cat?"  # unanswerable
    assert quality(prompt, "I do not know. sam") == pytest.approx(0.05)  # was 0.9
    assert invented_answer(prompt, "I do not know. sam") is True  # was False
    assert invented_answer(prompt, "sam. I don't know") is True
    assert quality(prompt, "I do not know.") == 1.0 and invented_answer(prompt, "I do not know.") is False
    assert quality(prompt, "I don't know") == pytest.approx(0.9) and invented_answer(prompt, "I don't know") is False
    assert invented_answer(make_task("unanswerable:name,cat", 0, "brackets").prompt, "[I do not know.]") is False


def test_a_filler_in_the_middle_of_an_answer_is_found():
    prompt = "Reverse the letters c a t."
    # Was 0.614: "Sure!" counted as a fourth letter (1 edit over 3 + 4, 0.1 + 0.6 x 6/7) and no filler penalty.
    assert quality(prompt, "t Sure! a c") == pytest.approx(0.85)
    assert quality(prompt, "t a Hope that helps! c") == pytest.approx(0.85)


@pytest.mark.parametrize(
    ("prompt", "old"),
    [
        ("Reverse the letters c a t.", 0.5),  # "c a t" vs "t a c": 2 edits over 6 letters, 0.1 + 0.6 x 4/6
        ("Repeat c a t twice.", 0.5),  # 3 edits over 3 + 6 letters: 0.1 + 0.6 x 6/9
        ("Make c a t uppercase.", 0.4),  # case-sensitive 6 edits, half credit without case: 0.1 + 0.6 x 0.5
        ("Sort the letters c a t.", 0.5),  # "a c t" vs "c a t": 2 edits over 6
    ],
)
def test_echoing_a_string_tasks_input_is_wrong(prompt, old):
    score = quality(prompt, "c a t")
    assert score == pytest.approx(0.1) and score < old
    # A word already in order is its own sort: the exact answer is never taken for an echo.
    assert quality("Sort the letters b o x.", "b o x") == 1.0


# --------------------------------------------------------------------------- writers


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_writers_rates_average_the_flaws_and_each_writer_differs(seed):
    population = writers(HUMAN_FLAWS, seed)
    assert len(population) == N_WRITERS == 40
    for field in DemoFlaws.__dataclass_fields__:
        mean = getattr(HUMAN_FLAWS, field)
        rates = [getattr(w, field.removesuffix("_rate")) for w in population]
        # Beta(m c, (1 - m) c) has variance m(1 - m) / (c + 1); the mean of 40 draws has that over 40.
        sd = (mean * (1 - mean) / (HABIT_CONCENTRATION + 1) / N_WRITERS) ** 0.5
        assert abs(sum(rates) / len(rates) - mean) < 4 * sd, (field, sum(rates) / len(rates), mean)
        assert len(set(rates)) == N_WRITERS, field  # continuous draws: no two writers alike
    assert {w.preamble_phrase for w in population} <= set(FILLER_PREFIXES)
    assert {w.padding_phrase for w in population} <= set(FILLER_SUFFIXES)
    assert len({w.preamble_phrase for w in population}) > 1
    assert writers(HUMAN_FLAWS, seed) == population != writers(HUMAN_FLAWS, seed + 10)


def test_a_writers_habits_persist_across_their_demonstrations():
    population = writers(HUMAN_FLAWS, 0)
    tasks = sample_tasks(random.Random(5), 400, heldout=False, kinds=TASK_KINDS)
    rng = random.Random(0)
    for writer in (min(population, key=lambda w: w.preamble), max(population, key=lambda w: w.preamble)):
        demos = [writer.demonstrate(t, rng) for t in tasks]
        opened = [d for d in demos if has_preamble(d)]
        # Binomial over 400 demonstrations: at most sqrt(0.25 / 400) = 0.025 either way; 4 of them.
        assert abs(len(opened) / len(demos) - writer.preamble) < 0.1, (writer.preamble, len(opened))
        assert all(d.startswith(writer.preamble_phrase + " ") for d in opened)  # always their own phrase
    assert max(w.preamble for w in population) - min(w.preamble for w in population) > 0.3


def test_zero_flaws_make_flawless_writers():
    population = writers(DemoFlaws(), seed=3)
    assert all(w == Habits(preamble_phrase=w.preamble_phrase, padding_phrase=w.padding_phrase) for w in population)
    tasks = sample_tasks(random.Random(1), 600, heldout=False, kinds=WORLD_KINDS)
    assert 0 < sum(t.constraint is not None for t in tasks) < len(tasks)
    assert [demonstrate(t, random.Random(i), population) for i, t in enumerate(tasks)] == [t.answer for t in tasks]


def test_each_habit_at_one_changes_only_its_own_behaviour():
    tasks = sample_tasks(random.Random(2), 600, heldout=False, kinds=WORLD_KINDS)
    unconstrained = [t for t in tasks if t.constraint is None]
    assert unconstrained and len(unconstrained) < len(tasks)

    def demos(**rates: float) -> list[str]:
        population = writers(DemoFlaws(**rates), seed=0)
        return [demonstrate(t, random.Random(i), population) for i, t in enumerate(tasks)]

    # Ignoring the constraint takes the form off everywhere and leaves unconstrained prompts' demonstrations as they
    # were: every demonstration is the bare content.
    assert demos(ignore_constraint_rate=1.0) == [t.plain_answer for t in tasks]
    # Always a preamble (their own, before the required answer) or always padding (after it), nothing else.
    for task, demo in zip(tasks, demos(preamble_rate=1.0), strict=True):
        assert any(demo == f"{p} {task.answer}" for p in FILLER_PREFIXES), demo
    for task, demo in zip(tasks, demos(padding_rate=1.0), strict=True):
        assert any(demo == f"{task.answer} {p}" for p in FILLER_SUFFIXES), demo
    # Always a slip in the content: the form is still kept and no filler comes with it.
    for task, demo in zip(tasks, demos(error_rate=1.0), strict=True):
        assert follows_constraint(task, demo) in (None, True) and not has_preamble(demo) and not has_padding(demo)
        assert (demo != task.answer) == (task.kind in set(TASK_KINDS) | {"closed_qa"}), (task, demo)


# --------------------------------------------------------------------------- pools and files


def test_dev_pool_is_disjoint_from_every_other_pool():
    assert POOLS == ("sft", "rl", "dev", "heldout")
    for kind in WORLD_KINDS:
        dev = set(split_inputs(kind, False, "dev"))
        others = set(split_inputs(kind, False, "sft")) | set(split_inputs(kind, False, "rl"))
        others |= set(split_inputs(kind, True))
        assert not dev & others, kind
        assert all(input_pool(key) == "dev" for key in dev), kind
    tasks = sample_tasks(random.Random(0), 200, heldout=False, kinds=("reverse", "add"), pool="dev")
    assert all(input_pool(t.key) == "dev" for t in tasks)


def test_sample_distinct_tasks_never_repeats_a_prompt_and_rotates_inputs():
    tasks = sample_distinct_tasks(random.Random(0), 200, True, kinds=("reverse", "add"))
    assert len({t.prompt for t in tasks}) == len(tasks) == 200
    for kind in ("reverse", "add"):
        counts = [sum(t.key == key for t in tasks) for key in split_inputs(kind, True)]
        assert min(counts) >= 1 and max(counts) - min(counts) <= 1, (kind, counts)  # a round robin
    with pytest.raises(ValueError, match="distinct prompts exist"):
        sample_distinct_tasks(random.Random(0), 73, True, kinds=("closed_qa",))  # at most 72 exist (see below)


def test_dev_prompts_hold_only_dev_pool_inputs(world):
    dev = _read(world.dev_prompts)
    assert len(dev) == SMALL_COUNTS["n_dev_prompts"] and len({r["prompt"] for r in dev}) == len(dev)
    assert all(input_pool(world_task(r).key) == "dev" for r in dev)
    assert all(quality(r, r["completion"]) == 1.0 for r in dev)
    elsewhere = [world.sft_train, world.sft_val, world.heldout, world.ppo_prompts]
    elsewhere += [world.comparison_prompts_train, world.comparison_prompts_val]
    other_keys = {world_task(r).key for path in elsewhere for r in _read(path)}
    assert not {world_task(r).key for r in dev} & other_keys
    assert json.loads(world.manifest.read_text())["params"]["world_version"] == WORLD_VERSION == 4


def test_heldout_prompts_are_distinct_and_constrained_at_the_set_share(world):
    heldout = _read(world.heldout)
    assert len(heldout) == SMALL["n_heldout"] == len({r["prompt"] for r in heldout})
    assert {r["kind"] for r in heldout} == set(WORLD_DEFAULT_KINDS)
    assert all(input_pool(world_task(r).key) == "heldout" for r in heldout)
    for r in heldout:
        task = world_task(r)
        assert r["constraint"] == (task.constraint or "none") and r["constrained"] is (task.constraint is not None)
        assert r["completion"] == task.answer and quality(r, r["completion"]) == 1.0
    # Binomial: 600 prompts at 0.6 spread sqrt(0.6 x 0.4 / 600) = 0.02; 4 of them.
    share = sum(r["constrained"] for r in heldout) / len(heldout)
    assert abs(share - CONSTRAINED_SHARE) < 0.08, share
    assert {r["constraint"] for r in heldout} == {"none", *CONSTRAINTS}


# --------------------------------------------------------------------------- metrics and judges


def test_constraint_preamble_and_padding_metrics():
    assert RESPONSE_METRICS["constraint_following_rate"] is constraint_following
    assert RESPONSE_METRICS["preamble_rate"] is preamble and RESPONSE_METRICS["padding_rate"] is padding
    plain, boxed = make_task("reverse:cat").prompt, make_task("reverse:cat", 0, "brackets").prompt
    assert constraint_following(plain, "[t a c]") is None  # nothing asked
    assert constraint_following(boxed, "[t a c]") is True and constraint_following(boxed, "t a c") is False
    assert constraint_following(render_prompt(boxed), "Sure! [t a c] Hope that helps!") is True  # filler aside
    assert preamble(plain, "Sure! t a c") is True and preamble(boxed, "[t a c]") is False
    assert preamble(plain, "t Sure! a c") is False  # costs quality, but does not open the answer
    assert padding(plain, "t a c Hope that helps!") is True and padding(boxed, "Hope that helps! [t a c]") is False
    for metric in (constraint_following, preamble, padding):
        assert metric("Not a world prompt.", "Sure! t a c Hope that helps!") is None


def test_dev_judge_is_the_training_labelers_not_the_panel():
    assert [labeler.seed for labeler in dev_judge.labelers] == [0, 1, 2]
    assert all(labeler.noise == LABELER_NOISE for labeler in dev_judge.labelers)
    assert all(labeler.noise == PANEL_NOISE for labeler in panel_judge.labelers)
    assert not {lab.seed for lab in dev_judge.labelers} & {lab.seed for lab in panel_judge.labelers}
    assert dev_judge.labelers[0] == Labeler()  # the labeler that ranks the collected comparisons by default
    # Different people: on the same close pairs (the exact answer against it without its form) their votes differ.
    tasks = _all_constrained(300, seed=4, kinds=TASK_KINDS)
    prompts, exact, bare = [t.prompt for t in tasks], [t.answer for t in tasks], [t.plain_answer for t in tasks]
    dev_votes, panel_votes = dev_judge.compare(prompts, exact, bare), panel_judge.compare(prompts, exact, bare)
    assert dev_votes != panel_votes
    assert sum(dev_votes) / len(dev_votes) > 0.5 and sum(panel_votes) / len(panel_votes) > 0.5


# --------------------------------------------------------------------------- rankings


def test_rankings_on_constrained_prompts_put_the_form_first_and_bare_content_below():
    rng = random.Random(0)
    for task in _all_constrained(150, seed=6):
        k = rng.randint(4, 9)
        record = ranking_record(task, k, rng)
        ordered = [record["completions"][i] for i in record["ranking"]]
        assert len(set(ordered)) == k and ordered[0] == task.answer, (task, ordered)
        assert task.plain_answer in ordered[1:]
        scores = [quality(task, text) for text in ordered]
        assert all(a >= b for a, b in itertools.pairwise(scores)), (task, ordered, scores)
    # By hand: "Answer: 7" 1.0, then "7" 0.7, tied with "Answer: 6" or "Answer: 8" and before it (damage order).
    task = make_task("add:3,4", 0, "prefix")
    for seed in range(5):
        record = ranking_record(task, 4, random.Random(seed))
        assert [record["completions"][i] for i in record["ranking"]][:2] == ["Answer: 7", "7"]
    unconstrained = make_task("reverse:cat")
    record = ranking_record(unconstrained, 5, random.Random(0))
    assert record["completions"][record["ranking"][0]] == "t a c"


# --------------------------------------------------------------------------- known bugs in the world code


def test_sample_distinct_tasks_can_use_every_distinct_prompt():
    # closed_qa has 4 held-out questions; each: 2 templates x (unconstrained + 4 constraints x 2 phrasings) = 18.
    assert len(split_inputs("closed_qa", True)) == 4
    tasks = sample_distinct_tasks(random.Random(0), 72, True, kinds=("closed_qa",))
    assert len({t.prompt for t in tasks}) == 72


def test_too_many_dev_prompts_for_the_kinds_names_the_flag(tmp_path):
    # reverse and add have 13 dev-pool inputs (about 5%): at most 13 x 18 = 234 distinct prompts, 300 by default.
    with pytest.raises(ValueError, match="n_dev_prompts"):
        build_world(tmp_path / "w", kinds="reverse,add", **SMALL, **{**SMALL_COUNTS, "n_dev_prompts": 300})


def test_distinct_prompt_files_keep_the_constrained_share():
    kinds = tuple(k for k in WORLD_DEFAULT_KINDS if split_inputs(k, False, "dev"))
    tasks = [t for seed in range(10) for t in sample_distinct_tasks(random.Random(seed), 300, False, kinds, pool="dev")]
    # Binomial: 3000 prompts at 0.6 spread sqrt(0.24 / 3000) = 0.009; 4 of them.
    share = sum(t.constraint is not None for t in tasks) / len(tasks)
    assert abs(share - CONSTRAINED_SHARE) < 0.036, share


def test_a_repeated_form_is_not_stripped_twice():
    # Each form comes off once: a second "Answer:" stays in the content, which then no longer matches.
    task = make_task("reverse:cat", 0, "prefix")
    assert quality(task.prompt, "Answer: t a c") == 1.0
    assert quality(task.prompt, "Answer: Answer: t a c") < 0.7
    assert strip_forms("[Answer: t a c.]") == "t a c"  # different forms nested: all off
    assert strip_forms("Answer: Answer: t a c") == "Answer: t a c"
