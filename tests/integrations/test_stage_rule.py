"""The stage rule, one for every entry point: a stage not given follows the model's previous HFT
stage (recorded on the model object, else hft_mask.json beside its weights); a model without one
starts at 0 in SFT and the plain Trainer, and every other trainer needs the stage given.

SFT -> DPO through TRL in Python here; through the TRL script in test_examples.py; through
Axolotl's config here (check_config) and for real in test_axolotl_e2e.py."""

import pytest
from datasets import Dataset
from transformers import TrainingArguments
from trl import DPOConfig, SFTConfig

from hft_plugins import HFTConfig, HFTError, HFTMask, get_hft_config, select
from hft_plugins.core.stage import decide_stage
from hft_plugins.integrations.axolotl import check_config
from hft_plugins.integrations.models import previous_stage
from hft_plugins.integrations.transformers import HFTTrainer
from hft_plugins.integrations.trl import (
    HFTDPOConfig,
    HFTDPOTrainer,
    HFTGRPOTrainer,
    HFTSFTTrainer,
)
from hft_plugins.testing import tiny_model, tiny_tokenizer
from tests.helpers import (
    TWO_STEPS,
    assert_half_trained,
    dpo_data,
    hub_snapshot,
    lm_dataset,
    sft_data,
    snapshot,
)


def trained_sft(tmp_path, model=None):
    sft = HFTSFTTrainer(
        model=model if model is not None else tiny_model(),
        args=SFTConfig(output_dir=str(tmp_path / "sft"), **TWO_STEPS),
        train_dataset=sft_data(),
        processing_class=tiny_tokenizer(),
        hft_config=HFTConfig(),
    )
    sft.train()
    return sft


def dpo(tmp_path, model, args_cls=DPOConfig, hft=None, **kw):
    return HFTDPOTrainer(
        model=model,
        args=args_cls(output_dir=str(tmp_path / "dpo"), **TWO_STEPS, **(hft or {})),
        train_dataset=dpo_data(3),
        processing_class=tiny_tokenizer(),
        **kw,
    )


def saved_tuned_model(path, stage=0, seed=0):
    """A model directory as an HFT run leaves it: weights and hft_mask.json."""
    model = tiny_model()
    model.save_pretrained(path)
    select(model, HFTConfig(stage=stage, seed=seed)).save(path / "hft_mask.json")
    return path


# ---- TRL in Python: SFT then DPO on the same model object ---------------------------------


def test_sft_then_dpo_in_python_follows_on(tmp_path):
    model = tiny_model()
    before_sft = snapshot(model)
    sft = trained_sft(tmp_path, model)
    assert_half_trained(sft.hft_mask, before_sft, model)
    assert previous_stage(sft.model).mask == sft.hft_mask  # train() recorded it
    after_dpo = dpo(tmp_path, sft.model, hft_config=HFTConfig(stage=None))
    assert sft.hft_mask.config.stage == 0 and after_dpo.hft_config.stage == 1
    assert after_dpo.hft_mask.trainable != sft.hft_mask.trainable
    before_dpo = snapshot(model)
    after_dpo.train()
    assert_half_trained(after_dpo.hft_mask, before_dpo, model)  # DPO's frozen half exact
    assert previous_stage(sft.model).mask.config.stage == 1


def test_sft_then_dpo_from_hft_arguments_follows_on(tmp_path):
    """The TRL-arguments path in Python: HFTDPOConfig(hft=True), no stage."""
    sft = trained_sft(tmp_path)
    trainer = dpo(tmp_path, sft.model, args_cls=HFTDPOConfig, hft={"hft": True})
    assert trainer.hft_config == HFTConfig(stage=1)
    same = dpo(
        tmp_path,
        sft.model,
        args_cls=HFTDPOConfig,
        hft={"hft": True},
        hft_config=get_hft_config(HFTDPOConfig(output_dir=str(tmp_path), hft=True, **TWO_STEPS)),
    )
    assert same.hft_config == HFTConfig(stage=1)


