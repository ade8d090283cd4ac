"""The sparse-aware optimizer: frozen stays bit-identical, state only for the trained half."""

import copy
import dataclasses
import gc
import weakref

import pytest
import torch

from hft_plugins import HFTConfig, HFTError, HFTMask, HFTOptimizer, select
from hft_plugins.core import sliced_grad
from hft_plugins.core.units import Part
from hft_plugins.testing import tiny_model
from tests import helpers

STEPS = 20


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 96, (2, 16), generator=g)


def _train(model, opt, steps, start=0):
    for step in range(start, start + steps):
        ids = _batch(step)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()


def _frozen_mask(mask, name, shape):
    """Boolean tensor: True where the parameter is frozen."""
    plan = mask.params()
    frozen = torch.ones(shape, dtype=torch.bool)
    if name in plan:
        if plan[name] is None:
            frozen.fill_(False)
        else:
            for a, b in plan[name].ranges:
                frozen.narrow(plan[name].dim, a, b - a).fill_(False)
    return frozen


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "phi3", "mixtral"])
def test_frozen_bit_identical_after_adamw_with_decay(family):
    model = tiny_model(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = select(model, HFTConfig(seed=3))
    opt = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    _train(model, opt, STEPS)
    sliced = 0
    for name, param in model.named_parameters():
        frozen = _frozen_mask(mask, name, param.shape)
        assert torch.equal(param[frozen], before[name][frozen]), name
        trained = ~frozen
        if trained.any():
            assert not torch.equal(param[trained], before[name][trained]), name
        sliced += bool(frozen.any() and trained.any())
    assert sliced > 0 or family == "llama"  # fused families really exercise slices


def test_fused_adamw_keeps_frozen_column_slices():
    """GPT-2's c_attn slices are column views; torch's fused kernels write past such views,
    so the wrapped optimizer must only ever see contiguous tensors."""
    model = tiny_model("gpt2")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = select(model, HFTConfig(seed=3))
    opt = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-2, weight_decay=0.1, fused=True)
    assert all(t.is_contiguous() for g in opt.param_groups for t in g["params"])
    _train(model, opt, 3)
    columns = 0
    for name, param in model.named_parameters():
        frozen = _frozen_mask(mask, name, param.shape)
        assert torch.equal(param[frozen], before[name][frozen]), name
        if frozen.any() and not frozen.all():
            assert not torch.equal(param[~frozen], before[name][~frozen]), name
            columns += mask.params()[name].dim == 1
    assert columns > 0


def test_step_starts_from_weights_loaded_into_the_live_model():
    """Copied column slices are refreshed from the parameter: a checkpoint loaded into the
    model (and the optimizer) after training started is what the next step moves."""
    model, other = tiny_model("gpt2"), tiny_model("gpt2", seed=1)
    mask = select(model, HFTConfig(seed=3))
    opts = [
        HFTOptimizer(m, mask, torch.optim.AdamW, lr=1e-2, weight_decay=0.1, fused=True)
        for m in (model, other)
    ]
    _train(model, opts[0], 2)
    _train(other, opts[1], 2, start=5)
    other.load_state_dict(model.state_dict())
    opts[1].load_state_dict(copy.deepcopy(opts[0].state_dict()))  # as from a checkpoint
    _train(model, opts[0], 2, start=2)
    _train(other, opts[1], 2, start=2)
    for (name, a), b in zip(model.named_parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_state_bytes_are_two_moments_of_the_trainable_elements(family):
    model = tiny_model(family)
    mask = select(model, HFTConfig())
    opt = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-3, weight_decay=0.1)
    _train(model, opt, 1)
    moments = sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        for k, v in s.items()
        if k in ("exp_avg", "exp_avg_sq")
    )
    assert moments == 2 * mask.trainable_numel * 4
    assert abs(opt.state_bytes() / (2 * mask.trainable_numel * 4) - 1) < 0.01


def test_decay_groups_follow_the_hf_trainer_rule():
    model = tiny_model("gpt2")
    opt = HFTOptimizer(
        model, select(model, HFTConfig()), torch.optim.AdamW, lr=1e-3, weight_decay=0.1
    )
    decay, plain = opt.param_groups
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all("bias" not in n and "ln_" not in n for n in decay["names"])
    assert any(n.startswith("transformer.h.0.ln_") for n in plain["names"]) or any(
        n.startswith("transformer.ln_f") for n in plain["names"]
    )
    assert all("bias" in n or "ln_" in n for n in plain["names"])


