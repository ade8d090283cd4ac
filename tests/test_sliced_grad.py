"""Sliced weight gradients for fused projections: same gradients, frozen slices untouched."""

import copy
import io
import os
import pickle

import pytest
import torch

from hft_plugins import HFTConfig, HFTError, HFTOptimizer, select
from hft_plugins.core import sliced_grad
from hft_plugins.testing import tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FUSED_FAMILIES = ("gpt2", "phi3", "gpt_neox")


def _sliced_setup(family):
    """A tiny eval-mode model (no dropout) and the first seed's mask that slices a tensor."""
    model = tiny_model(family).eval()
    for seed in range(20):
        mask = select(model, HFTConfig(seed=seed))
        sliced = {n: s for n, s in mask.params().items() if s is not None}
        if sliced:
            return model, mask, sliced
    raise AssertionError(f"no seed slices a fused tensor of {family}")


def _tokens(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 96, (2, 12), generator=generator)


def _frozen_index(size, ranges):
    keep = torch.ones(size, dtype=torch.bool)
    for a, b in ranges:
        keep[a:b] = False
    return keep.nonzero().flatten()


@pytest.mark.parametrize("family", FUSED_FAMILIES)
def test_trainable_grads_match_full_autograd_and_frozen_slices_are_zero(family):
    model, mask, sliced = _sliced_setup(family)
    reference = copy.deepcopy(model)
    mask.apply(reference)
    ids = _tokens()
    with HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-3):  # the sliced backward's life
        assert sliced_grad.installed(model)
        model(ids, labels=ids).loss.backward()
    reference(ids, labels=ids).loss.backward()

    expected = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        if param.grad is None:
            assert expected[name].grad is None, name
            continue
        slices = sliced.get(name)
        if slices is None:
            torch.testing.assert_close(param.grad, expected[name].grad, rtol=1e-5, atol=1e-6)
            continue
        for a, b in slices.ranges:
            got = param.grad.narrow(slices.dim, a, b - a)
            want = expected[name].grad.narrow(slices.dim, a, b - a)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        frozen = _frozen_index(param.shape[slices.dim], slices.ranges)
        assert torch.count_nonzero(param.grad.index_select(slices.dim, frozen)) == 0, name


