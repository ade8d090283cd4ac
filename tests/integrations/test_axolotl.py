"""The axolotl plugin's config checks and optimizer wiring, without axolotl installed.

The end-to-end runs of the real ``axolotl train`` CLI are in test_axolotl_e2e.py.
"""

import dataclasses
import subprocess
import sys

import pytest
import torch

from hft_plugins import HFTConfig, HFTError, HFTOptimizer, apply_hft, get_hft_config
from hft_plugins.integrations import axolotl as hft_axolotl
from hft_plugins.integrations.axolotl import HFTArgs, check_config
from hft_plugins.testing import tiny_model


def _one_line_error(cfg: dict) -> str:
    with pytest.raises(HFTError) as info:
        check_config(cfg)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_importing_the_module_does_not_import_axolotl():
    if "axolotl" in sys.modules:
        pytest.skip("axolotl is already imported in this process")
    assert hft_axolotl.HFTArgs is HFTArgs
    assert "axolotl" not in sys.modules


def test_importing_the_adapter_imports_no_pydantic():
    code = (
        "import sys, hft_plugins.integrations.axolotl as a\n"
        "assert 'pydantic' not in sys.modules, 'pydantic imported'\n"
        "assert a.HFTArgs is a.HFTArgs and 'pydantic' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_args_offer_every_hft_config_field():
    fields = {f"hft_{f.name}" for f in dataclasses.fields(HFTConfig)}
    assert set(HFTArgs.model_fields) == fields | {"hft"}


def test_hft_off_or_absent_gives_no_config():
    assert check_config({}) is None
    assert check_config({"hft": False}) is None
    # conflicting options are fine when HFT is off
    assert check_config({"adapter": "lora", "unfrozen_parameters": ["x"]}) is None


def test_yaml_keys_become_the_hft_config():
    cfg = {
        "hft": True,
        "hft_ratio": 0.4,
        "hft_strategy": "layer",
        "hft_seed": 3,
        "hft_stage": 2,
        "hft_train_embeddings": False,
        "hft_train_head": None,  # unset in axolotl's validated config: the default stays
    }
    assert check_config(cfg) == HFTConfig(
        strategy="layer", ratio=0.4, seed=3, stage=2, train_embeddings=False
    )
    assert check_config({"hft": True}) == HFTConfig()


@pytest.mark.parametrize(
    ("cfg", "named"),
    [
        ({"adapter": "lora"}, "adapter: 'lora'"),
        ({"adapter": "qlora"}, "adapter: 'qlora'"),
        ({"unfrozen_parameters": ["^lm_head.weight$"]}, "unfrozen_parameters"),
        ({"lisa_n_layers": 4, "lisa_step_interval": 20}, "lisa_n_layers"),
        ({"lisa_step_interval": 20}, "lisa_step_interval"),
        ({"loraplus_lr_ratio": 16}, "loraplus_lr_ratio"),
        ({"embedding_lr": 1e-5}, "embedding_lr"),
        ({"embedding_lr_scale": 0.5}, "embedding_lr_scale"),
        ({"lr_groups": [{"name": "o", "modules": ["o_proj"], "lr": 1e-5}]}, "lr_groups"),
    ],
)
def test_conflicting_options_are_rejected(cfg, named):
    message = _one_line_error({"hft": True, **cfg})
    assert message.startswith("hft: true cannot be combined with ")
    assert named in message


@pytest.mark.parametrize(
    ("cfg", "named"),
    [
        ({"hft": "yes"}, "hft must be true or false"),
        ({"hft": True, "hft_ration": 0.5}, "'hft_ration'"),
        ({"hft": True, "hft_ratio": 1.5}, "ratio"),
        ({"hft": True, "hft_seed": -1}, "seed"),
        ({"hft": True, "hft_strategy": "nope"}, "'nope'"),
    ],
)
def test_bad_hft_values_are_rejected(cfg, named):
    assert named in _one_line_error(cfg)


def test_hft_config_ignores_lisa_defaults_of_the_validated_config():
    # axolotl's validated config fills lisa_layers_attribute; only check_config (raw YAML) rejects it
    assert get_hft_config({"hft": True, "lisa_layers_attribute": "model.layers"}) == HFTConfig(
        stage=None
    )


def _trainer(tmp_path, **args):
    from transformers import Trainer, TrainingArguments

    model = tiny_model("llama")
    training_args = TrainingArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no", **args
    )
    return Trainer(model=model, args=training_args)


def test_factory_builds_hft_optimizer_with_the_trainers_hyperparameters(tmp_path):
    trainer = _trainer(
        tmp_path, learning_rate=3e-4, weight_decay=0.1, adam_beta1=0.8, adam_epsilon=1e-6
    )
    mask = apply_hft(trainer.model, HFTConfig(seed=1))
    trainer.optimizer_cls_and_kwargs = hft_axolotl.optimizer_cls_and_kwargs(trainer, mask)
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, HFTOptimizer)
    assert optimizer.mask is mask
    assert isinstance(optimizer.inner, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    assert (decay["lr"], decay["betas"], decay["eps"]) == (3e-4, (0.8, 0.999), 1e-6)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    stepped = sum(t.numel() for g in optimizer.param_groups for t in g["params"])
    assert stepped == mask.trainable_numel


def test_axolotl_factory_call_with_training_args_also_works(tmp_path):
    trainer = _trainer(tmp_path)
    mask = apply_hft(trainer.model)
    factory, kwargs = hft_axolotl.optimizer_cls_and_kwargs(trainer, mask)
    optimizer = factory()(trainer.model, trainer.args, **kwargs)  # axolotl's call signature
    assert isinstance(optimizer, HFTOptimizer)


def test_factory_logs_the_wrapped_class_with_its_module(tmp_path, caplog):
    trainer = _trainer(tmp_path)
    mask = apply_hft(trainer.model)
    factory, kwargs = hft_axolotl.optimizer_cls_and_kwargs(trainer, mask)
    bnb_adamw = type("AdamW", (torch.optim.AdamW,), {"__module__": "bitsandbytes.optim.adamw"})
    with caplog.at_level("INFO", logger="axolotl.hft_plugins"):
        factory()(trainer.model, **{**kwargs, "optimizer_cls": bnb_adamw})
    assert "HFT: training with HFTOptimizer(bitsandbytes.optim.adamw.AdamW, HFTMask(" in caplog.text


def test_an_optimizer_factory_cannot_be_wrapped(tmp_path):
    trainer = _trainer(tmp_path)
    mask = apply_hft(trainer.model)
    trainer.optimizer_cls_and_kwargs = (lambda: None, {"lr": 1e-3})  # e.g. axolotl's Muon factory
    with pytest.raises(HFTError, match="HFT wraps torch optimizer classes") as info:
        hft_axolotl.optimizer_cls_and_kwargs(trainer, mask)
    assert "\n" not in str(info.value)
