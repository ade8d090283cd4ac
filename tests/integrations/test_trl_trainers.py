"""Every trainer TRL ships, with ``hft_config=``, end to end on CPU on a tiny llama.

All come from one mechanism (``hft_trainer(TrainerClass)``). Each run is 2 steps on a
tiny batch; GRPO and RLOO generate 8 tokens per completion and score them with a reward
function written here. Afterwards the frozen half is bit-identical, every trainable
tensor moved, and where TRL builds a reference model itself (DPO, KTO, GRPO, RLOO) it
shares the frozen half with the policy and is still the starting model.
"""

import pytest
import torch
import trl
from datasets import Dataset

from hft_plugins import HFTConfig
from hft_plugins.integrations import trl as hft_trl
from hft_plugins.testing import tiny_config, tiny_model, tiny_tokenizer
from tests.helpers import TWO_STEPS, assert_half_trained, dpo_data, mark_as_gguf, sft_data, snapshot


def _prompts():
    return Dataset.from_list([{"prompt": p} for p in ["Say yes:", "Count:", "Greet:", "Sky:"]])


def _reward(completions, **kwargs):
    """Differs between completions of one prompt, so the advantages are not all zero."""
    return [float(sum(map(ord, c)) % 7) for c in completions]


def _sft(tmp_path):
    return dict(args=trl.SFTConfig(output_dir=str(tmp_path), **TWO_STEPS), train_dataset=sft_data())


def _dpo(tmp_path):
    return dict(
        args=trl.DPOConfig(output_dir=str(tmp_path), **TWO_STEPS), train_dataset=dpo_data(3)
    )


def _grpo(tmp_path):
    return dict(
        reward_funcs=_reward,
        args=trl.GRPOConfig(
            output_dir=str(tmp_path),
            num_generations=2,
            max_completion_length=8,
            beta=0.1,
            **TWO_STEPS,
        ),
        train_dataset=_prompts(),
    )


def _rloo(tmp_path):
    return dict(
        reward_funcs=_reward,
        args=trl.RLOOConfig(
            output_dir=str(tmp_path), num_generations=2, max_completion_length=8, **TWO_STEPS
        ),
        train_dataset=_prompts(),
    )


def _kto(tmp_path):
    rows = [("Say yes:", " yes", True), ("Say yes:", " no", False)]
    rows += [("Greet:", " hi", True), ("Greet:", " bye", False)]
    return dict(
        args=trl.KTOConfig(output_dir=str(tmp_path), **TWO_STEPS),
        train_dataset=Dataset.from_list(
            [{"prompt": p, "completion": c, "label": ok} for p, c, ok in rows]
        ),
    )


def _reward_model(tmp_path):
    rows = [("Say yes:", " yes", " no"), ("Greet:", " hi", " bye")]
    return dict(
        args=trl.RewardConfig(output_dir=str(tmp_path), **TWO_STEPS),
        train_dataset=Dataset.from_list(
            [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows]
        ),
    )


def _distillation(tmp_path):
    return dict(
        teacher_model=tiny_model(seed=1),
        args=trl.DistillationConfig(output_dir=str(tmp_path), max_completion_length=8, **TWO_STEPS),
        train_dataset=_prompts(),
    )


def _sequence_classifier():
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(0)
    return LlamaForSequenceClassification(tiny_config("llama", num_labels=1))


# name -> (HFT trainer, its TRL base, kwargs maker, builds its own reference?)
TRAINERS = {
    "sft": ("HFTSFTTrainer", "SFTTrainer", _sft, False),
    "dpo": ("HFTDPOTrainer", "DPOTrainer", _dpo, True),
    "grpo": ("HFTGRPOTrainer", "GRPOTrainer", _grpo, True),
    "rloo": ("HFTRLOOTrainer", "RLOOTrainer", _rloo, True),
    "kto": ("HFTKTOTrainer", "KTOTrainer", _kto, True),
    "reward": ("HFTRewardTrainer", "RewardTrainer", _reward_model, False),
    "distillation": ("HFTDistillationTrainer", "DistillationTrainer", _distillation, False),
}


def test_every_trl_trainer_has_an_hft_trainer():
    shipped = {n for n in dir(trl) if n.endswith("Trainer")}  # TRL's top-level trainers
    assert shipped == {base for _, base, _, _ in TRAINERS.values()}
    for name, base, _, _ in TRAINERS.values():
        cls = getattr(hft_trl, name)
        assert issubclass(cls, getattr(trl, base)) and issubclass(cls, hft_trl.HFTTRLMixin)


@pytest.mark.parametrize("kind", list(TRAINERS))
def test_trainer_trains_only_the_half(kind, tmp_path):
    name, _, make, builds_reference = TRAINERS[kind]
    model = _sequence_classifier() if kind == "reward" else tiny_model()
    start = snapshot(model)
    config = HFTConfig(stage=0 if kind == "sft" else 1, seed=2)
    trainer = getattr(hft_trl, name)(
        model=model, processing_class=tiny_tokenizer(), hft_config=config, **make(tmp_path)
    )
    assert trainer.hft_mask.config == config
    trainer.train()
    assert trainer.state.global_step == 2
    assert_half_trained(trainer.hft_mask, start, model)
    reference = trainer._hft_reference
    assert (reference is not None) == builds_reference
    if reference is None:
        return
    assert trainer.ref_model is reference
    policy = dict(model.named_parameters())
    frozen = [n for n, p in policy.items() if not p.requires_grad]
    assert frozen and all(dict(reference.named_parameters())[n] is policy[n] for n in frozen)
    for n, p in reference.named_parameters():  # still the model training started from
        assert torch.equal(p, start[n]), n


@pytest.mark.parametrize("kind", list(TRAINERS))
def test_every_trainer_takes_a_gguf_loaded_model(kind, tmp_path, caplog):
    """transformers marks a GGUF-loaded model quantized although its weights are dequantized
    floats; the Trainer (so every TRL trainer) refuses it. HFT clears the mark, said once."""
    name, _, make, _ = TRAINERS[kind]
    model = mark_as_gguf(_sequence_classifier() if kind == "reward" else tiny_model())
    config = HFTConfig(stage=0 if kind == "sft" else 1)
    with caplog.at_level("WARNING", logger="hft_plugins.integrations.models"):
        trainer = getattr(hft_trl, name)(
            model=model, processing_class=tiny_tokenizer(), hft_config=config, **make(tmp_path)
        )
    said = [r.getMessage() for r in caplog.records if r.name == "hft_plugins.integrations.models"]
    assert said == [
        "HFT: model.Q4_1.gguf was dequantized to torch.float32 on load; training those weights "
        "and saving them as a normal checkpoint"
    ]
    assert trainer.model is model and not model.is_quantized
    assert not hasattr(model.config, "quantization_config")
    assert trainer.hft_mask.config == config