@pytest.mark.parametrize("family", FUSED_FAMILIES)
def test_frozen_slices_bit_identical_after_adamw_steps_with_weight_decay(family):
    model, mask, sliced = _sliced_setup(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    for step in range(3):
        ids = _tokens(step)
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()

    plan = mask.params()
    for name, param in model.named_parameters():
        if name not in plan:
            assert torch.equal(param, before[name]), name
        elif name in sliced:
            slices = sliced[name]
            frozen = _frozen_index(param.shape[slices.dim], slices.ranges)
            assert torch.equal(
                param.index_select(slices.dim, frozen),
                before[name].index_select(slices.dim, frozen),
            ), name
            a, b = slices.ranges[0]
            assert not torch.equal(
                param.narrow(slices.dim, a, b - a), before[name].narrow(slices.dim, a, b - a)
            ), name


@pytest.mark.parametrize("family", FUSED_FAMILIES)
def test_training_matches_the_optimizer_without_sliced_grads(family):
    model, mask, _ = _sliced_setup(family)
    plain = copy.deepcopy(model)
    fast_opt = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    plain_opt = HFTOptimizer(
        plain, mask, torch.optim.AdamW, lr=1e-2, weight_decay=0.1, sliced_grad=False
    )
    assert not sliced_grad.installed(plain)
    for step in range(3):
        ids = _tokens(step)
        for m, opt in ((model, fast_opt), (plain, plain_opt)):
            m(ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
    for (name, got), want in zip(model.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)
    assert fast_opt.state_bytes() == plain_opt.state_bytes()


def test_state_dicts_resume_and_pickling_are_unaffected():
    model, mask, _ = _sliced_setup("gpt2")
    keys = list(model.state_dict())
    opt = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-2)
    ids = _tokens()
    model(ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
    assert list(model.state_dict()) == keys

    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert sliced_grad.installed(clone) == sliced_grad.installed(model)
        for name in sliced_grad.installed(clone):
            assert clone.get_submodule(name).forward.args[0] is clone.get_submodule(name)

    resumed = copy.deepcopy(model)
    resumed_opt = HFTOptimizer(resumed, mask, torch.optim.AdamW, lr=1e-2)
    saved = io.BytesIO()
    torch.save(opt.state_dict(), saved)  # as a checkpoint does: no tensors shared
    saved.seek(0)
    resumed_opt.load_state_dict(torch.load(saved, weights_only=True))
    for m, o in ((model, opt), (resumed, resumed_opt)):
        m(ids, labels=ids).loss.backward()
        o.step()
    for got, want in zip(resumed.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_no_grad_forward_is_the_modules_own():
    model, mask, _ = _sliced_setup("phi3")
    reference = copy.deepcopy(model)
    ids = _tokens()
    with HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-3), torch.no_grad():
        assert sliced_grad.installed(model)
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_redraw_moves_the_sliced_backward_to_the_new_mask():
    model, mask, _ = _sliced_setup("gpt2")
    opt = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-3)
    first = sliced_grad.installed(model)
    new = select(model, mask.config.next_stage())
    opt.redraw(new)
    expected = {
        n.removesuffix(".weight"): s.ranges
        for n, s in new.params().items()
        if s is not None and n.endswith(".weight")
    }
    assert sliced_grad.installed(model) == expected != first
    sliced_grad.uninstall(model)
    assert not sliced_grad.installed(model)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_autocast_bf16_gives_fp32_grads_close_to_autograd():
    model, mask, sliced = _sliced_setup("gpt2")
    reference = copy.deepcopy(model)
    mask.apply(reference)
    ids = _tokens()
    with HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-3):
        for m in (model, reference):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                m(ids, labels=ids).loss.backward()
    expected = dict(reference.named_parameters())
    for name, slices in sliced.items():
        grad = dict(model.named_parameters())[name].grad
        assert grad.dtype == torch.float32
        a, b = slices.ranges[0]
        torch.testing.assert_close(
            grad.narrow(slices.dim, a, b - a),
            expected[name].grad.narrow(slices.dim, a, b - a),
            rtol=2e-2,
            atol=2e-3,
        )


def test_sliced_grad_must_be_a_bool():
    model, mask, _ = _sliced_setup("gpt2")
    with pytest.raises(HFTError, match="sliced_grad must be True or False"):
        HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-3, sliced_grad="yes")


def test_a_strided_slice_of_a_linear_trains_through_plain_autograd():
    """The sliced backward handles contiguous output ranges; every other row (a layout may
    interleave two matrices so) falls back to plain autograd and the optimizer's hook."""
    from torch import nn

    from hft_plugins import HFTMask
    from hft_plugins.core.units import Part, Partition, Unit

    model = nn.Sequential(nn.Linear(4, 6))
    units = [
        Unit(
            f"block.0.{name}",
            0,
            "ffn",
            name,
            (Part("0.weight", 0, ((first, 6),), 2), Part("0.bias", 0, ((first, 6),), 2)),
            15,
        )
        for first, name in enumerate(("even", "odd"))
    ]
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    mask = HFTMask(
        HFTConfig(), Partition("interleaved", units, 1, shapes, {}), frozenset({"block.0.even"})
    )
    before = model[0].weight.detach().clone()
    opt = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-2, weight_decay=0.1, fused=True)
    assert not sliced_grad.installed(model)
    for step in range(3):
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
        model(x).pow(2).sum().backward()
        assert torch.count_nonzero(model[0].weight.grad[1::2]) == 0  # the hook zeroed them
        opt.step()
        opt.zero_grad()
    assert torch.equal(model[0].weight[1::2], before[1::2])
    assert not torch.equal(model[0].weight[0::2], before[0::2])
