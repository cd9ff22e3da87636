"""Trained models train in train mode (dropout as configured) and validate in eval mode, whatever
``from_pretrained`` returned: a pretrained directory loads in eval mode, and Lightning keeps submodule modes."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lit_rlhf.data.modules import PreferenceDataModule, SFTDataModule
from lit_rlhf.reward import RewardModule
from lit_rlhf.sft import SFTModule
from tests.conftest import TINY_GPT2, reverse_records, write_jsonl


class ModeProbe(L.Callback):
    """Records, at every training and validation batch, whether each dropout module is active and its p."""

    def __init__(self) -> None:
        self.train: list[tuple[bool, set[float]]] = []
        self.val: list[bool] = []

    @staticmethod
    def dropouts(module: L.LightningModule) -> list[torch.nn.Dropout]:
        return [m for m in module.model.modules() if isinstance(m, torch.nn.Dropout)]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        drop = self.dropouts(pl_module)
        self.train.append((all(m.training for m in drop), {m.p for m in drop}))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.val.append(any(m.training for m in self.dropouts(pl_module)))


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory, tokenizer_dir):
    from lit_rlhf.models import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir))
    path = tmp_path_factory.mktemp("pretrained")
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), **TINY_GPT2)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_a_pretrained_model_trains_with_dropout_on_and_validates_with_it_off(tmp_path, pretrained_dir, stage):
    records = reverse_records(16, seed=1)
    if stage == "sft":
        files = write_jsonl(tmp_path / "sft.jsonl", records)
        data = SFTDataModule(train_files=str(files), val_files=str(files), tokenizer_name_or_path=str(pretrained_dir))
        module = SFTModule(model_name_or_path=str(pretrained_dir), dropout=0.2, num_sample_prompts=0)
    else:
        rows = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": "zz"} for r in records]
        files = write_jsonl(tmp_path / "rm.jsonl", rows)
        data = PreferenceDataModule(
            train_files=str(files), val_files=str(files), tokenizer_name_or_path=str(pretrained_dir)
        )
        module = RewardModule(model_name_or_path=str(pretrained_dir), dropout=0.2, normalize=False)
    probe = ModeProbe()
    trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=1, val_check_interval=1,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[probe],
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)
    assert probe.train and all(active and ps == {0.2} for active, ps in probe.train), probe.train
    assert probe.val and not any(probe.val), "validation runs in eval mode"


def test_a_tokenizer_other_than_the_models_own_is_refused_unless_asked_for(tmp_path, pretrained_dir):
    # A config's tokenizer left beside a user's own model: other token ids, silently wrong before.
    from lit_rlhf.models import train_tokenizer

    other = tmp_path / "other_tokenizer"
    train_tokenizer([r["prompt"] for r in reverse_records(200)] * 2, vocab_size=300).save_pretrained(other)
    module = SFTModule(model_name_or_path=str(pretrained_dir), tokenizer_name_or_path=str(other))
    with pytest.raises(ValueError) as err:
        module.configure_model()
    message = str(err.value)
    assert (
        "is not the tokenizer of --model.model_name_or_path" in message and "--model.allow_other_tokenizer" in message
    )
    assert "(300 tokens)" in message or "tokens)" in message
    own = len(SFTModule(model_name_or_path=str(pretrained_dir)).load_model_and_tokenizer("causal_lm", False)
              .get_input_embeddings().weight)  # fmt: skip
    assert f"({own} tokens)" in message, "both vocabulary sizes are named"
    # asked for explicitly: allowed; the model's own tokenizer named explicitly: fine too
    SFTModule(model_name_or_path=str(pretrained_dir), tokenizer_name_or_path=str(other),
              allow_other_tokenizer=True).configure_model()  # fmt: skip
    SFTModule(model_name_or_path=str(pretrained_dir), tokenizer_name_or_path=str(pretrained_dir)).configure_model()


def test_a_scratch_models_shape_left_beside_a_pretrained_model_is_named(pretrained_dir):
    # configs/sft/tiny.yaml sizes its scratch model; with --model.model_name_or_path=DIR those sizes would not fit
    module = SFTModule(model_name_or_path=str(pretrained_dir), model_config={"n_layer": 4, "n_embd": 128})
    with pytest.raises(
        ValueError, match=r"n_layer=4 \(the model has 2\), n_embd=128 \(the model has 64\).*model_config=null"
    ):
        module.configure_model()
    SFTModule(
        model_name_or_path=str(pretrained_dir), model_config={"resid_pdrop": 0.0}
    ).configure_model()  # not a shape
