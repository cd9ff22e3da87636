"""The instruction world: a small, seeded stand-in for the InstructGPT paper's world.

Instruction tasks with exact answers (``tasks``, on the words and facts of ``vocabulary``), explicit constraints on
an answer's form (``constraints``), truthfulness and toxicity prompts (``truthfulness``, ``toxicity``), a pretraining
corpus in which the same skills appear only implicitly (``corpus``), simulated writers and labelers and the held-out
judging panel (``labelers``), comparison collection from a policy (``comparisons``), and ``build_world``, which writes
them as ordinary record files plus a tokenizer.
"""

from lit_rlhf.world.build import WORLD_DEFAULT_KINDS, WorldFiles, build_world, render_example, render_prompt
from lit_rlhf.world.corpus import make_corpus
from lit_rlhf.world.labelers import HUMAN_FLAWS, DemoFlaws, Habits, Labeler, Panel, dev_judge, panel_judge, quality
from lit_rlhf.world.tasks import TASK_KINDS, WORLD_KINDS, is_heldout, make_task, sample_tasks
from lit_rlhf.world.vocabulary import FACTS, Fact, Task

__all__ = [
    "FACTS",
    "HUMAN_FLAWS",
    "TASK_KINDS",
    "WORLD_DEFAULT_KINDS",
    "WORLD_KINDS",
    "DemoFlaws",
    "Habits",
    "Fact",
    "Labeler",
    "Panel",
    "Task",
    "WorldFiles",
    "build_world",
    "dev_judge",
    "is_heldout",
    "make_corpus",
    "make_task",
    "panel_judge",
    "quality",
    "render_example",
    "render_prompt",
    "sample_tasks",
]
