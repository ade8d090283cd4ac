"""Data flows once: each entry point draws a stage's mask once and hands that HFTMask on, and
``stage_begin`` / ``stage_end`` fire exactly once per stage.

The draws are counted by wrapping the strategy lookup inside ``hft_plugins.core.mask.select``
(every draw goes through it, whichever module imported ``select``); the hooks by a
recorder plugin on the registry. Both land in one list, so each test asserts the exact
sequence of (event, stage).
"""

import importlib
import sys
import types

import pytest
import torch
from transformers import Trainer, TrainingArguments
from trl import DPOConfig, SFTConfig

from hft_plugins import HFTConfig, HFTOptimizer, hookimpl, registry, select
from hft_plugins.core import catalog
from hft_plugins.core.mask import HFTMask
from hft_plugins.integrations import axolotl as hft_axolotl
from hft_plugins.integrations.peft_style import get_hft_model
from hft_plugins.integrations.transformers import HFTCallback, HFTTrainer
from hft_plugins.integrations.trl import HFTDPOTrainer, HFTSFTTrainer
from hft_plugins.testing import tiny_model, tiny_tokenizer
from tests.helpers import (
    CPU_NO_CHECKPOINTING,
    assert_half_trained,
    dpo_data,
    lm_dataset,
    sft_data,
    snapshot,
)

DRAW, BEGIN, END = "draw", "stage_begin", "stage_end"


def assert_frozen_half_kept(before, model, mask) -> None:
    """Every tensor outside the mask's trained set is bit-identical after training."""
    trained = set(mask.params())
    after = dict(model.named_parameters())
    frozen = [n for n in before if n not in trained]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)


class Recorder:
    def __init__(self, events):
        self.events = events

    @hookimpl
    def stage_begin(self, model, mask, stage):
        self.events.append((BEGIN, stage))

    @hookimpl
    def stage_end(self, model, mask, stage):
        self.events.append((END, stage))


@pytest.fixture
def events(monkeypatch, fresh_registry):
    """(event, stage) in order: every mask drawn, every stage_begin and stage_end."""
    seen = []
    original = catalog.strategy

    def counting(name):
        strategy = original(name)

        def draw(partition, config, rng):
            seen.append((DRAW, config.stage))
            return strategy(partition, config, rng)

        return draw

    monkeypatch.setattr(catalog, "strategy", counting)
    registry.manager().register(Recorder(seen))
    return seen


def one_stage(stage):
    return [(DRAW, stage), (BEGIN, stage), (END, stage)]


def redrawn(*stages):
    """Stages redrawn inside one run: the next mask is drawn before the stage it ends."""
    out = [(DRAW, stages[0]), (BEGIN, stages[0])]
    for last, stage in zip(stages, stages[1:], strict=False):
        out += [(DRAW, stage), (END, last), (BEGIN, stage)]
    return out + [(END, stages[-1])]


def _args(tmp_path, **kw):
    return TrainingArguments(
        output_dir=str(tmp_path), **{**CPU_NO_CHECKPOINTING, "max_steps": 2, **kw}
    )


def _step(model, opt):
    batch = torch.randint(7, 90, (2, 8))
    model(input_ids=batch, labels=batch).loss.backward()
    opt.step()
    opt.zero_grad()


# ---- the optimizer ----------------------------------------------------------------


def test_plain_optimizer_loop_with_a_redraw(events):
    model = tiny_model("llama")
    opt = HFTOptimizer(model, select(model, HFTConfig()), torch.optim.AdamW, lr=1e-3)
    _step(model, opt)
    opt.redraw(select(model, HFTConfig(stage=1)))
    _step(model, opt)
    opt.end_stage()
    opt.end_stage()  # a stage ends once
    assert events == redrawn(0, 1)
    opt.redraw(select(model, HFTConfig(stage=2)))  # the ended stage does not end again
    opt.end_stage()
    assert events == redrawn(0, 1) + one_stage(2)


def test_an_optimizer_build_works_out_the_masks_params_once(monkeypatch):
    model = tiny_model("phi3")  # fused projections: sliced backward and gradient hooks too
    mask = select(model, HFTConfig())
    calls = []
    original = HFTMask._work_out_params

    def counted(self):
        calls.append(self)
        return original(self)

    monkeypatch.setattr(HFTMask, "_work_out_params", counted)
    opt = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-3)
    assert calls == [mask]
    _step(model, opt)
    mask.apply(model)
    HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-3)  # a rebuild on the same mask
    assert calls == [mask]
    assert mask.params() is not mask.params()  # each caller gets its own dict


