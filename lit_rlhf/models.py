"""Load or build the models and tokenizers every stage uses, and write them back as Hugging Face directories.

A model is named the Hugging Face way: a local directory or a hub id. For tests and the embedded default a model
can also be built from scratch: ``scratch:gpt2`` or ``scratch:llama``, sized by ``model_config`` overrides.

Tokenizers always get a pad token distinct from EOS (PPO masks everything after the first EOS, so a pad that *is*
the EOS would hide where responses end).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "scratch:"
PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
MARKER_FILE = "lit_rlhf.json"
"""Written last into every exported directory: its presence means the export finished."""

# Small, CPU-friendly shapes; every key can be overridden through ``model_config``.
_SCRATCH_DEFAULTS: dict[str, tuple[type[PretrainedConfig], dict[str, Any]]] = {
    "gpt2": (GPT2Config, {"n_layer": 2, "n_head": 4, "n_embd": 128, "n_positions": 256}),
    "llama": (
        LlamaConfig,
        {
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "hidden_size": 128,
            "intermediate_size": 344,
            "max_position_embeddings": 256,
        },
    ),
}

# float64 is for equivalence tests: its reduction-order noise (~1e-16 relative) stays far below Adam's eps, so two
# runs that add in a different order end with weights equal to a tolerance derived from arithmetic.
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass
class LoraOptions:
    """LoRA adapters through peft.

    Args:
        r: Rank of the update matrices.
        alpha: Scaling numerator (the update is scaled by alpha / r).
        dropout: Dropout on the adapter input.
        target_modules: Module names to adapt; "all-linear" adapts every linear layer but the output head.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"


# --------------------------------------------------------------------------- local paths and hub ids

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
"""``name`` or ``org/name``: what the hub accepts as a repository id."""


def looks_local(name_or_path: str) -> bool:
    """True when ``name_or_path`` can only be a local path, never a hub id (``name`` or ``org/name``): it starts
    with ``.``, ``~`` or a separator, ends with a separator, or has two or more ``/`` (``x/y/z``) or a character no
    hub id holds."""
    if name_or_path.startswith((".", "~", "/", os.sep)) or name_or_path.endswith(("/", os.sep)):
        return True
    return _HUB_ID.match(name_or_path) is None


def missing_local_path(name_or_path: str | None, flag: str | None = None) -> str | None:
    """What is wrong when ``name_or_path`` looks local (:func:`looks_local`) and does not exist; None otherwise.

    Such a name never goes to the hub: transformers would retry the network for a relative path (5 tries over a
    minute) and answer an absolute one with a complaint about the form of repository ids.
    """
    if name_or_path is None or is_scratch(name_or_path) or not looks_local(name_or_path):
        return None
    if Path(name_or_path).expanduser().exists():
        return None
    where = f"{flag}: " if flag else ""
    return f"{where}{name_or_path}: no such file or directory (a local path, so it is not looked up on the hub)"


def check_local_path(name_or_path: str | None, flag: str | None = None) -> None:
    """Raise FileNotFoundError naming ``flag`` and the path when :func:`missing_local_path` finds a problem."""
    problem = missing_local_path(name_or_path, flag)
    if problem is not None:
        raise FileNotFoundError(problem)