@pytest.mark.parametrize("kwargs", [{}, {"weight_decay": 0.1}, {"weight_decay": 0.0}])
def test_biases_and_norms_never_decay(kwargs):
    """AdamW decays by 0.01 unless told otherwise: the no-decay group must say 0.0 itself,
    and keep it across a redraw and a resume."""
    model = tiny_model("gpt2")
    opt = HFTOptimizer(model, select(model, HFTConfig()), torch.optim.AdamW, lr=1e-3, **kwargs)
    decay, plain = opt.param_groups
    assert decay["weight_decay"] == kwargs.get("weight_decay", 0.01)
    assert plain["weight_decay"] == 0.0
    # a bias whose gradient is zero does not move at all (decay would shrink it)
    bias = model.transformer.ln_f.bias
    with torch.no_grad():
        bias.fill_(1.0)
    bias.grad = torch.zeros_like(bias)
    opt.step()
    assert torch.equal(bias, torch.ones_like(bias))
    _train(model, opt, 1)
    opt.redraw(select(model, HFTConfig(stage=1)))
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert [g["weight_decay"] for g in opt.param_groups] == [decay["weight_decay"], 0.0]


def test_redraw_keeps_each_group_its_own_weight_decay():
    """A stage that trains only norms has no decay group: the next stage's decay group must
    not inherit the no-decay group's settings."""
    model = tiny_model("llama")
    full = select(model, HFTConfig())
    norms = frozenset(u.key for u in full.partition.units if u.category in ("norm", "final_norm"))
    opt = HFTOptimizer(
        model,
        HFTMask(full.config, full.partition, norms),
        torch.optim.AdamW,
        lr=1e-3,
        weight_decay=0.1,
    )
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0]
    opt.redraw(full)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_redraw_frees_newly_frozen_state_and_keeps_the_rest():
    model = tiny_model("llama", num_hidden_layers=8)
    first = select(model, HFTConfig(seed=1))
    opt = HFTOptimizer(model, first, torch.optim.AdamW, lr=1e-3, weight_decay=0.1)
    _train(model, opt, 2)
    by_name = {n: p for n, p in model.named_parameters()}
    kept_before = {n: opt.state[by_name[n]]["exp_avg"].clone() for n in first.params()}
    second = select(model, HFTConfig(seed=1).next_stage())
    opt.redraw(second)
    both = set(first.params()) & set(second.params())
    dropped = set(first.params()) - set(second.params())
    added = set(second.params()) - set(first.params())
    assert dropped and added
    assert len(opt.state) == len(both)  # state counted: newly frozen freed, new ones not yet made
    for name in both:
        assert torch.equal(opt.state[by_name[name]]["exp_avg"], kept_before[name])
    for name in dropped:
        assert not by_name[name].requires_grad and by_name[name].grad is None
    frozen_now = {n: p.detach().clone() for n, p in by_name.items() if n not in second.params()}
    _train(model, opt, 2, start=2)
    assert len(opt.state) == len(second.params())
    assert all(opt.state[by_name[n]]["step"].item() == 2 for n in added)
    for name, value in frozen_now.items():
        assert torch.equal(by_name[name], value), name


@pytest.mark.parametrize("family", ["gpt2", "phi3"])  # column ranges; row ranges
def test_a_fused_unit_trained_in_both_stages_keeps_its_state(family):
    """One unit of a fused tensor trains in both stages while its neighbour joins in the
    second: the unit's moments must survive the redraw exactly (docs/concepts.md)."""
    model = tiny_model(family)
    drawn = select(model, HFTConfig(seed=0))
    fused = [u for u in drawn.partition.units if u.block == 0 and u.parts[0].ranges is not None]
    kept, joining = fused[0], fused[1]
    siblings = {u.key for u in fused if u.parts[0].param == kept.parts[0].param}
    first = HFTMask(drawn.config, drawn.partition, (drawn.trainable - siblings) | {kept.key})
    second = HFTMask(drawn.config.next_stage(), drawn.partition, first.trainable | {joining.key})
    opt = HFTOptimizer(model, first, torch.optim.AdamW, lr=1e-2, weight_decay=0.1, fused=True)
    _train(model, opt, 2)
    keys = [f"{p.param}[{p.dim}:{a}:{b}]" for p in kept.parts for a, b in p.ranges]
    before = copy.deepcopy({k: opt.state_dict()["state"][k] for k in keys})
    opt.redraw(second)
    after = opt.state_dict()["state"]
    for key in keys:
        for name, value in before[key].items():
            assert torch.equal(after[key][name], value), (key, name)
    _train(model, opt, 1, start=2)
    assert all(opt.state_dict()["state"][k]["step"].item() == 3 for k in keys)
    opt.redraw(first)  # and back: the neighbour leaves, the unit keeps its state again
    assert all(opt.state_dict()["state"][k]["step"].item() == 3 for k in keys)