# ---- the trainers ------------------------------------------------------------------


def test_hf_trainer_draws_once_and_ends_its_stage(events, tmp_path):
    trainer = HFTTrainer(
        model=tiny_model(), args=_args(tmp_path), train_dataset=lm_dataset(), hft_config=HFTConfig()
    )
    assert events == [(DRAW, 0)]
    before = snapshot(trainer.model)
    trainer.train()
    assert events == one_stage(0)
    assert trainer.hft_optimizer.mask is trainer._hft_mask  # the one HFTMask, handed on
    assert_frozen_half_kept(before, trainer.model, trainer._hft_mask)
    trainer.next_stage()
    trainer.train()
    assert events == one_stage(0) + one_stage(1)
    trainer.train()  # training again on stage 1: it begins and ends again, in pairs
    assert events == one_stage(0) + one_stage(1) + [(BEGIN, 1), (END, 1)]


def test_hf_trainer_with_epoch_redraws(events, tmp_path):
    trainer = HFTTrainer(
        model=tiny_model(),
        args=_args(tmp_path, max_steps=-1, num_train_epochs=3),
        train_dataset=lm_dataset(),
        hft_config=HFTConfig(),
        callbacks=[HFTCallback(redraw_every_epoch=True)],
    )
    trainer.train()
    assert events == redrawn(0, 1, 2)


def test_sft_then_dpo(events, tmp_path):
    sft = HFTSFTTrainer(
        model=tiny_model(),
        args=SFTConfig(
            output_dir=str(tmp_path / "sft"), **{**CPU_NO_CHECKPOINTING, "max_steps": 2}
        ),
        train_dataset=sft_data(),
        processing_class=tiny_tokenizer(),
        hft_config=HFTConfig(),
    )
    sft.train()
    assert events == one_stage(0)
    dpo = HFTDPOTrainer(
        model=sft.model,
        args=DPOConfig(
            output_dir=str(tmp_path / "dpo"), **{**CPU_NO_CHECKPOINTING, "max_steps": 2}
        ),
        train_dataset=dpo_data(),
        processing_class=tiny_tokenizer(),
        hft_config=HFTConfig(stage=None),  # the stage rule: 1
    )
    assert dpo._hft_reference is not None  # the reference shares the frozen half...
    assert events == one_stage(0) + [(DRAW, 1)]  # ...of the one draw
    before = snapshot(dpo.model)
    dpo.train()
    assert events == one_stage(0) + one_stage(1)
    assert dpo.hft_optimizer.mask is dpo._hft_mask
    assert_frozen_half_kept(before, dpo.model, dpo._hft_mask)


def test_dpo_alone_draws_once(events, tmp_path):
    dpo = HFTDPOTrainer(
        model=tiny_model(),
        args=DPOConfig(output_dir=str(tmp_path), **{**CPU_NO_CHECKPOINTING, "max_steps": 2}),
        train_dataset=dpo_data(),
        processing_class=tiny_tokenizer(),
        hft_config=HFTConfig(stage=1),
    )
    before = snapshot(dpo.model)
    dpo.train()
    assert events == one_stage(1)
    assert_frozen_half_kept(before, dpo.model, dpo._hft_mask)


def test_peft_style_model_draws_once(events, tmp_path):
    model = get_hft_model(tiny_model(), HFTConfig())
    assert events == [(DRAW, 0)]
    trainer = HFTTrainer(model=model, args=_args(tmp_path), train_dataset=lm_dataset())
    before = snapshot(model.base_model)
    trainer.train()
    assert events == one_stage(0)
    assert trainer.hft_optimizer.mask is model.hft_mask
    assert_half_trained(model.hft_mask, before, model.base_model)


def test_peft_style_model_with_its_own_optimizer(events):
    model = get_hft_model(tiny_model(), HFTConfig(stage=2))
    opt = HFTOptimizer(model.base_model, model.hft_mask, torch.optim.AdamW, lr=1e-3)
    _step(model, opt)
    opt.end_stage()
    assert events == one_stage(2)