# --------------------------------------------------------------------------- tokenizers


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer locally (no hub), with EOS and a distinct pad token.

    Args:
        texts: The training text; iterated once.
        vocab_size: Target vocabulary size, special tokens and the 256 byte symbols included.
        min_frequency: A merge must be seen this often to be learned.

    Returns:
        A fast tokenizer whose ``eos_token`` is ``<|endoftext|>`` and ``pad_token`` is ``<|pad|>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN, unk_token=None
    )


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give ``tokenizer`` a pad token distinct from EOS, adding ``<|pad|>`` if needed.

    Returns:
        True when a token was added to the vocabulary (the model's embeddings must then grow).
    """
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token; set one before training")
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    added = tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return added > 0


def scratch_tokenizer_problem(model_name_or_path: str | None, tokenizer_name_or_path: str | None) -> str | None:
    """What is wrong when a model built from scratch (``scratch:gpt2``) is given no tokenizer; None otherwise."""
    if model_name_or_path is None or not is_scratch(model_name_or_path) or tokenizer_name_or_path is not None:
        return None
    return (
        f"--model.model_name_or_path={model_name_or_path} builds a model from scratch, which has no tokenizer: give "
        "--model.tokenizer_name_or_path=DIR, a tokenizer directory (the instruction world's runs/world/tokenizer, or "
        "one trained on your own text, as `lit-rlhf pipeline` does when given no --model_name_or_path)"
    )


def load_tokenizer(
    name_or_path: str, trust_remote_code: bool = False, padding_side: str = "right", flag: str | None = None
) -> PreTrainedTokenizerBase:
    """Load a tokenizer by local path or hub id and make sure it pads with a token that is not EOS.

    A local-looking path that does not exist is refused at once, naming ``flag`` (see :func:`check_local_path`), and
    so is a scratch model's name (it has no tokenizer; see :func:`scratch_tokenizer_problem`).
    """
    if is_scratch(name_or_path):
        raise ValueError(scratch_tokenizer_problem(name_or_path, None))
    check_local_path(name_or_path, flag)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = padding_side
    return tokenizer


def other_tokenizer_problem(
    model_name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    tokenizer_name_or_path: str | None,
    trust_remote_code: bool = False,
) -> str | None:
    """Why ``tokenizer`` is not the pretrained model's own, or None when it is (or the model is built from scratch).

    A model trained with other token ids reads a different language: a config's tokenizer left beside a user's own
    model trains silently wrong. Compared by vocabulary with the tokenizer saved beside the model, or, when there is
    none, by size with the model's embedding rows (a pad token we add is the only row allowed beyond them).
    """
    if is_scratch(model_name_or_path) or tokenizer_name_or_path in (None, model_name_or_path):
        return None
    try:
        own = load_tokenizer(model_name_or_path, trust_remote_code)
    except (OSError, ValueError):
        own = None
    given = f"--model.tokenizer_name_or_path={tokenizer_name_or_path} ({len(tokenizer)} tokens)"
    if own is not None:
        if own.get_vocab() == tokenizer.get_vocab():
            return None
        return f"{given} is not the tokenizer of --model.model_name_or_path={model_name_or_path} ({len(own)} tokens)"
    vocab_size = getattr(AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code),
                         "vocab_size", None)  # fmt: skip
    if vocab_size is None or len(tokenizer) <= vocab_size + 1:
        return None
    return f"{given} has more tokens than --model.model_name_or_path={model_name_or_path} has embeddings ({vocab_size})"


def check_tokenizer(
    model_name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    tokenizer_name_or_path: str | None,
    allow_other_tokenizer: bool,
    trust_remote_code: bool = False,
) -> None:
    """Refuse a tokenizer other than the model's own unless ``allow_other_tokenizer`` (see
    :func:`other_tokenizer_problem`)."""
    if allow_other_tokenizer:
        return
    problem = other_tokenizer_problem(model_name_or_path, tokenizer, tokenizer_name_or_path, trust_remote_code)
    if problem is not None:
        raise ValueError(
            f"{problem}. Drop --model.tokenizer_name_or_path to use the model's own, or set "
            "--model.allow_other_tokenizer=true to train with this one (new embedding rows start at random)."
        )


# --------------------------------------------------------------------------- models


def is_scratch(model_name_or_path: str) -> bool:
    return model_name_or_path.startswith(SCRATCH_PREFIX)


def scratch_config(spec: str, tokenizer: PreTrainedTokenizerBase, overrides: dict[str, Any] | None) -> PretrainedConfig:
    """Build the config of a from-scratch model named ``scratch:<family>``, sized for ``tokenizer``."""
    family = spec.removeprefix(SCRATCH_PREFIX)
    if family not in _SCRATCH_DEFAULTS:
        raise ValueError(
            f"unknown scratch model {spec!r}; use one of {[SCRATCH_PREFIX + k for k in _SCRATCH_DEFAULTS]} "
            "(--model.model_name_or_path)"
        )
    config_cls, defaults = _SCRATCH_DEFAULTS[family]
    kwargs = {**defaults, **(overrides or {})}
    kwargs.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if family == "llama":
        kwargs.setdefault("tie_word_embeddings", True)
    return config_cls(**kwargs)


def resolve_dtype(dtype: str | None) -> torch.dtype | None:
    if dtype is None or dtype == "auto":
        return None
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[dtype]


def set_dropout(model: nn.Module, p: float) -> None:
    """Set every dropout probability of ``model`` (modules and the config fields that rebuild them) to ``p``.

    InstructGPT trains SFT with residual dropout 0.2 and runs PPO with dropout off.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        # GPT-2 attention keeps its dropout probability as a float for SDPA.
        for attr in ("attention_dropout", "dropout_p"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, p)
    config = getattr(model, "config", None)
    if config is not None:
        for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout", "dropout"):
            if hasattr(config, key) and isinstance(getattr(config, key), float):
                setattr(config, key, p)


