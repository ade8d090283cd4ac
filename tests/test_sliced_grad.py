"""Sliced weight gradients for fused projections and routed experts: same gradients, frozen
slices untouched."""

import copy
import io
import pickle

import pytest
import torch

from hft_plugins import HFTConfig, HFTError, HFTOptimizer, select
from hft_plugins.core import sliced_grad
from hft_plugins.core.units import range_view
from hft_plugins.testing import tiny_model

# fused projections; routed experts: gate | up concatenated [E, 2F, H] (mixtral), interleaved
# and transposed [E, H, 2F] with biases (gpt_oss)
FUSED_FAMILIES = ("gpt2", "phi3", "gpt_neox", "mixtral", "gpt_oss")


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


def _frozen_index(size, slices):
    keep = torch.ones(size, dtype=torch.bool)
    for a, b in slices.ranges:
        keep[a : b : slices.step] = False
    return keep.nonzero().flatten()


def _trained(tensor, slices):
    """The views of ``tensor`` that ``slices`` trains, one per range."""
    return [range_view(tensor, slices.dim, a, b, slices.step) for a, b in slices.ranges]


@pytest.mark.parametrize("family", FUSED_FAMILIES)
def test_trainable_grads_match_full_autograd_and_frozen_slices_are_zero(family):
    model, mask, sliced = _sliced_setup(family)
    reference = copy.deepcopy(model)
    mask.apply(reference)
    ids = _tokens()
    with HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-3):  # the sliced backward's life
        assert sliced_grad.installed(model)
        loss = model(ids, labels=ids).loss
        loss.backward()
    want_loss = reference(ids, labels=ids).loss
    want_loss.backward()
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=0)

    expected = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        if param.grad is None:
            assert expected[name].grad is None, name
            continue
        slices = sliced.get(name)
        if slices is None:
            torch.testing.assert_close(param.grad, expected[name].grad, rtol=1e-5, atol=1e-6)
            continue
        got, want = _trained(param.grad, slices), _trained(expected[name].grad, slices)
        for got_part, want_part in zip(got, want, strict=True):
            torch.testing.assert_close(got_part, want_part, rtol=1e-5, atol=1e-6)
        frozen = _frozen_index(param.shape[slices.dim], slices)
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
            frozen = _frozen_index(param.shape[slices.dim], slices)
            assert torch.equal(
                param.index_select(slices.dim, frozen),
                before[name].index_select(slices.dim, frozen),
            ), name
            assert not torch.equal(_trained(param, slices)[0], _trained(before[name], slices)[0]), (
                name
            )


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
            module = clone.get_submodule(name.rpartition(".")[0])
            assert module.forward.args[0] is module

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


@pytest.mark.parametrize("family", ["phi3", "mixtral"])
def test_no_grad_forward_is_the_modules_own(family):
    model, mask, _ = _sliced_setup(family)
    reference = copy.deepcopy(model)
    ids = _tokens()
    with HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-3), torch.no_grad():
        assert sliced_grad.installed(model)
        assert torch.equal(model(ids).logits, reference(ids).logits)