def _resume_equal(family, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(family)
    mask = select(model, HFTConfig(seed=5))
    opt = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    _train(model, opt, 3)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    torch.save(model.state_dict(), tmp_path / "model.pt")
    _train(model, opt, 3, start=3)

    resumed = tiny_model(family, seed=123)
    resumed.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    # start from another stage's mask: loading must redraw to the saved one
    opt2 = HFTOptimizer(
        resumed,
        select(resumed, HFTConfig(seed=5, stage=4)),
        torch.optim.AdamW,
        lr=1e-2,
        weight_decay=0.1,
    )
    opt2.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    assert opt2.mask == mask
    _train(resumed, opt2, 3, start=3)
    for (name, a), (_, b) in zip(model.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    return opt, opt2


@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral"])
def test_state_dict_round_trip_and_bit_identical_resume(family, tmp_path):
    opt, opt2 = _resume_equal(family, tmp_path)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        for k, v in a["state"][key].items():
            assert torch.equal(v, b["state"][key][k])


def test_state_dict_keys_are_names_and_slices():
    model = tiny_model("gpt2")
    opt = HFTOptimizer(model, select(model, HFTConfig()), torch.optim.AdamW, lr=1e-3)
    _train(model, opt, 1)
    keys = set(opt.state_dict()["state"])
    assert "transformer.wte.weight" in keys
    assert any(k.startswith("transformer.h.0.attn.c_attn.weight[1:") for k in keys)


def test_expert_row_ranges_are_stepped_in_place_one_state_per_expert():
    """A row range of [E, 2F, H] experts is E contiguous blocks: the wrapped optimizer holds
    views of the parameter (no copy in and out per step), each with its own state."""
    model = tiny_model("mixtral")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = select(model, HFTConfig(seed=2))
    opt = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    _train(model, opt, 2)
    params = dict(model.named_parameters())
    for name, param in params.items():
        frozen = _frozen_mask(mask, name, param.shape)
        assert torch.equal(param[frozen], before[name][frozen]), name
    state = opt.state_dict()["state"]
    sliced = {n: parts for n, parts in mask.trainable_parts().items() if parts is not None}
    assert sliced  # the seed trains gate or up alone in some block
    held = {p.data_ptr() for g in opt.inner.param_groups for p in g["params"]}
    for name, parts in sliced.items():
        experts, _, hidden = params[name].shape
        for part in parts:
            ((a, b),) = part.ranges
            assert part.dim == 1 and f"{name}[1:{a}:{b}]" not in state
            for e in range(experts):
                assert state[f"{name}[1:{a}:{b}][{e}]"]["exp_avg"].shape == (b - a, hidden)
                assert params[name][e, a:b].data_ptr() in held  # the parameter's own memory
    assert sum(s["exp_avg"].numel() for s in state.values()) == mask.trainable_numel


def test_bad_inputs():
    model = tiny_model("llama")
    mask = select(model, HFTConfig())
    with pytest.raises(HFTError, match="mask must be an hft_plugins HFTMask"):
        HFTOptimizer(model, {"a": 1})
    with pytest.raises(HFTError, match="optimizer_cls must be a torch optimizer class"):
        HFTOptimizer(model, mask, "adamw")
    opt = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-3)
    with pytest.raises(HFTError, match="not an HFT optimizer state"):
        opt.load_state_dict({"state": {}, "param_groups": []})
    other = select(tiny_model("llama", intermediate_size=48), HFTConfig())
    with pytest.raises(HFTError, match="mask does not match the model"):
        opt.redraw(other)


@pytest.mark.parametrize("gate_up_ranges, dim", [(((0, 7), (6, 12)), 1), (((0, 6), (6, 12)), 0)])
def test_units_overlapping_or_along_two_dims_are_refused(gate_up_ranges, dim):
    """State is kept per unit range; overlapping ranges would be stepped twice."""
    module = helpers.ExpertsBlock()
    units = helpers.expert_units(gate_up_ranges)
    if dim == 0:  # "up" as the first experts instead: another dim of the same tensor
        units[1] = dataclasses.replace(units[1], parts=(Part("gate_up_proj", 0, ((0, 1),)),))
    mask = helpers.expert_mask(module, {"gate", "up"}, units=units)
    with pytest.raises(HFTError, match="units of gate_up_proj have overlapping ranges or ranges"):
        HFTOptimizer(module, mask, torch.optim.AdamW, lr=1e-3)


def test_works_with_other_torch_optimizers():
    model = tiny_model("llama")
    mask = select(model, HFTConfig())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = HFTOptimizer(model, mask, torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=0.1)
    _train(model, opt, 3)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) == (name not in mask.params()), name


