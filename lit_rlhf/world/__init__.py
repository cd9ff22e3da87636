"""The instruction world: a small, seeded stand-in for the InstructGPT paper's world.

Instruction tasks with exact answers (``tasks``), a pretraining corpus in which the same skills appear only
implicitly (``corpus``), and ``build_world``, which writes them as ordinary record files plus a tokenizer.
"""

from lit_rlhf.world.build import WorldFiles, build_world, render_example, render_prompt
from lit_rlhf.world.corpus import FACTS, Fact, make_corpus
from lit_rlhf.world.tasks import TASK_KINDS, Task, is_heldout, make_task, sample_tasks

__all__ = [
    "FACTS",
    "TASK_KINDS",
    "Fact",
    "Task",
    "WorldFiles",
    "build_world",
    "is_heldout",
    "make_corpus",
    "make_task",
    "render_example",
    "render_prompt",
    "sample_tasks",
]