@pytest.mark.parametrize("family", ["gpt2", "gpt_oss"])
def test_redraw_moves_the_sliced_backward_to_the_new_mask(family):
    model, mask, _ = _sliced_setup(family)
    opt = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-3)
    first = sliced_grad.installed(model)
    new = select(model, mask.config.next_stage())
    opt.redraw(new)
    # every sliced weight (biases keep the optimizer's hook)
    expected = {n: s for n, s in new.params().items() if s is not None and not n.endswith("bias")}
    assert sliced_grad.installed(model) == expected != first
    sliced_grad.uninstall(model)
    assert not sliced_grad.installed(model)
    assert all("forward" not in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("family", ["gpt2", "mixtral"])
def test_autocast_bf16_gives_fp32_grads_close_to_autograd(family):
    model, mask, sliced = _sliced_setup(family)
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
        torch.testing.assert_close(
            _trained(grad, slices)[0],
            _trained(expected[name].grad, slices)[0],
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


# ---- routed experts, every storage layout ------------------------------------------------

NUM_EXPERTS, INTERMEDIATE, HIDDEN = 4, 8, 16


def _experts(transposed=False, concatenated=True, bias=False, implementation="grouped_mm"):
    """A module of routed experts as transformers' ``use_experts_implementation`` makes them,
    with the given storage; its own (eager) forward is the batched one."""
    from types import SimpleNamespace

    from torch import nn
    from transformers.integrations.moe import (
        batched_mm_experts_forward,
        use_experts_implementation,
    )

    class Experts(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.num_experts = NUM_EXPERTS
            generator = torch.Generator().manual_seed(0)

            def weight(*shape):
                return nn.Parameter(0.3 * torch.randn(NUM_EXPERTS, *shape, generator=generator))

            up_shape = (HIDDEN, 2 * INTERMEDIATE) if transposed else (2 * INTERMEDIATE, HIDDEN)
            down_shape = (INTERMEDIATE, HIDDEN) if transposed else (HIDDEN, INTERMEDIATE)
            self.gate_up_proj, self.down_proj = weight(*up_shape), weight(*down_shape)
            if bias:
                self.gate_up_proj_bias = weight(2 * INTERMEDIATE)
                self.down_proj_bias = weight(HIDDEN)
            self.act_fn = nn.SiLU()

        def _apply_gate(self, gate_up):
            if self.is_concatenated:
                gate, up = gate_up.chunk(2, dim=-1)
            else:
                gate, up = gate_up[..., ::2], gate_up[..., 1::2]
            return self.act_fn(gate) * up

        def forward(self, hidden_states, top_k_index, top_k_weights):
            return batched_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)

    decorate = use_experts_implementation(
        is_transposed=transposed, is_concatenated=concatenated, has_bias=bias
    )
    return decorate(Experts)(SimpleNamespace(_experts_implementation=implementation))


def _experts_mask(module, trained):
    """The mask the role sorter draws for such experts, training ``trained`` (gate or up)
    and, with gate, the down projection."""
    from hft_plugins import HFTMask
    from hft_plugins.core.units import Part, Partition, Unit

    dim = 2 if module.is_transposed else 1
    width = 2 * INTERMEDIATE
    if module.is_concatenated:
        pieces, step = {"gate": ((0, width // 2),), "up": ((width // 2, width),)}, 1
    else:
        pieces, step = {"gate": ((0, width),), "up": ((1, width),)}, 2
    units = []
    for name, ranges in pieces.items():
        parts = [Part("gate_up_proj", dim, ranges, step)]
        if module.has_bias:
            parts.append(Part("gate_up_proj_bias", 1, ranges, step))
        units.append(Unit(name, 0, "ffn", name, tuple(parts), 1))
    down = [Part("down_proj")] + ([Part("down_proj_bias")] if module.has_bias else [])
    units.append(Unit("down", 0, "ffn", "down", tuple(down), 1))
    shapes = {n: tuple(p.shape) for n, p in module.named_parameters()}
    keys = {trained, "down"} if trained == "gate" else {trained}
    return HFTMask(HFTConfig(), Partition("experts", units, 1, shapes, {}), frozenset(keys))


def _routing(requires_grad=True):
    """Hidden states of 7 tokens, each routed to 2 of the experts but never to expert 0."""
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(7, HIDDEN, generator=generator, requires_grad=requires_grad)
    index = torch.stack(
        [torch.randperm(NUM_EXPERTS - 1, generator=generator)[:2] + 1 for _ in range(7)]
    )
    weights = torch.rand(7, 2, generator=generator).requires_grad_(requires_grad)
    return hidden, index, weights


def _run_experts(module, seed=2):
    """Outputs and the gradients of the inputs after a backward of a fixed projection."""
    hidden, index, weights = _routing()
    out = module(hidden, index, weights)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)))
    return out, hidden.grad, weights.grad


LAYOUTS = {
    "concatenated": dict(),
    "concatenated with bias": dict(bias=True),
    "transposed": dict(transposed=True),
    "transposed with bias": dict(transposed=True, bias=True),
    "interleaved transposed with bias (gpt-oss)": dict(
        transposed=True, concatenated=False, bias=True
    ),
    "interleaved": dict(concatenated=False),
}


@pytest.mark.parametrize("gemms", ["per expert", "grouped"])  # CPU's; other devices'
@pytest.mark.parametrize("trained", ["gate", "up"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_experts_give_the_generic_forwards_loss_input_grads_and_trained_weight_grads(
    layout, trained, gemms, monkeypatch
):
    monkeypatch.setattr(sliced_grad, "_per_expert_gemms", lambda device: gemms == "per expert")
    module = _experts(**LAYOUTS[layout])
    mask = _experts_mask(module, trained)
    reference = copy.deepcopy(module)
    mask.apply(reference)
    with HFTOptimizer(module, mask, torch.optim.AdamW, lr=1e-3):
        assert sliced_grad.installed(module) == {"gate_up_proj": mask.params()["gate_up_proj"]}
        got = _run_experts(module)
    want = _run_experts(reference)
    for a, b in zip(got, want, strict=True):  # output, hidden and routing weights' gradients
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    expected = dict(reference.named_parameters())
    for name, slices in mask.params().items():
        grad, want_grad = dict(module.named_parameters())[name].grad, expected[name].grad
        if slices is None:
            torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-6, msg=name)
            continue
        for part, want_part in zip(
            _trained(grad, slices), _trained(want_grad, slices), strict=True
        ):
            torch.testing.assert_close(part, want_part, rtol=1e-5, atol=1e-6, msg=name)
            assert torch.count_nonzero(part) > 0, name
        frozen = _frozen_index(grad.shape[slices.dim], slices)
        assert torch.count_nonzero(grad.index_select(slices.dim, frozen)) == 0, name
        assert torch.count_nonzero(grad[0]) == 0, name  # expert 0 got no tokens
    assert ("down_proj" in mask.params()) == (module.down_proj.grad is not None)


def test_experts_frozen_ranges_stay_bit_identical_through_adamw_steps_and_uninstall():
    module = _experts(transposed=True, concatenated=False, bias=True)
    mask = _experts_mask(module, "up")
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    with HFTOptimizer(module, mask, torch.optim.AdamW, lr=1e-2, weight_decay=0.1) as opt:
        for _ in range(3):
            _run_experts(module)
            opt.step()
            opt.zero_grad()
    for name, slices in mask.params().items():
        frozen = _frozen_index(before[name].shape[slices.dim], slices)
        param = dict(module.named_parameters())[name]
        assert torch.equal(
            param.index_select(slices.dim, frozen), before[name].index_select(slices.dim, frozen)
        ), name
        assert not torch.equal(_trained(param, slices)[0], _trained(before[name], slices)[0])
    assert torch.equal(module.down_proj, before["down_proj"])

    # closed: the module's own forward and plain autograd (the frozen ranges get gradients)
    assert not sliced_grad.installed(module) and "forward" not in module.__dict__
    reference = copy.deepcopy(module)
    module.config._experts_implementation = reference.config._experts_implementation = "eager"
    for a, b in zip(_run_experts(module), _run_experts(reference), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.count_nonzero(module.gate_up_proj.grad[..., ::2]) > 0


def test_experts_running_batched_mm_get_the_grouped_sliced_backward():
    module = _experts(implementation="batched_mm")
    mask = _experts_mask(module, "gate")
    reference = copy.deepcopy(module)
    mask.apply(reference)
    with HFTOptimizer(module, mask, torch.optim.AdamW, lr=1e-3):
        assert sliced_grad.installed(module)
        got = _run_experts(module)
    for a, b in zip(got, _run_experts(reference), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    gate = slice(0, INTERMEDIATE)
    torch.testing.assert_close(
        module.gate_up_proj.grad[:, gate],
        reference.gate_up_proj.grad[:, gate],
        rtol=1e-5,
        atol=1e-6,
    )
    assert torch.count_nonzero(module.gate_up_proj.grad[:, INTERMEDIATE:]) == 0


@pytest.mark.parametrize(
    "unhandled",
    [
        "eager",  # the class's own arithmetic
        "expert parallel",  # each rank holds some experts
        "own forward",  # a subclass overriding the dispatching forward
        "meta device",  # no grouped GEMM there
    ],
)
def test_experts_the_sliced_forward_cannot_stand_for_keep_plain_autograd(unhandled):
    module = _experts(implementation="eager" if unhandled == "eager" else "grouped_mm")
    if unhandled == "expert parallel":
        module._is_expert_parallel = True
    if unhandled == "own forward":
        base = type(module)
        forward = lambda self, *args: base.forward(self, *args)  # noqa: E731
        module.__class__ = type("OwnExperts", (base,), {"forward": forward})
    mask = _experts_mask(module, "gate")
    if unhandled == "meta device":
        module = module.to("meta")
        assert not sliced_grad.install(module, mask)
        return
    with HFTOptimizer(module, mask, torch.optim.AdamW, lr=1e-3):
        assert not sliced_grad.installed(module)
        if unhandled != "expert parallel":
            _run_experts(module)  # the optimizer's hook clears the frozen ranges instead
            assert torch.count_nonzero(module.gate_up_proj.grad[:, INTERMEDIATE:]) == 0
            assert torch.count_nonzero(module.gate_up_proj.grad[:, :INTERMEDIATE]) > 0


def test_experts_changed_to_another_forward_after_install_refuse_to_train():
    module = _experts()
    reference = copy.deepcopy(module)
    with HFTOptimizer(module, _experts_mask(module, "gate"), torch.optim.AdamW, lr=1e-3):
        module.config._experts_implementation = "eager"
        with torch.no_grad():  # inference runs the module's own forward
            hidden, index, weights = _routing(requires_grad=False)
            torch.testing.assert_close(
                module(hidden, index, weights), reference(hidden, index, weights)
            )
        with pytest.raises(HFTError, match="changed after HFTOptimizer gave it the sliced"):
            _run_experts(module)
