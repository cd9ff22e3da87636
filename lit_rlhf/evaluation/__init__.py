"""Evaluation (InstructGPT §4): win rates against a baseline policy by a pluggable judge, with 95% intervals, plus
KL to the baseline, alignment tax (LM loss, TruthfulQA MC1, GSM8K) and pluggable per-response rates."""

from lit_rlhf.evaluation.evaluate import evaluate
from lit_rlhf.evaluation.judges import CallableJudge, Judge, RewardModelJudge, judge_pairs, load_judge
from lit_rlhf.evaluation.options import EvaluateOptions
from lit_rlhf.evaluation.prompts import EvalPrompt, load_eval_prompts
from lit_rlhf.evaluation.stats import WinRate, wilson_interval, win_rate

__all__ = [
    "CallableJudge",
    "EvalPrompt",
    "EvaluateOptions",
    "Judge",
    "RewardModelJudge",
    "WinRate",
    "evaluate",
    "judge_pairs",
    "load_eval_prompts",
    "load_judge",
    "wilson_interval",
    "win_rate",
]