def load_model(
    model_name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    head: str = "causal_lm",
    model_config: dict[str, Any] | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    dropout: float | None = None,
    gradient_checkpointing: bool = False,
    lora: LoraOptions | dict[str, Any] | None = None,
    flag: str | None = None,
) -> PreTrainedModel:
    """Load (or build from scratch) a model with a causal-LM head or a scalar score head.

    Args:
        model_name_or_path: A local directory, a hub id, or ``scratch:gpt2`` / ``scratch:llama``.
        tokenizer: The tokenizer the model is used with; embeddings are resized to its length.
        head: ``"causal_lm"`` (AutoModelForCausalLM) or ``"score"`` (AutoModelForSequenceClassification with one
            label, the reward/value model).
        model_config: Config overrides: the shape of a scratch model, or fields of a pretrained config.
        dtype: ``float32``, ``bfloat16``, ``float16``, ``float64`` or ``auto`` (the checkpoint's own); None means
            float32.
        trust_remote_code: Allow code from the model's repository to run. Off unless the user asks.
        dropout: Set every dropout probability to this; None keeps the model's own.
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        lora: Wrap the model with LoRA adapters (peft); None trains all weights.
        flag: The option that named the model, for the error when a local-looking path does not exist.
    """
    if head not in ("causal_lm", "score"):
        raise ValueError(f"head must be 'causal_lm' or 'score', got {head!r}")
    check_local_path(model_name_or_path, flag)
    model = _instantiate(model_name_or_path, head, model_config, dtype, trust_remote_code, tokenizer)
    _match_tokenizer(model, tokenizer)
    if dropout is not None:
        set_dropout(model, dropout)
    if gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    if lora is not None:
        model = apply_lora(model, lora, task_type="CAUSAL_LM" if head == "causal_lm" else "SEQ_CLS")
    return model


def _instantiate(
    model_name_or_path: str,
    head: str,
    model_config: dict[str, Any] | None,
    dtype: str | None,
    trust_remote_code: bool,
    tokenizer: PreTrainedTokenizerBase,
) -> PreTrainedModel:
    """Build a scratch model from its config, or load a pretrained one, with the requested head and dtype."""
    auto_cls = AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification
    torch_dtype = resolve_dtype(dtype) if dtype != "auto" else "auto"
    if is_scratch(model_name_or_path):
        config = scratch_config(model_name_or_path, tokenizer, model_config)
        if head == "score":
            config.num_labels = 1
        model = auto_cls.from_config(config)
        return model.to(torch_dtype) if isinstance(torch_dtype, torch.dtype) else model
    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    _check_shape_unchanged(model_name_or_path, config, model_config or {})
    for key, value in (model_config or {}).items():
        setattr(config, key, value)
    if head == "score":
        config.num_labels = 1  # on the config only: transformers 5 refuses num_labels beside config=
    return auto_cls.from_pretrained(
        model_name_or_path,
        config=config,
        dtype=torch_dtype if torch_dtype is not None else torch.float32,
        trust_remote_code=trust_remote_code,
        use_safetensors=_has_safetensors(model_name_or_path),
    )


SHAPE_KEYS = frozenset({
    "n_layer", "n_embd", "n_head", "n_inner", "n_positions", "hidden_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "intermediate_size", "max_position_embeddings", "head_dim",
    "vocab_size",
})  # fmt: skip
"""Config fields that size a model's weights: a pretrained model's cannot change."""


def _check_shape_unchanged(model_name_or_path: str, config: PretrainedConfig, model_config: dict[str, Any]) -> None:
    """Refuse ``model_config`` overrides that would resize a pretrained model's weights (a scratch model's shape,
    say, left in a config beside a user's own model), naming each field and both values."""
    changed = [
        f"{key}={value} (the model has {getattr(config, key)})"
        for key, value in model_config.items()
        if key in SHAPE_KEYS and hasattr(config, key) and getattr(config, key) != value
    ]
    if changed:
        raise ValueError(
            f"--model.model_config would change the shape of the pretrained {model_name_or_path}: {', '.join(changed)}."
            " A scratch model's sizes do not apply to a pretrained one: pass --model.model_config=null"
        )


def _match_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Grow the embeddings to the tokenizer (an added pad token) and make generation pad and stop as it does."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id


