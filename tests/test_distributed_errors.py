"""Redraws where they cannot work raise one clear HFTError (DeepSpeed is not installed here).

DeepSpeed ZeRO replaces the client optimizer's parameter groups with flat partitions;
the first test does exactly that to an HFTOptimizer. The others wrap the model the way
a DeepSpeed engine does and set accelerate's distributed type as a DeepSpeed launch does.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hft_plugins import HFTConfig, HFTError, HFTOptimizer, select
from hft_plugins.core.distributed import rebuild_ddp_reducer, redraw, under_deepspeed
from hft_plugins.testing import tiny_model


@pytest.fixture
def setup():
    model = tiny_model("llama", num_hidden_layers=2)
    mask = select(model, HFTConfig())
    optimizer = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-3)
    return model, optimizer, select(model, HFTConfig(stage=1))


def test_redraw_after_zero_flattened_the_groups(setup):
    model, optimizer, new_mask = setup
    for group in optimizer.param_groups:  # what DeepSpeedZeroOptimizer does to its client
        group["params"] = [torch.cat([p.detach().flatten() for p in group["params"]])]
    with pytest.raises(HFTError, match=r"^cannot redraw: a wrapper replaced the optimizer's"):
        optimizer.redraw(new_mask)


def test_redraw_of_a_deepspeed_wrapped_model(setup):
    model, optimizer, new_mask = setup
    engine_cls = type("DeepSpeedEngine", (nn.Module,), {"__module__": "deepspeed.runtime.engine"})
    engine = engine_cls()
    engine.module = model
    assert under_deepspeed(optimizer, engine)
    before = optimizer.mask
    with pytest.raises(HFTError, match=r"^an HFT redraw is not supported under DeepSpeed"):
        redraw(optimizer, new_mask, engine)
    assert optimizer.mask is before  # refused before anything changed


def test_redraw_when_accelerate_runs_deepspeed(setup, monkeypatch):
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    model, optimizer, new_mask = setup
    assert not under_deepspeed(optimizer, model)
    monkeypatch.setitem(PartialState._shared_state, "distributed_type", DistributedType.DEEPSPEED)
    with pytest.raises(HFTError, match=r"^an HFT redraw is not supported under DeepSpeed"):
        redraw(optimizer, new_mask, model)


def test_redraw_without_a_wrapper_is_a_plain_redraw(setup):
    model, optimizer, new_mask = setup
    redraw(optimizer, new_mask, model)
    assert optimizer.mask == new_mask
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(new_mask.params())


def test_zero3_partitioned_shapes_resolve_from_ds_shape():
    """ZeRO-3 leaves ``param.shape`` empty and the full shape in ``ds_shape``/``ds_numel``."""
    model = tiny_model("llama", num_hidden_layers=2)
    mask = select(model, HFTConfig())
    for param in model.parameters():
        param.ds_shape, param.ds_numel = param.shape, param.numel()
        param.data = torch.empty(0)
    assert select(model, HFTConfig()) == mask
    mask.check(model)


@pytest.fixture
def one_process_group():
    """A gloo group of one process: real DDP objects without launching torchrun."""
    import socket

    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_of_one_process_trains_after_a_redraw(setup, one_process_group):
    model, optimizer, new_mask = setup
    ddp = nn.parallel.DistributedDataParallel(model)
    redraw(optimizer, new_mask, ddp)
    rows = torch.randint(3, 90, (2, 8))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ddp(input_ids=rows, labels=rows).loss.backward()
    optimizer.step()
    plan = new_mask.params()
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) == (name not in plan), name


def test_ddp_that_cannot_be_rebuilt_says_what_to_do(setup, one_process_group, monkeypatch):
    model, _, _ = setup
    ddp = nn.parallel.DistributedDataParallel(model)
    monkeypatch.delattr(nn.parallel.DistributedDataParallel, "_build_params_for_reducer")
    with pytest.raises(HFTError, match=r"^this torch's DDP cannot be rebuilt in place .*wrap the"):
        rebuild_ddp_reducer(ddp)


# ---- DeepSpeed ZeRO / FSDP2 through the Trainer: the checks of integrations/sharded.py ----


def _args(**kw):
    from types import SimpleNamespace

    return SimpleNamespace(**{"deepspeed": None, "fsdp": None, "fsdp_config": None, **kw})


@pytest.mark.parametrize(
    ("args", "engine"),
    [
        (_args(), None),
        (
            _args(
                deepspeed="z.json",
                hf_deepspeed_config=_args(config={"zero_optimization": {"stage": 3}}),
            ),
            "DeepSpeed ZeRO-3",
        ),
        (_args(fsdp=["full_shard"], fsdp_config={"fsdp_version": 2}), "FSDP2"),
    ],
)
def test_the_engine_the_arguments_ask_for(args, engine):
    from hft_plugins.integrations.sharded import args_engine

    assert args_engine(args) == engine


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            _args(
                deepspeed="z.json",
                hf_deepspeed_config=_args(config={"zero_optimization": {"stage": 1}}),
            ),
            r"^HFT under DeepSpeed ZeRO-1 is not supported: use ZeRO-2 or ZeRO-3",
        ),
        (
            _args(fsdp=["full_shard"], fsdp_config={}),
            r"^HFT under FSDP1 is not supported: .*set fsdp_version: 2",
        ),
    ],
)
def test_unsupported_engines_are_refused_in_one_line(args, message):
    from hft_plugins.integrations.sharded import args_engine

    with pytest.raises(HFTError, match=message):
        args_engine(args)


def test_fused_slices_are_refused_under_sharding_engines():
    from hft_plugins.integrations.sharded import check_mask

    llama = tiny_model("llama", num_hidden_layers=2)
    check_mask(select(llama, HFTConfig()), "DeepSpeed ZeRO-3")  # whole matrices: fine
    gpt2 = tiny_model("gpt2")
    with pytest.raises(HFTError, match=r"^HFT under FSDP2 trains whole tensors only; .* use|DDP"):
        check_mask(select(gpt2, HFTConfig()), "FSDP2")
    check_mask(select(gpt2, HFTConfig(whole_tensors=True)), "FSDP2")  # the fused tensor whole
