"""The options of an evaluation, listed once: :func:`lit_rlhf.evaluation.evaluate` takes them as an
:class:`EvaluateOptions`, and ``lit-rlhf evaluate`` has one flag per field (its ``--help`` is the text below)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lit_rlhf.data.collate import Template
from lit_rlhf.data.records import expand_files


@dataclass(frozen=True)
class BestOfN:
    """A best-of-n policy: n samples per prompt from a policy, the one a reward model scores highest kept.

    Args:
        n: Samples per prompt (>= 1), at temperature 1 and top-p 1.
        policy: The policy sampled, a name in --policies; null: the baseline.
        reward_model: The reward-model directory that picks the best sample; null: --rm_dir.
    """

    n: int
    policy: str | None = None
    reward_model: str | None = None


@dataclass(frozen=True)
class EvaluateOptions:
    """What to evaluate, against which baseline, judged by whom, and how to generate.

    Args:
        policies: Policy name -> exported Hugging Face directory (with lit_rlhf.json), as a YAML mapping:
            '{sft: runs/sft/hf, ppo: runs/ppo/hf}'.
        prompts_file: Held-out prompts, {"prompt": str} or {"messages": [...]} records (extra keys are passed to
            judges); a path, glob or list.
        baseline: The policy every other one is compared with (InstructGPT: the SFT model).
        judge: Who decides which response is better: 'rm:DIR' or a directory (a reward model), or an import path
            'package.module:name' to a function (prompt, response_a, response_b) -> 1 / 0.5 / 0, or to an object
            with compare(prompts, responses_a, responses_b). None: no judged win rate.
        judge_info: What the judge is and how it was made, e.g. '{path: runs/x/gold_rm/hf, made: ...}': written
            into results.json under 'judge', beside the policies. null: results.json holds the policies only.
        rm_dir: A reward model whose win rate is reported beside the judge's (rm_win_rate); the gap between the
            two shows over-optimisation.
        output_dir: Where the results go; replaced atomically. null: no files written.
        pretraining_file: Held-out pretraining text, {"text": str} records, for the LM loss (alignment tax).
        truthfulqa_file: TruthfulQA records (Question, Best Answer, Incorrect Answers) for MC1 by log-likelihood.
        gsm8k_file: GSM8K records (question, answer ending '#### <number>') for greedy accuracy.
        fewshot_file: Few-shot skill probes, {"prompt": str, "completion": str} records of raw text (no template),
            for fewshot_accuracy (alignment tax): the greedy continuation up to its first '.' or newline must equal
            the completion. 'python -m lit_rlhf.world' worlds: lit_rlhf.world.fewshot.write_fewshot_probes.
        response_metrics: Name -> import path of fn(prompt, response) -> bool | None (None: does not apply), or an
            import path to such a dict; each is reported as a rate per policy (e.g. toxic_rate).
        group_by: A key of the prompt records (e.g. 'kind'): each policy's figures in results.json also get
            'by_<group_by>', one entry per value of that key (as a string; 'none' where a record lacks it or holds
            null) with that group's n, win rates (interval, wins, ties, losses) and response metric rates; the
            table shows the win rates per group. null: overall figures only.
        max_examples: Use at most this many prompts, texts, TruthfulQA and GSM8K questions, few-shot probes each;
            null: all.
        max_new_tokens: Longest response to a prompt.
        gsm8k_max_new_tokens: Longest response to a GSM8K question.
        do_sample: Sample responses instead of greedy decoding, each prompt from its own stream seeded by --seed
            and the prompt's index (the same responses in any batch and with any number of processes).
        temperature: Sampling temperature (with --do_sample).
        top_p: Nucleus sampling threshold (with --do_sample).
        seed: Seed of sampling and of which comparisons are shown to the judge in swapped order.
        batch_size: Sequences per generate / forward call.
        template: Prompt template, as in training: 'auto' (the tokenizer's chat template if any) or 'plain' (HH).
        lm_max_length: Longest pretraining text, in tokens, for the LM loss.
        shuffle_positions: Show a seeded half of the pairs to the judge in swapped order, so a judge that prefers
            the first (or second) answer favours no policy.
        best_of_n: Best-of-n policies, name -> {n, policy, reward_model}, e.g. '{bon16: {policy: sft, n: 16}}':
            each answers a prompt with the highest-scoring of n samples (temperature 1, top-p 1, each sample its
            own seeded stream whatever --do_sample, --temperature and --top_p say) of `policy` (default --baseline)
            by `reward_model` (default --rm_dir), and is judged and measured like the other policies. Its KL to the
            baseline is the standard log n - (n-1)/n (an upper bound, Beirami et al. 2024) when it samples the
            baseline, null otherwise; its LM loss and benchmarks are null (they would be the sampled policy's).
    """

    policies: dict[str, str]
    prompts_file: str | list[str]
    baseline: str = "sft"
    judge: str | None = None
    judge_info: dict[str, int | float | str | None] | None = None
    rm_dir: str | None = None
    output_dir: str | None = "runs/evaluate"
    pretraining_file: str | list[str] | None = None
    truthfulqa_file: str | None = None
    gsm8k_file: str | None = None
    fewshot_file: str | list[str] | None = None
    response_metrics: dict[str, str] | str | None = None
    group_by: str | None = None
    max_examples: int | None = None
    max_new_tokens: int = 64
    gsm8k_max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16
    template: Template = "auto"
    lm_max_length: int = 512
    shuffle_positions: bool = True
    best_of_n: dict[str, BestOfN] | None = None

    def __post_init__(self) -> None:
        # From Python or a pipeline override an entry may be a plain mapping; the CLI gives BestOfN already.
        if self.best_of_n is not None:
            entries = {name: _best_of_n(name, spec) for name, spec in self.best_of_n.items()}
            object.__setattr__(self, "best_of_n", entries)

    def best_of_n_entries(self) -> dict[str, BestOfN]:
        """Each best-of-n policy by name, its ``policy`` and ``reward_model`` defaults filled in."""
        return {
            name: BestOfN(spec.n, spec.policy or self.baseline, spec.reward_model or self.rm_dir)
            for name, spec in (self.best_of_n or {}).items()
        }

    def generation_settings(self) -> dict[str, Any]:
        """How responses to the prompts are generated (recorded in ``settings.json``)."""
        keys = ("max_new_tokens", "do_sample", "temperature", "top_p", "seed", "batch_size")
        return {k: getattr(self, k) for k in keys}

    def check(self) -> None:
        """Raise one ValueError listing every problem with the options, before any model is loaded."""
        from lit_rlhf.evaluation.metrics import policy_dir_problems, reward_model_dir_problems

        problems = []
        if not self.policies:
            problems.append(
                "--policies is empty; give at least the baseline, e.g. {sft: runs/sft/hf, ppo: runs/ppo/hf}"
            )
        elif self.baseline not in self.policies:
            problems.append(f"--baseline {self.baseline!r} is not one of --policies {sorted(self.policies)}")
        for name, path in self.policies.items():
            problems.extend(policy_dir_problems(name, path))
        if self.judge_info is not None and "judge" in self.policies:
            problems.append("--policies has one named 'judge', the key of --judge_info in results.json; rename it")
        files = {
            "--prompts_file": self.prompts_file,
            "--pretraining_file": self.pretraining_file,
            "--truthfulqa_file": self.truthfulqa_file,
            "--gsm8k_file": self.gsm8k_file,
            "--fewshot_file": self.fewshot_file,
        }
        for flag, value in files.items():
            if value is None:
                continue
            try:
                expand_files(value)
            except ValueError as e:
                problems.append(f"{flag}: {e}")
        if self.rm_dir is not None:
            problems.extend(reward_model_dir_problems(f"--rm_dir {self.rm_dir}", self.rm_dir))
        if self.max_examples is not None and self.max_examples < 1:
            problems.append(f"--max_examples must be >= 1 or null, got {self.max_examples}")
        if self.max_new_tokens < 1:
            problems.append(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            problems.append(f"--temperature must be > 0, got {self.temperature}")
        problems.extend(self.best_of_n_problems())
        if problems:
            raise ValueError("cannot evaluate:\n  " + "\n  ".join(problems))

    def best_of_n_problems(self) -> list[str]:
        """What is wrong with ``--best_of_n`` (empty when nothing is)."""
        from lit_rlhf.evaluation.metrics import reward_model_dir_problems

        problems = []
        for name, spec in self.best_of_n_entries().items():
            flag = f"--best_of_n {name!r}"
            if name in self.policies:
                problems.append(f"{flag}: the name is taken by one of --policies; rename it")
            if name == "judge" and self.judge_info is not None:
                problems.append(f"{flag}: 'judge' is the key of --judge_info in results.json; rename it")
            if spec.n < 1:
                problems.append(f"{flag}: n must be >= 1, got {spec.n}")
            if spec.policy not in self.policies:
                problems.append(f"{flag}: policy {spec.policy!r} is not one of --policies {sorted(self.policies)}")
            if spec.reward_model is None:
                problems.append(f"{flag}: no reward model to pick the best sample; give its reward_model or --rm_dir")
            else:
                problems.extend(
                    reward_model_dir_problems(f"{flag}: reward_model {spec.reward_model}", spec.reward_model)
                )
        return problems


def _best_of_n(name: str, spec: BestOfN | Mapping[str, Any]) -> BestOfN:
    if isinstance(spec, BestOfN):
        return spec
    if not isinstance(spec, Mapping):
        raise ValueError(f"--best_of_n {name!r}: give {{n, policy, reward_model}}, got {spec!r}")
    unknown = sorted(set(spec) - {"n", "policy", "reward_model"})
    if unknown or "n" not in spec:
        raise ValueError(
            f"--best_of_n {name!r}: give {{n, policy, reward_model}} (n required), got keys {sorted(spec)}"
        )
    return BestOfN(**spec)


__all__ = ["BestOfN", "EvaluateOptions"]