def _enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24 (the old name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def score_head(model: nn.Module) -> nn.Linear:
    """The scalar head of a sequence classifier (``score`` for GPT-2, Llama, ...; ``classifier`` elsewhere)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    for name in ("score", "classifier"):
        head = getattr(base, name, None)
        if head is not None:
            # peft keeps a trainable copy of the head (modules_to_save); that copy is the one used.
            if hasattr(head, "modules_to_save"):
                head = head.modules_to_save[head.active_adapter]
            if isinstance(head, nn.Linear) and head.out_features == 1:
                return head
    raise ValueError(f"{type(base).__name__} has no one-output linear score head ('score' or 'classifier')")


def _has_safetensors(name_or_path: str) -> bool | None:
    """True for a local directory holding safetensors weights; None (let transformers decide) for hub ids.

    Local directories without safetensors are loaded only if the user converted them: pickle checkpoints can run
    code, so we never load them silently.
    """
    path = Path(name_or_path)
    if not path.is_dir():
        return None
    if any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json")):
        return True
    raise ValueError(
        f"{path}: no *.safetensors weights found. lit_rlhf loads safetensors only (pickle checkpoints can run "
        "code); convert the checkpoint with `save_pretrained(..., safe_serialization=True)`."
    )


def as_lora_options(options: LoraOptions | dict[str, Any] | None) -> LoraOptions | None:
    """``options`` as a :class:`LoraOptions`: LightningCLI hands ``--model.lora='{r: 4}'`` to the module as a dict."""
    if options is None or isinstance(options, LoraOptions):
        return options
    return LoraOptions(**options)


def apply_lora(model: PreTrainedModel, options: LoraOptions | dict[str, Any], task_type: str) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    options = as_lora_options(options)
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        task_type=task_type,
    )
    return get_peft_model(model, config)


def unwrap_lora(model: nn.Module) -> PreTrainedModel:
    """A plain transformers model with the LoRA update merged in (a copy), or ``model`` itself without LoRA."""
    if hasattr(model, "merge_and_unload"):
        import copy

        return copy.deepcopy(model).merge_and_unload()
    return model  # type: ignore[return-value]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


FROZEN_ATTRIBUTE = "_lit_rlhf_frozen"
"""Set on a module by :func:`freeze`: it is in eval mode on purpose (a frozen scorer)."""


def freeze(model: nn.Module) -> nn.Module:
    """Freeze ``model`` for scoring: no gradients, eval mode (dropout off), marked as frozen on purpose (so the fit
    loop's warning about modules in eval mode leaves it out: :mod:`lit_rlhf.quiet`)."""
    model.requires_grad_(False)
    model.eval()
    setattr(model, FROZEN_ATTRIBUTE, True)
    return model


# --------------------------------------------------------------------------- export


@contextmanager
def atomic_directory(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``final_dir`` that replaces it only if the block succeeds.

    A crash inside the block leaves ``final_dir`` untouched (absent or the previous complete version), so a
    directory at ``final_dir`` is always a finished one.
    """
    final = Path(final_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def export_pretrained(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    export_dir: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` (LoRA merged) and ``tokenizer`` as a Hugging Face directory, atomically.

    ``state_dict`` replaces the model's own weights (the gathered weights of a sharded model).

    The directory holds safetensors weights, the config, the tokenizer and ``lit_rlhf.json`` (the stage and its
    settings), written last so its presence marks a finished export.
    """
    plain = unwrap_lora(model)
    with atomic_directory(export_dir) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        meta = {"lit_rlhf_version": _version(), **(metadata or {})}
        (tmp / MARKER_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    log.info("exported %s", export_dir)
    return Path(export_dir)


def read_export_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``lit_rlhf.json`` of a finished export, or None when ``path`` is not one."""
    marker = Path(path) / MARKER_FILE
    if not marker.is_file():
        return None
    return json.loads(marker.read_text())


def _version() -> str:
    from lit_rlhf import __version__

    return __version__


def lora_to_dict(options: LoraOptions | dict[str, Any] | None) -> dict[str, Any] | None:
    options = as_lora_options(options)
    return None if options is None else asdict(options)


__all__ = [
    "LoraOptions",
    "as_lora_options",
    "atomic_directory",
    "count_parameters",
    "ensure_pad_token",
    "export_pretrained",
    "freeze",
    "load_model",
    "load_tokenizer",
    "read_export_metadata",
    "score_head",
    "set_dropout",
    "train_tokenizer",
]
