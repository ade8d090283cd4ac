"""HFT is visible where users look, from every Trainer entry point (HF Trainer, TRL).

At train start one INFO line and the per-block table; ``hft_mask.json`` beside every
saved model and checkpoint; the model card tagged ``hft`` with a section on the half;
the ``mask_applied`` hook once per applied mask; warnings once.
"""

import logging
import warnings

import pytest
from transformers import TrainingArguments
from trl import DPOConfig, SFTConfig

from hft_plugins import HFTConfig, HFTMask, hookimpl, registry
from hft_plugins.integrations.transformers import HFTTrainer
from hft_plugins.integrations.trl import HFTDPOTrainer, HFTSFTTrainer
from hft_plugins.testing import tiny_model, tiny_tokenizer
from tests.helpers import CPU_NO_CHECKPOINTING, dpo_data, lm_dataset, sft_data

LOGGER = "hft_plugins.integrations.transformers"


pytestmark = pytest.mark.usefixtures("fresh_registry")


def hf_trainer(tmp_path, model=None, config=None, **kw):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        **{**CPU_NO_CHECKPOINTING, "max_steps": 2, "save_strategy": "no", **kw},
    )
    return HFTTrainer(
        model=model if model is not None else tiny_model(),
        args=args,
        train_dataset=lm_dataset(),
        processing_class=tiny_tokenizer(),
        hft_config=config or HFTConfig(),
    )


def sft_trainer(tmp_path, model=None, config=None, **kw):
    return HFTSFTTrainer(
        model=model if model is not None else tiny_model(),
        args=SFTConfig(output_dir=str(tmp_path), **{**CPU_NO_CHECKPOINTING, "max_steps": 2, **kw}),
        train_dataset=sft_data(),
        processing_class=tiny_tokenizer(),
        hft_config=config or HFTConfig(),
    )


def dpo_trainer(tmp_path, model=None, config=None, **kw):
    return HFTDPOTrainer(
        model=model if model is not None else tiny_model(),
        args=DPOConfig(output_dir=str(tmp_path), **{**CPU_NO_CHECKPOINTING, "max_steps": 2, **kw}),
        train_dataset=dpo_data(),
        processing_class=tiny_tokenizer(),
        hft_config=config or HFTConfig(stage=1),
    )


TRAINERS = {"hf": hf_trainer, "sft": sft_trainer, "dpo": dpo_trainer}


@pytest.mark.parametrize("kind", ["hf", "sft"])
def test_train_start_logs_one_line_and_the_table(kind, tmp_path, caplog):
    trainer = TRAINERS[kind](tmp_path, config=HFTConfig(seed=3))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        trainer.train()
    ours = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    lines = [m for m in ours if m.startswith("HFT: ")]
    done, total = trainer.hft_mask.fractions()["total"]
    assert lines == [
        f"HFT: strategy=category ratio=0.5 seed=3 stage=0; trainable {done / total:.4f} of all "
        f"parameters ({done:,} of {total:,}); optimizer torch.optim.adamw.AdamW (fused)"
    ]
    assert trainer.hft_mask.summary() in ours


@pytest.mark.parametrize("kind", ["hf", "sft"])
def test_every_save_and_checkpoint_writes_the_mask(kind, tmp_path):
    trainer = TRAINERS[kind](tmp_path / "out", save_strategy="steps", save_steps=1)
    trainer.train()
    trainer.save_model()
    for directory in ("checkpoint-1", "checkpoint-2", "."):
        path = tmp_path / "out" / directory / "hft_mask.json"
        assert HFTMask.load(path) == trainer.hft_mask, directory
    trainer.save_model(str(tmp_path / "elsewhere"))
    assert HFTMask.load(tmp_path / "elsewhere" / "hft_mask.json") == trainer.hft_mask


@pytest.mark.parametrize("kind", ["hf", "sft"])
def test_model_card_has_the_hft_tag_and_section(kind, tmp_path):
    from huggingface_hub import ModelCard

    trainer = TRAINERS[kind](tmp_path, config=HFTConfig(seed=2, ratio=0.4))
    trainer.train()
    trainer.create_model_card(model_name="tiny")
    card = ModelCard.load(tmp_path / "README.md")
    assert "hft" in card.data.tags
    done, total = trainer.hft_mask.fractions()["total"]
    assert "## Half Fine-Tuning (HFT)" in card.text
    assert f"| category | 0.4 | 2 | 0 | {done / total:.4f} " in card.text
    assert "https://arxiv.org/abs/2404.18466" in card.text
    trainer.create_model_card(model_name="tiny")  # again: one section, one tag
    card = ModelCard.load(tmp_path / "README.md")
    assert card.text.count("## Half Fine-Tuning (HFT)") == 1 and card.data.tags.count("hft") == 1


class Recorder:
    def __init__(self):
        self.applied = []

    @hookimpl
    def mask_applied(self, model, mask):
        self.applied.append(mask.config.stage)


@pytest.mark.parametrize("kind", list(TRAINERS))
def test_mask_applied_fires_once_per_applied_mask(kind, tmp_path):
    recorder = Recorder()
    registry.manager().register(recorder)
    trainer = TRAINERS[kind](tmp_path)
    trainer.train()
    stage = trainer.hft_config.stage
    assert recorder.applied == [stage]
    trainer.next_stage()
    trainer.train()
    assert recorder.applied == [stage, stage + 1]


def _caught(action):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return [str(w.message) for w in caught]


@pytest.mark.parametrize("kind", ["hf", "sft"])
def test_an_unmet_ratio_and_a_tied_head_warn_once_per_run(kind, tmp_path):
    model = tiny_model(num_hidden_layers=2, tie_word_embeddings=True)
    config = HFTConfig(strategy="layer", ratio=0.25, train_head=False)

    def run():
        TRAINERS[kind](tmp_path, model=model, config=config).train()

    messages = _caught(run)
    assert len([m for m in messages if "not the requested ratio 0.25" in m]) == 1, messages
    tied = [m for m in messages if "train_head=False does not apply to lm_head.weight" in m]
    assert len(tied) == 1, messages