def test_repr_and_errors_name_the_wrapped_class_with_its_module():
    """bitsandbytes' AdamW (8-bit with optim_bits=8) must not read as torch's AdamW."""
    bnb_adamw = type("AdamW", (torch.optim.AdamW,), {"__module__": "bitsandbytes.optim.adamw"})
    model = tiny_model("llama")
    opt = HFTOptimizer(model, select(model), bnb_adamw, lr=1e-3)
    assert repr(opt).startswith("HFTOptimizer(bitsandbytes.optim.adamw.AdamW, HFTMask(")
    assert repr(HFTOptimizer(model, select(model), lr=1e-3)).startswith(
        "HFTOptimizer(torch.optim.adamw.AdamW, HFTMask("
    )
    with pytest.raises(HFTError, match=r"^bitsandbytes\.optim\.adamw\.AdamW rejected its arg"):
        HFTOptimizer(model, select(model), bnb_adamw, lrr=1e-3)


def test_lr_scheduler_drives_the_wrapped_groups():
    model = tiny_model("llama")
    opt = HFTOptimizer(model, select(model, HFTConfig()), torch.optim.AdamW, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    _train(model, opt, 1)
    sched.step()
    assert all(g["lr"] == 0.5 for g in opt.inner.param_groups)


def _fused_backward(scaler=None, sliced_grad=True, family="phi3"):
    model = tiny_model(family)
    mask = select(model, HFTConfig())
    opt = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-3, sliced_grad=sliced_grad)
    ids = _batch()
    loss = model(input_ids=ids, labels=ids).loss
    (loss if scaler is None else scaler.scale(loss)).backward()
    return model, mask, opt


@pytest.mark.parametrize("sliced_grad", [True, False])
def test_frozen_slices_have_zero_gradient_so_clipping_sees_the_trainable_half(sliced_grad):
    """clip_grad_norm_(model.parameters()) must not count the frozen rows of qkv_proj: the
    sliced backward leaves them zero, and without it the post-backward hook zeroes them."""
    model, mask, _ = _fused_backward(sliced_grad=sliced_grad)
    for name, param in model.named_parameters():
        if param.grad is not None:
            frozen = _frozen_mask(mask, name, param.shape)
            assert torch.count_nonzero(param.grad[frozen]) == 0, name
            assert torch.count_nonzero(param.grad[~frozen]) > 0, name


@pytest.mark.parametrize("family", ["phi3", "gpt2"])  # row views; column copies
def test_grad_scaler_unscales_the_trainable_slices(family):
    """fp16 loss scaling walks param_groups: the slices' gradients must be there to unscale,
    and unscaling them must reach the parameter's gradient (which clipping then reads)."""
    scale = 1024.0
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    model, mask, opt = _fused_backward(scaler, family=family)
    scaled = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    scaler.unscale_(opt)
    fused = [n for n, s in mask.params().items() if s is not None]
    assert fused
    for name, param in model.named_parameters():
        if name in scaled:
            assert torch.allclose(param.grad * scale, scaled[name]), name


