"""HFTSFTTrainer / HFTDPOTrainer on the real TRL trainers, on CPU with a tiny llama."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl import DPOConfig, SFTConfig, TrlParser

from hft_plugins import HFTConfig, HFTError, HFTOptimizer, get_hft_config, select
from hft_plugins.integrations.peft_style import get_hft_model
from hft_plugins.integrations.trl import (
    HFTDPOConfig,
    HFTDPOTrainer,
    HFTSFTConfig,
    HFTSFTTrainer,
    shared_reference,
)
from hft_plugins.testing import tiny_model, tiny_tokenizer
from tests.helpers import CPU_NO_CHECKPOINTING, assert_half_trained, dpo_data, sft_data, snapshot


def sft_trainer(tmp_path, model=None, **kw):
    return HFTSFTTrainer(
        model=model if model is not None else tiny_model(),
        args=SFTConfig(output_dir=str(tmp_path), max_steps=3, **CPU_NO_CHECKPOINTING),
        train_dataset=sft_data(),
        processing_class=tiny_tokenizer(),
        **kw,
    )


def dpo_trainer(tmp_path, model, steps=3, args_cls=DPOConfig, **kw):
    return HFTDPOTrainer(
        model=model,
        args=args_cls(output_dir=str(tmp_path), max_steps=steps, **CPU_NO_CHECKPOINTING),
        train_dataset=dpo_data(),
        processing_class=tiny_tokenizer(),
        **kw,
    )


def test_sft_trains_only_the_half(tmp_path):
    model = tiny_model()
    before = snapshot(model)
    trainer = sft_trainer(tmp_path, model, hft_config=HFTConfig(seed=1))
    trainer.train()
    assert trainer.hft_mask == select(model, HFTConfig(seed=1))
    assert_half_trained(trainer.hft_mask, before, model)
    assert "hft_trainable_fraction" in trainer.state.log_history[0]


def test_sft_from_a_model_path(tmp_path):
    tiny_model().save_pretrained(tmp_path / "model")
    trainer = sft_trainer(tmp_path / "out", model=str(tmp_path / "model"), hft_config=HFTConfig())
    before = snapshot(trainer.model)
    trainer.train()
    assert_half_trained(trainer.hft_mask, before, trainer.model)


def test_sft_config_flag_turns_hft_on_and_off(tmp_path):
    parse = TrlParser((HFTSFTConfig,)).parse_args_and_config
    common = ["--output_dir", str(tmp_path), "--use_cpu", "--bf16", "false"]
    (on,) = parse([*common, "--hft", "--hft_ratio", "0.25", "--hft_seed", "4"])
    assert get_hft_config(on) == HFTConfig(ratio=0.25, seed=4, stage=None)  # stage: the rule
    (off,) = parse(common)
    assert get_hft_config(off) is None
    model = tiny_model()
    trainer = HFTSFTTrainer(
        model=model,
        args=HFTSFTConfig(output_dir=str(tmp_path), max_steps=1, **CPU_NO_CHECKPOINTING),
        train_dataset=sft_data(),
        processing_class=tiny_tokenizer(),
    )
    assert trainer.hft_config is None and all(p.requires_grad for p in model.parameters())
    (dpo,) = TrlParser((HFTDPOConfig,)).parse_args_and_config([*common, "--hft"])
    assert get_hft_config(dpo) == HFTConfig(stage=None)  # DPO has no default stage


def test_bad_hft_field_fails_at_parse_time(tmp_path):
    with pytest.raises(HFTError, match="ratio must be in"):
        HFTSFTConfig(output_dir=str(tmp_path), hft=True, hft_ratio=1.5, **CPU_NO_CHECKPOINTING)


def test_dpo_trains_only_the_half_with_a_shared_reference(tmp_path):
    model = tiny_model()  # built in code: config._name_or_path is empty
    before = snapshot(model)
    trainer = dpo_trainer(tmp_path, model, hft_config=HFTConfig(stage=1))
    trainer.train()
    assert_half_trained(trainer.hft_mask, before, model)
    ref = trainer._hft_reference
    for name, param in ref.named_parameters():  # the reference is still the starting model
        assert torch.equal(param, before[name]), name


def _losses(trainer):
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def test_shared_reference_gives_the_deep_copy_losses(tmp_path):
    config = HFTConfig(stage=1)
    shared = dpo_trainer(tmp_path / "a", tiny_model(), hft_config=config)
    shared.train()
    full_policy = tiny_model()
    full = dpo_trainer(
        tmp_path / "b", full_policy, ref_model=copy.deepcopy(full_policy), hft_config=config
    )
    full.train()
    assert len(_losses(shared)) == 3
    assert _losses(shared) == _losses(full)
    for (n, a), (_, b) in zip(
        shared.model.named_parameters(), full.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), n


def _storage_bytes(*modules):
    seen = {}
    for module in modules:
        for p in module.parameters():
            seen[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_shared_reference_costs_only_the_trainable_bytes(family):
    model = tiny_model(family)
    select(model, HFTConfig()).apply(model)
    ref = shared_reference(model)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < _storage_bytes(model)
    assert _storage_bytes(model, ref) - _storage_bytes(model) == trainable
    assert not any(p.requires_grad for p in ref.parameters())


def test_dpo_from_a_directory(tmp_path):
    tiny_model().save_pretrained(tmp_path / "model")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    before = snapshot(loaded)
    trainer = dpo_trainer(tmp_path / "out", loaded, steps=2, hft_config=HFTConfig())
    trainer.train()
    assert_half_trained(trainer.hft_mask, before, loaded)
    by_path = dpo_trainer(
        tmp_path / "out2", str(tmp_path / "model"), steps=1, hft_config=HFTConfig()
    )
    policy = dict(by_path.model.named_parameters())
    shared = [n for n, p in by_path._hft_reference.named_parameters() if p is policy[n]]
    assert shared and all(not policy[n].requires_grad for n in shared)


def test_redraw_unshares_the_reference(tmp_path):
    model = tiny_model()
    start = snapshot(model)
    trainer = dpo_trainer(tmp_path, model, steps=2, hft_config=HFTConfig(stage=1))
    trainer.train()
    trainer.next_stage()
    trainer.train()
    for name, param in trainer._hft_reference.named_parameters():
        assert torch.equal(param, start[name]), name


def test_dpo_hft_fields(tmp_path):
    model = tiny_model()
    # hft=False: the plain DPOTrainer (given a reference, since this model has no path to reload)
    off = dpo_trainer(
        tmp_path, model, steps=1, args_cls=HFTDPOConfig, ref_model=copy.deepcopy(model)
    )
    assert off.hft_config is None and all(p.requires_grad for p in model.parameters())
    args = HFTDPOConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        hft=True,
        hft_seed=2,
        hft_stage=1,
        **CPU_NO_CHECKPOINTING,
    )
    trainer = HFTDPOTrainer(
        model=tiny_model(), args=args, train_dataset=dpo_data(), processing_class=tiny_tokenizer()
    )
    assert trainer.hft_mask == select(model, HFTConfig(seed=2, stage=1))


def test_wrong_hft_config_type(tmp_path):
    with pytest.raises(HFTError, match="hft_config must be an hft_plugins.HFTConfig, got str"):
        sft_trainer(tmp_path, hft_config="category")
    with pytest.raises(HFTError, match="hft_config must be an hft_plugins.HFTConfig"):
        dpo_trainer(tmp_path, tiny_model(), hft_config=0.5)


def test_hft_with_peft_config_is_refused(tmp_path):
    from peft import LoraConfig

    lora = LoraConfig(r=2, target_modules=["q_proj"])
    with pytest.raises(HFTError, match="HFT cannot be combined with peft_config"):
        sft_trainer(tmp_path, hft_config=HFTConfig(), peft_config=lora)
    with pytest.raises(HFTError, match="HFT cannot be combined with peft_config"):
        dpo_trainer(tmp_path, tiny_model(), hft_config=HFTConfig(), peft_config=lora)


def test_hft_on_a_peft_model_is_refused(tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(HFTError, match="PEFT adapter"):
        dpo_trainer(tmp_path, peft_model, hft_config=HFTConfig())


def test_mismatched_reference_is_refused(tmp_path):
    with pytest.raises(HFTError, match="ref_model does not match the policy: 'model.layers.0"):
        dpo_trainer(
            tmp_path,
            tiny_model(),
            ref_model=tiny_model(intermediate_size=48),
            hft_config=HFTConfig(),
        )


def test_reference_is_unshared_for_the_given_optimizers_mask(tmp_path):
    """optimizers=(HFTOptimizer of stage 1, None) without hft_config: the mask applied is
    the optimizer's, and the reference must not share anything it trains."""
    model = tiny_model()
    start = snapshot(model)
    opt = HFTOptimizer(model, select(model, HFTConfig(stage=1)), torch.optim.AdamW, lr=1e-2)
    trainer = dpo_trainer(tmp_path, model, optimizers=(opt, None))
    reference = {id(p) for p in trainer._hft_reference.parameters()}
    assert not [n for n, p in model.named_parameters() if p.requires_grad and id(p) in reference]
    trainer.train()
    for name, param in trainer._hft_reference.named_parameters():
        assert torch.equal(param, start[name]), name


def test_resume_across_a_redraw_with_a_shared_reference_is_refused(tmp_path):
    """A checkpoint whose mask trained tensors the reference shares would put trained
    weights into the reference when the Trainer loads it."""
    model = tiny_model()
    trainer = dpo_trainer(tmp_path / "run", model, hft_config=HFTConfig(stage=1))
    later = tiny_model()
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    other = HFTOptimizer(later, select(later, HFTConfig(stage=2)), torch.optim.AdamW, lr=1e-2)
    torch.save(other.state_dict(), checkpoint / "optimizer.pt")
    with pytest.raises(HFTError, match=r"cannot resume from .*checkpoint-2: its mask \(stage 2"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


@pytest.mark.parametrize("make", [sft_trainer, dpo_trainer])
def test_an_hft_model_is_refused_by_the_trl_trainers(make, tmp_path):
    """TRL's fused LM-head forward takes model.base_model as the backbone; HFTModel's is not."""
    with pytest.raises(HFTError, match="TRL trainers cannot take an HFTModel"):
        make(tmp_path, get_hft_model(tiny_model()))