def test_an_explicit_stage_that_redraws_the_previous_half_is_refused(tmp_path):
    sft = trained_sft(tmp_path)
    with pytest.raises(HFTError, match=r"HFT stage 0 \(seed 0\) is the stage this model") as err:
        dpo(tmp_path, sft.model, hft_config=HFTConfig())
    message = str(err.value)
    assert "\n" not in message and "pass HFTConfig(stage=1)" in message
    assert dpo(tmp_path, sft.model, hft_config=HFTConfig(stage=1)).hft_config.stage == 1
    assert dpo(tmp_path, sft.model, hft_config=HFTConfig(seed=1)).hft_config.seed == 1


def test_dpo_on_a_model_without_a_previous_stage_needs_the_stage(tmp_path):
    with pytest.raises(HFTError, match="HFTDPOTrainer needs the HFT stage given") as err:
        dpo(tmp_path, tiny_model(), hft_config=HFTConfig(stage=None))
    assert "pass HFTConfig(stage=1)" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(HFTError, match="pass --hft_stage 1"):
        dpo(tmp_path, tiny_model(), args_cls=HFTDPOConfig, hft={"hft": True})
    # given: fine
    assert dpo(tmp_path, tiny_model(), hft_config=HFTConfig(stage=2)).hft_config.stage == 2


def test_other_trainers_need_the_stage_too(tmp_path):
    from trl import GRPOConfig

    with pytest.raises(HFTError, match="HFTGRPOTrainer needs the HFT stage given"):
        HFTGRPOTrainer(
            model=tiny_model(),
            reward_funcs=lambda completions, **kw: [0.0] * len(completions),
            args=GRPOConfig(output_dir=str(tmp_path), num_generations=2, **TWO_STEPS),
            train_dataset=Dataset.from_list([{"prompt": "hi"}]),
            processing_class=tiny_tokenizer(),
            hft_config=HFTConfig(stage=None),
        )


def test_sft_and_the_plain_trainer_start_at_stage_0(tmp_path):
    sft = HFTSFTTrainer(
        model=tiny_model(),
        args=SFTConfig(output_dir=str(tmp_path), **TWO_STEPS),
        train_dataset=sft_data(),
        processing_class=tiny_tokenizer(),
        hft_config=HFTConfig(stage=None),
    )
    assert sft.hft_config == HFTConfig()
    args = TrainingArguments(output_dir=str(tmp_path), **TWO_STEPS)
    plain = HFTTrainer(
        model=tiny_model(), args=args, train_dataset=lm_dataset(), hft_config=HFTConfig(stage=None)
    )
    assert plain.hft_config == HFTConfig()
    before = snapshot(plain.model)
    plain.train()
    assert_half_trained(plain.hft_mask, before, plain.model)
    again = HFTTrainer(
        model=plain.model, args=args, train_dataset=lm_dataset(), hft_config=HFTConfig(stage=None)
    )
    assert again.hft_config == HFTConfig(stage=1)


def test_a_constructed_but_untrained_trainer_records_nothing(tmp_path):
    """Re-running a notebook cell that builds a trainer must not move the stage on."""
    model = tiny_model()
    for _ in range(2):
        trainer = HFTSFTTrainer(
            model=model,
            args=SFTConfig(output_dir=str(tmp_path), **TWO_STEPS),
            train_dataset=sft_data(),
            processing_class=tiny_tokenizer(),
            hft_config=HFTConfig(),
        )
        assert trainer.hft_config.stage == 0
    assert previous_stage(model) is None


# ---- from a saved directory: hft_mask.json beside the weights ---------------------------