# ---- axolotl's plugin, in process --------------------------------------------------


class _Cfg(dict):
    """axolotl's DictDefault as far as the plugin reads it: keys, and attributes (None if unset)."""

    def __getattr__(self, name):
        return self.get(name)


PLUGIN_MODULE = "hft_plugins.integrations.axolotl.plugin"


@pytest.fixture
def plugin_class(monkeypatch):
    """HFTPlugin on axolotl's BasePlugin, or, without axolotl, on a stand-in for it."""
    try:
        import axolotl.integrations.base  # noqa: F401
    except ImportError:
        base = types.ModuleType("axolotl.integrations.base")
        base.BasePlugin = type("BasePlugin", (), {})
        for name in ("axolotl", "axolotl.integrations"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        monkeypatch.setitem(sys.modules, "axolotl.integrations.base", base)
        # the plugin module imported on the stand-in is dropped again afterwards
        monkeypatch.setitem(sys.modules, PLUGIN_MODULE, None)
        monkeypatch.delitem(sys.modules, PLUGIN_MODULE)
    return importlib.import_module(PLUGIN_MODULE).HFTPlugin


def test_axolotl_plugin_draws_once_and_ends_its_stage(events, plugin_class, tmp_path):
    cfg = _Cfg(hft=True, base_model="tiny")
    plugin = plugin_class()
    plugin.register(cfg)  # the stage rule, on the raw YAML: no draw
    assert events == []
    policy, reference = tiny_model(), tiny_model()
    plugin.post_model_load(cfg, policy)
    plugin.post_model_load(cfg, reference)  # the reference: untouched, no draw
    assert events == [(DRAW, 0)]
    trainer = Trainer(model=policy, args=_args(tmp_path), train_dataset=lm_dataset())
    plugin.post_trainer_create(cfg, trainer)
    trainer.train()
    assert events == one_stage(0)
    assert trainer.optimizer.optimizer.mask is plugin.mask
    assert all(p.requires_grad for p in reference.parameters())


# ---- one optimizer-wrapping path -----------------------------------------------------


def _groups(optimizer):
    """Per group: its tensors' keys and its hyperparameters."""
    return [
        {k: (list(v) if k == "names" else v) for k, v in g.items() if k != "params"}
        for g in optimizer.param_groups
    ]


@pytest.mark.parametrize(
    "given", [None, (torch.optim.AdamW, {"lr": 3e-3, "weight_decay": 0.5, "eps": 1e-7})]
)
def test_the_trainer_and_axolotl_wrap_the_optimizer_alike(tmp_path, given):
    """HFTTrainer and the Axolotl factory build their HFTOptimizer through one function: the
    same groups, with the TrainingArguments' weight decay on the decay group, as the plain
    Trainer's own groups have it (a ``weight_decay`` in the kwargs does not win)."""
    config = HFTConfig(seed=4)
    args = _args(tmp_path, weight_decay=0.1, learning_rate=2e-3, adam_beta1=0.8)
    extra = {"optimizer_cls_and_kwargs": given} if given else {}

    ours = HFTTrainer(model=tiny_model("phi3"), args=args, hft_config=config, **extra)
    hf_optimizer = ours.create_optimizer()

    plain = Trainer(model=tiny_model("phi3"), args=args, **extra)
    mask = select(plain.model, config)
    mask.apply(plain.model)
    plain.optimizer_cls_and_kwargs = hft_axolotl.optimizer_cls_and_kwargs(plain, mask)
    axolotl_optimizer = plain.create_optimizer()

    assert type(hf_optimizer.inner) is type(axolotl_optimizer.inner)
    assert _groups(hf_optimizer) == _groups(axolotl_optimizer)
    decay, no_decay = _groups(hf_optimizer)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)

    # the plain Trainer, over all of the model: the same decay per parameter
    model = tiny_model("phi3")
    reference = Trainer(model=model, args=args, **extra).create_optimizer()
    name_of = {id(p): n for n, p in model.named_parameters()}
    plain_decay = {
        name_of[id(p)]: g["weight_decay"] for g in reference.param_groups for p in g["params"]
    }
    for group in hf_optimizer.param_groups:
        for key in group["names"]:
            assert group["weight_decay"] == plain_decay[hf_optimizer._entry_of[key].name], key
