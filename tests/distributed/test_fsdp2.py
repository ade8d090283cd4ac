"""FSDP2 with masks that mix frozen and trainable matrices (and fused slices) in a block."""

from __future__ import annotations

import json

import pytest
import torch

from hft_plugins import HFTMask

FAMILIES = ("llama", "phi3", "gpt2", "gpt_oss")  # whole; fused rows; fused columns; strided experts


@pytest.fixture(scope="module")
def fsdp2_runs(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("fsdp2")
    torchrun("fsdp2_train.py", str(out), *FAMILIES)
    return {
        family: (
            torch.load(out / f"{family}.pt", weights_only=True),
            json.loads((out / f"{family}.json").read_text()),
        )
        for family in FAMILIES
    }


def _trainable_rows(mask: HFTMask) -> dict[str, torch.Tensor]:
    """Parameter name -> boolean tensor of its trainable elements."""
    plan = mask.params()
    where = {}
    for name, shape in mask.partition.shapes.items():
        flags = torch.zeros(shape, dtype=torch.bool)
        if name in plan:
            if plan[name] is None:
                flags[...] = True
            else:
                for a, b in plan[name].ranges:
                    flags.narrow(plan[name].dim, a, b - a).fill_(True)
        where[name] = flags
    return where


def _check_stage(mask: HFTMask, start, sharded, single) -> None:
    """Sharded == one process (float tolerance); frozen elements bit-identical; the rest moved."""
    trainable = _trainable_rows(mask)
    moved = 0
    for name, begin in start.items():
        torch.testing.assert_close(sharded[name], single[name], rtol=1e-4, atol=1e-5)
        frozen = ~trainable[name]
        assert torch.equal(sharded[name][frozen], begin[frozen]), f"{name}: a frozen element moved"
        moved += int((sharded[name][~frozen] != begin[~frozen]).sum())
    assert moved > 0.9 * mask.trainable_numel


@pytest.mark.parametrize("family", FAMILIES)
def test_fsdp2_matches_one_process_and_keeps_the_frozen_half(fsdp2_runs, family):
    weights, info = fsdp2_runs[family]
    mask = HFTMask.from_json(info["mask"])
    units = mask.partition.block_units()
    mixed = {u.block for u in units if u.key in mask.trainable} & {
        u.block for u in units if u.key not in mask.trainable
    }
    assert mixed == set(range(mask.partition.num_blocks))  # frozen and trainable in every block
    _check_stage(mask, weights["initial"], weights["sharded0"], weights["single0"])


@pytest.mark.parametrize("family", FAMILIES)
def test_fsdp2_redraw_trains_the_new_half(fsdp2_runs, family):
    weights, info = fsdp2_runs[family]
    mask1 = HFTMask.from_json(info["mask1"])
    assert mask1.config.stage == 1 and mask1.trainable != HFTMask.from_json(info["mask"]).trainable
    _check_stage(mask1, weights["sharded0"], weights["sharded"], weights["single"])


@pytest.mark.parametrize("family", FAMILIES)
def test_fsdp2_optimizer_state_covers_only_trainable_shards(fsdp2_runs, family):
    _, info = fsdp2_runs[family]
    mask = HFTMask.from_json(info["mask1"])  # the state after the redraw
    keys = set()  # whole tensors by name; fused ones per unit range
    for name, parts in mask.trainable_parts().items():
        if parts is None:
            keys.add(name)
        else:
            keys |= {
                f"{name}[{p.dim}:{a}:{b}" + (f":{p.step}]" if p.step > 1 else "]")
                for p in parts
                for a, b in p.ranges
            }
    ranks = info["ranks"]
    for rank in ranks:
        assert set(rank["state"]) == keys  # same keys on every rank, no frozen tensor
    assert sum(sum(r["state"].values()) for r in ranks) == mask.trainable_numel
    # fp32 exp_avg and exp_avg_sq over the trainable elements, plus a scalar step per tensor
    moments = 2 * 4 * mask.trainable_numel
    assert sum(r["bytes"] for r in ranks) == moments + 4 * len(keys) * len(ranks)
    assert all(r["bytes"] < 0.75 * moments for r in ranks)  # each rank holds about half