def test_grad_hooks_follow_redraw():
    model, _, opt = _fused_backward()
    new = select(model, HFTConfig(stage=1))
    opt.redraw(new)
    opt.zero_grad()
    ids = _batch(1)
    model(input_ids=ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert torch.count_nonzero(param.grad[_frozen_mask(new, name, param.shape)]) == 0


# ---- an optimizer's hooks and sliced backward leave the model with it -------------------


def _full_gradients(model) -> dict[str, torch.Tensor]:
    """Gradients of one backward with every parameter trainable."""
    for param in model.parameters():
        param.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    ids = _batch(7)
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_plain_backward(model, family="gpt2"):
    """``model`` backpropagates as an untouched model with the same weights does."""
    untouched = tiny_model(family, seed=9)
    untouched.load_state_dict(model.state_dict())
    want = _full_gradients(untouched)
    for name, grad in _full_gradients(model).items():
        torch.testing.assert_close(grad, want[name], rtol=0, atol=0, msg=name)


def _hft_stage(model, stage=0, **kwargs) -> HFTOptimizer:
    opt = HFTOptimizer(model, select(model, HFTConfig(stage=stage)), lr=1e-2, **kwargs)
    _train(model, opt, 1)
    return opt


def test_close_releases_the_model_and_the_optimizer_refuses_to_step():
    model = tiny_model("gpt2")
    opt = _hft_stage(model)
    assert sliced_grad.installed(model)
    opt.close()
    opt.close()  # twice is fine
    assert opt.closed and not sliced_grad.installed(model)
    _assert_plain_backward(model)
    with pytest.raises(HFTError, match="this HFTOptimizer was closed"):
        opt.step()


def test_a_with_block_releases_the_model():
    model = tiny_model("gpt2")
    with HFTOptimizer(model, select(model, HFTConfig()), lr=1e-2) as opt:
        _train(model, opt, 1)
    assert opt.closed
    _assert_plain_backward(model)


def test_a_collected_optimizer_releases_the_model():
    """The model holds its optimizer's hooks but not the optimizer: it can be collected."""
    model = tiny_model("gpt2")
    gone = weakref.ref(_hft_stage(model, sliced_grad=False))
    gc.collect()
    assert gone() is None
    model2 = tiny_model("gpt2")
    gone = weakref.ref(_hft_stage(model2))
    gc.collect()
    assert gone() is None
    _assert_plain_backward(model)
    _assert_plain_backward(model2)


def test_merge_and_unload_releases_the_model():
    from hft_plugins.integrations.peft_style import get_hft_model

    wrapped = get_hft_model(tiny_model("gpt2"), HFTConfig())
    opt = HFTOptimizer(wrapped.base_model, wrapped.hft_mask, lr=1e-2)  # still referenced
    _train(wrapped, opt, 1)
    model = wrapped.merge_and_unload()
    assert opt.closed
    _assert_plain_backward(model)


@pytest.mark.parametrize("sliced", [True, False])
def test_a_new_optimizer_replaces_the_previous_ones_hooks(sliced):
    """The previous stage's hooks would zero ranges the new stage trains."""
    model = tiny_model("gpt2")
    first = _hft_stage(model, sliced_grad=sliced)
    q = "block.0.attn.c_attn[q]"
    assert q not in first.mask.trainable  # so the first optimizer's hook zeroes its range
    drawn = first.mask
    second_mask = HFTMask(drawn.config.next_stage(), drawn.partition, drawn.trainable | {q})
    second = HFTOptimizer(model, second_mask, lr=1e-2, sliced_grad=sliced)
    assert first.closed and not second.closed
    untouched = tiny_model("gpt2", seed=9)
    untouched.load_state_dict(model.state_dict())
    second.mask.apply(untouched)
    ids = _batch(3)
    for m in (model, untouched):
        m(input_ids=ids, labels=ids).loss.backward()
    want = dict(untouched.named_parameters())
    for name, param in model.named_parameters():
        if param.grad is None:
            assert want[name].grad is None, name
            continue
        trained = ~_frozen_mask(second.mask, name, param.shape)
        torch.testing.assert_close(param.grad[trained], want[name].grad[trained], msg=name)
    second.close()
    _assert_plain_backward(model)


def test_a_failed_construction_leaves_the_live_optimizer_alone():
    model = tiny_model("gpt2")
    opt = _hft_stage(model)
    installed = sliced_grad.installed(model)
    with pytest.raises(HFTError, match="rejected its arguments"):
        HFTOptimizer(model, select(model, HFTConfig(stage=1)), lr="fast")
    gc.collect()
    assert not opt.closed and sliced_grad.installed(model) == installed


def test_resuming_with_another_seed_warns_and_keeps_the_checkpoint_mask():
    model = tiny_model("llama")
    saved = HFTOptimizer(model, select(model, HFTConfig(seed=1)), torch.optim.AdamW, lr=1e-3)
    _train(model, saved, 1)
    state = saved.state_dict()
    later_stage = HFTOptimizer(
        model, select(model, HFTConfig(seed=1, stage=2)), torch.optim.AdamW, lr=1e-3
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        later_stage.load_state_dict(state)  # a resume across a redraw: silent
    other_seed = HFTOptimizer(model, select(model, HFTConfig(seed=2)), torch.optim.AdamW, lr=1e-3)
    with pytest.warns(UserWarning, match="resuming with the checkpoint's mask"):
        other_seed.load_state_dict(state)
    assert other_seed.mask == saved.mask


def test_state_of_another_format_is_refused_in_one_line():
    model = tiny_model("gpt2")
    optimizer = HFTOptimizer(model, select(model, HFTConfig()), torch.optim.AdamW, lr=1e-3)
    other = {**optimizer.state_dict(), "format": "hft-optimizer/1"}
    with pytest.raises(HFTError, match=r"^not an HFT optimizer state: expected format '[^']*'$"):
        optimizer.load_state_dict(other)
