"""lit-rlhf label end to end on the instruction world: the world's simulated labelers rank over HTTP, the export
trains an RM as good as one trained on the world's own comparisons, and their agreement is the world's.

The ranking tasks are the world's stand-in for SFT samples (``sft_like_groups``: K = 4..9 distinct responses per
prompt, written as a ``{"prompt", "completions"}`` file): the labelers' noise was calibrated on exactly these
(``calibrate_noise``, to ``TARGET_AGREEMENT`` = 73%), so agreement has a known value to match. A tiny policy's samples
would need a trained SFT model to mean anything. Three labelers rank every task through ``GET /api/next`` and
``POST /api/tasks/<id>/answer`` (never the file), 40% of the tasks by two of them.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest

from lit_rlhf.data.modules import PreferenceDataModule
from lit_rlhf.label.agreement import agreement, project_rankings, ranks_of
from lit_rlhf.label.export import export_project
from lit_rlhf.label.project import create_project
from lit_rlhf.world.comparisons import rank_samples
from lit_rlhf.world.labelers import (
    LABELER_NOISE,
    TARGET_AGREEMENT,
    Labeler,
    pair_agreement,
    sft_like_groups,
    sft_like_response,
)
from lit_rlhf.world.tasks import WORLD_KINDS, Task, sample_tasks
from tests.conftest import TINY_GPT2, write_jsonl
from tests.label_helpers import add_labelers, call, running

pytestmark = pytest.mark.slow

N_PROMPTS, OVERLAP = 300, 0.4
"""About 120 overlap tasks, ~1350 shared pairs: a bootstrap interval of about +-3 points on the agreement."""
NAMES = ("ann", "bob", "cy")
N_HELDOUT = 200
"""Held-out prompts (~2500 pairs) the RMs are scored on."""


@dataclass
class Labelled:
    root: Path
    project: Path
    groups: list[tuple[Task, list[str]]]
    people: dict[str, Labeler]
    records: list[dict]  # rankings.jsonl of the export


def label_over_http(server, tokens: dict[str, str], people: dict[str, Labeler]) -> int:
    """Each labeler in turn fetches a task and ranks what the page shows, until none has a task left; the number of
    answers sent."""
    sent, active = 0, list(tokens)
    while active:
        for name in list(active):
            status, data = call(server, "GET", "/api/next", tokens[name])
            assert status == 200, data
            task = data["task"]
            if task is None:
                active.remove(name)
                continue
            shown = task["outputs"]  # in this labeler's shuffled order
            order = people[name].rank({"messages": task["prompt"]}, shown)  # shown positions, best first
            body = {
                "idempotency_key": f"{name}-{task['id']}-answer",
                "ranking": order,
                "ratings": [{"likert": max(1, 7 - order.index(i))} for i in range(len(shown))],
            }
            status, data = call(server, "POST", f"/api/tasks/{task['id']}/answer", tokens[name], body)
            assert status == 200 and data["stored"] is True, data
            sent += 1
    return sent


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Labelled:
    root = tmp_path_factory.mktemp("label_world")
    groups = sft_like_groups(N_PROMPTS, seed=11)  # a seed the calibration (seed 0) never used
    samples = write_jsonl(root / "samples.jsonl", [{"prompt": t.prompt, "completions": r} for t, r in groups])
    project = root / "project.db"
    made = create_project(project, completions=str(samples), overlap=OVERLAP, overlap_labelers=2, seed=0)
    assert made["ranking"] == len(groups) and 0.3 * len(groups) < made["overlap"] < 0.5 * len(groups)
    tokens = add_labelers(project, *NAMES)
    people = {name: Labeler(LABELER_NOISE, f"label-world-{name}") for name in NAMES}
    with running(project) as server:
        sent = label_over_http(server, tokens, people)
    assert sent == made["ranking"] + made["overlap"]  # every task once, each overlap task twice
    assert export_project(project, root / "out") == {"demonstrations": 0, "rankings": sent, "skipped": 0}
    records = [json.loads(line) for line in (root / "out" / "rankings.jsonl").read_text().splitlines()]
    return Labelled(root, project, groups, people, records)


def test_the_export_holds_each_labelers_own_ranking_and_the_rm_data_reads_it_as_it_is(labelled):
    for record in labelled.records:
        # The page showed the outputs shuffled; the stored ranking is back in the file's order, the labeler's own.
        person = labelled.people[record["labeler"]]
        assert record["ranking"] == person.rank(record["prompt"], record["completions"])
    who = [[r["labeler"] for r in task_records] for task_records in _by_task(labelled.records)]
    assert all(len(set(names)) == len(names) for names in who) and {len(names) for names in who} == {1, 2}
    assert {name for names in who for name in names} == set(NAMES)  # every labeler got tasks

    file = labelled.root / "out" / "rankings.jsonl"
    tokenizer = _tokenizer(labelled)
    dm = PreferenceDataModule(train_files=str(file), val_files=str(file), tokenizer_name_or_path=tokenizer)
    dm.setup("fit")  # default options: no ties to declare, every record fits
    assert len(dm.train_examples) == len(labelled.records)
    assert [e.ranks for e in dm.train_examples] == [ranks_of(r["ranking"]) for r in labelled.records]


def test_agreement_on_the_overlap_is_the_worlds_calibrated_agreement(labelled):
    rows = {r.labeler: r for r in agreement(project_rankings(labelled.project), n_boot=1000, seed=0)}
    overall = rows["overall"]
    # The same pairs compared directly with the world's own function: the HTTP path changed no ranking.
    agree = total = 0
    for shared in (task_records for task_records in _by_task(labelled.records) if len(task_records) == 2):
        ranked = [labelled.people[r["labeler"]].rank(r["prompt"], r["completions"]) for r in shared]
        n_agree, n = pair_agreement(*ranked)
        agree, total = agree + n_agree, total + n
    assert (overall.pairs, overall.agreement) == (total, pytest.approx(agree / total))
    assert overall.tie_rate == 0.0 and overall.pairs > 1000
    # The world's set point (labelers.TARGET_AGREEMENT, InstructGPT's 72.6%) lies in the 95% bootstrap interval over
    # prompts (about +-3 points with ~120 shared prompts).
    assert overall.low <= TARGET_AGREEMENT <= overall.high, overall


def test_an_rm_trained_on_the_export_is_as_good_as_one_trained_on_the_worlds_comparisons(labelled):
    # The world's comparison file of the same size: the same prompts and completions, one record per exported record,
    # ranked as collect_comparisons ranks (rank_samples), by its labeler Labeler() and, for a task's second record, a
    # second world labeler: the same noise, other people.
    world_records = []
    for task_records in _by_task(labelled.records):
        for j, record in enumerate(task_records):
            prompt = ({"prompt": record["prompt"]}, [{"role": "user", "content": record["prompt"]}])
            ranked, _ = rank_samples([prompt], [record["completions"]], [len(record["completions"])],
                                           Labeler(LABELER_NOISE, j), 2)  # fmt: skip
            world_records += ranked
    assert len(world_records) == len(labelled.records)
    world_file = write_jsonl(labelled.root / "world_comparisons.jsonl", world_records)

    heldout, judge = _heldout(), Labeler(LABELER_NOISE, "label-world-judge")  # an independent labeler
    tokenizer, export_file = _tokenizer(labelled), labelled.root / "out" / "rankings.jsonl"
    exported = _heldout_accuracy(_train_rm(export_file, tokenizer, labelled.root / "rm-export"), heldout, judge)
    world = _heldout_accuracy(_train_rm(world_file, tokenizer, labelled.root / "rm-world"), heldout, judge)
    (a1, n1), (a2, n2) = exported, world
    # Both learned the labelers' preference: far above chance (0.5) on ~2500 held-out pairs.
    assert min(a1, a2) > 0.56, (exported, world)
    # Two-proportion bound: |a1 - a2| <= 3 sqrt(a1 (1 - a1) / n1 + a2 (1 - a2) / n2), about 0.04 here. It counts
    # the held-out pairs as independent (pairs of one prompt are not, which widens the truth), and the RMs differ
    # in their training labels too; RMs trained on world files ranked by other labeler seeds (2..7) scored
    # 0.610-0.632 on these pairs when this test was written (export 0.637, world 0.630, bound 0.041), a spread
    # inside the bound. Rankings taken in shown order for stored order (a mapping bug) trained an RM to 0.467.
    bound = 3 * math.sqrt(a1 * (1 - a1) / n1 + a2 * (1 - a2) / n2)
    assert abs(a1 - a2) <= bound, (exported, world, bound)


# --------------------------------------------------------------------------- helpers


def _by_task(records: list[dict]) -> list[list[dict]]:
    out: dict[int, list[dict]] = {}
    for record in records:
        out.setdefault(record["task_id"], []).append(record)
    return [out[t] for t in sorted(out)]


def _tokenizer(labelled: Labelled) -> str:
    """A byte-level BPE tokenizer trained on the tasks' text (cached in the module's directory)."""
    path = labelled.root / "tokenizer"
    if not path.exists():
        from lit_rlhf.models import train_tokenizer

        texts = [f"\n\nHuman: {t.prompt}\n\nAssistant: {x}" for t, responses in labelled.groups for x in responses]
        train_tokenizer(texts, vocab_size=512).save_pretrained(path)
    return str(path)


def _heldout() -> list[tuple[Task, list[str]]]:
    """Prompts on held-out inputs, each with K = 4..9 distinct SFT-like responses, as sft_like_groups draws them."""
    rng = random.Random("label-world-heldout")
    groups = []
    for task in sample_tasks(rng, N_HELDOUT, heldout=True, kinds=WORLD_KINDS):
        responses = list(dict.fromkeys(sft_like_response(task, rng) for _ in range(rng.randint(4, 9))))
        if len(responses) >= 2:
            groups.append((task, responses))
    return groups


def _train_rm(train_file: Path, tokenizer: str, root: Path):
    """One epoch of a tiny scratch GPT-2 RM on ``train_file`` (InstructGPT trains one epoch), seeded alike."""
    from lit_rlhf.reward import RewardModule

    L.seed_everything(0)
    dm = PreferenceDataModule(
        train_files=str(train_file), val_files=str(train_file), tokenizer_name_or_path=tokenizer, max_length=96
    )
    module = RewardModule(
        model_name_or_path="scratch:gpt2",
        tokenizer_name_or_path=tokenizer,
        model_config=TINY_GPT2,
        learning_rate=3e-3,
        dropout=0.0,
        normalize=False,
        export_dir=str(root / "hf"),
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
    )
    trainer.fit(module, dm)
    return module


def _heldout_accuracy(module, heldout: list[tuple[Task, list[str]]], judge: Labeler) -> tuple[float, int]:
    """Share of held-out pairs the RM orders as ``judge`` (an independent labeler) does, and the number of pairs."""
    from lit_rlhf.reward import score_completions

    agree = total = 0
    for task, responses in heldout:
        messages = [{"role": "user", "content": task.prompt}]
        scores = score_completions(module.model, module.tokenizer, [(messages, r) for r in responses]).tolist()
        rank = {item: r for r, item in enumerate(judge.rank(task.prompt, responses))}
        for i, j in itertools.combinations(range(len(responses)), 2):
            total += 1
            agree += (scores[i] > scores[j]) == (rank[i] < rank[j])
    return agree / total, total