def test_dpo_from_a_saved_hft_model_directory_follows_on(tmp_path):
    model_dir = saved_tuned_model(tmp_path / "sft-out", stage=2)
    trainer = dpo(tmp_path, str(model_dir), args_cls=HFTDPOConfig, hft={"hft": True})
    assert trainer.hft_config == HFTConfig(stage=3)
    # a model object loaded from there knows its directory too
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(model_dir)
    assert dpo(tmp_path, loaded, hft_config=HFTConfig(stage=None)).hft_config.stage == 3
    sft = HFTSFTTrainer(
        model=str(model_dir),
        args=SFTConfig(output_dir=str(tmp_path / "sft2"), **TWO_STEPS),
        train_dataset=sft_data(),
        processing_class=tiny_tokenizer(),
        hft_config=HFTConfig(stage=None),
    )
    assert sft.hft_config.stage == 3  # SFT on a tuned model follows on as well


def test_the_stage_rule_reads_the_directory_of_a_path(tmp_path):
    model_dir = saved_tuned_model(tmp_path / "m", stage=0, seed=4)
    found = previous_stage(str(model_dir))
    assert found.mask == HFTMask.load(model_dir / "hft_mask.json")
    config = decide_stage(
        HFTConfig(stage=None, seed=4), found, trainer="X", first_stage=False, how="{n}"
    )
    assert config.stage == 1
    assert previous_stage(str(tmp_path / "nowhere")) is None


def test_the_previous_stage_of_a_hub_model_is_read_from_its_repo(tmp_path):
    """hft_mask.json beside a Hub model's weights (from the cache, offline) counts as well."""
    from hft_plugins.integrations import models

    hub_snapshot("hft-tests/stage-2", saved_tuned_model(tmp_path / "out", stage=2))
    assert previous_stage("hft-tests/stage-2").mask.config.stage == 2
    assert (
        dpo(tmp_path, "hft-tests/stage-2", hft_config=HFTConfig(stage=None)).hft_config.stage == 3
    )
    loaded = models.load_model("hft-tests/stage-2")
    assert dpo(tmp_path, loaded, hft_config=HFTConfig(stage=None)).hft_config.stage == 3
    cfg = {"hft": True, "rl": "dpo", "base_model": "hft-tests/stage-2"}
    assert check_config(cfg) == HFTConfig(stage=3)
    assert previous_stage("hft-tests/not-cached") is None


# ---- Axolotl: the same rule on the YAML, before anything loads ---------------------------


def test_axolotl_dpo_follows_the_sft_output(tmp_path):
    sft_out = saved_tuned_model(tmp_path / "sft", stage=0)
    cfg = {"hft": True, "rl": "dpo", "base_model": str(sft_out)}
    assert check_config(cfg) == HFTConfig(stage=1)
    assert check_config({**cfg, "hft_stage": 4}) == HFTConfig(stage=4)


def test_axolotl_dpo_on_a_fresh_model_needs_hft_stage(tmp_path):
    tiny_model().save_pretrained(tmp_path / "base")
    cfg = {"hft": True, "rl": "dpo", "base_model": str(tmp_path / "base")}
    with pytest.raises(HFTError, match="axolotl rl: dpo needs the HFT stage given") as err:
        check_config(cfg)
    assert "set hft_stage: 1" in str(err.value) and "\n" not in str(err.value)
    assert check_config({**cfg, "hft_stage": 1}) == HFTConfig(stage=1)
    with pytest.raises(HFTError, match="axolotl reward_model: true needs"):
        check_config({"hft": True, "reward_model": True, "base_model": str(tmp_path / "base")})


def test_axolotl_sft_starts_at_0_or_follows_on(tmp_path):
    tiny_model().save_pretrained(tmp_path / "base")
    assert check_config({"hft": True, "base_model": str(tmp_path / "base")}) == HFTConfig()
    tuned = saved_tuned_model(tmp_path / "tuned", stage=1)
    assert check_config({"hft": True, "base_model": str(tuned)}) == HFTConfig(stage=2)
    with pytest.raises(HFTError, match="set hft_stage: 2, or leave the stage out"):
        check_config({"hft": True, "base_model": str(tuned), "hft_stage": 1})
