"""``whole_tensors``: every fused tensor trains or freezes whole, at exactly half per category.

Sharded engines (ZeRO-2/3, FSDP2) step whole tensors; this option draws a half they can
keep exact. The same config draws the same half with or without an engine.
"""

import re

import pytest
import torch

from hft_plugins import HFTConfig, HFTError, HFTMask, HFTOptimizer, select
from hft_plugins.core.partition import merge_shared_tensors
from hft_plugins.core.units import Part, Unit
from hft_plugins.testing import tiny_model
from tests.helpers import assert_half_trained, snapshot, unit_coverage

# family -> the merged units of block 0 (name -> the whole tensors it holds, block-relative)
MERGED = {
    "phi3": {
        "self_attn.qkv_proj[q+k+v]": ["self_attn.qkv_proj.weight"],
        "mlp.gate_up_proj[gate+up]": ["mlp.gate_up_proj.weight"],
    },
    "gpt2": {"attn.c_attn[q+k+v]": ["attn.c_attn.weight", "attn.c_attn.bias"]},
    "gpt_neox": {
        "attention.query_key_value[q+k+v]": [
            "attention.query_key_value.weight",
            "attention.query_key_value.bias",
        ]
    },
    "mixtral": {"mlp.experts.gate_up_proj[gate+up]": ["mlp.experts.gate_up_proj"]},
    "gpt_oss": {
        "mlp.experts.gate_up_proj[gate+up]": [
            "mlp.experts.gate_up_proj",
            "mlp.experts.gate_up_proj_bias",
        ]
    },
}


def _block0(mask: HFTMask) -> dict[str, Unit]:
    return {u.name: u for u in mask.partition.units if u.block == 0}


@pytest.mark.parametrize("family", sorted(MERGED))
def test_fused_tensors_train_whole_at_exactly_half(family):
    model = tiny_model(family)
    mask = select(model, HFTConfig(whole_tensors=True))
    assert all(part is None for part in mask.params().values())  # no slice anywhere
    done, total = mask.fractions()["blocks"]
    assert 2 * done == total  # exactly half of the blocks' parameters
    units = _block0(mask)
    for name, tensors in MERGED[family].items():
        unit = units[name]
        assert [_in_block(p.param) for p in unit.parts] == tensors
        assert all(part.ranges is None for part in unit.parts)
        assert unit.numel == sum(_numel(mask.partition.shapes[p.param]) for p in unit.parts)
    coverage = unit_coverage(mask, model)  # every element in exactly one unit
    assert all(bool((c == 1).all()) for c in coverage.values())


def _in_block(name: str) -> str:
    return re.sub(r"^.*?\.0\.", "", name)


def _numel(shape) -> int:
    return int(torch.Size(shape).numel())


@pytest.mark.parametrize("family", ["llama", "gemma2", "opt", "t5"])
def test_families_without_fused_tensors_draw_the_same_half(family):
    model = tiny_model(family)
    whole = select(model, HFTConfig(whole_tensors=True))
    assert whole.trainable == select(model, HFTConfig()).trainable
    assert whole.params() == select(model, HFTConfig()).params()


@pytest.mark.parametrize("family", ["phi3", "mixtral", "gpt_oss"])
def test_a_whole_tensor_mask_trains_and_round_trips(family, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(family)
    mask = select(model, HFTConfig(whole_tensors=True, stage=1))
    mask.save(tmp_path / "hft_mask.json")
    loaded = HFTMask.load(tmp_path / "hft_mask.json")
    assert loaded == mask and loaded.config.whole_tensors
    assert loaded.params() == mask.params()
    before = snapshot(model)
    opt = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    ids = torch.randint(3, 90, (2, 12))
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    assert_half_trained(mask, before, model)
    trainable = [p for n, p in model.named_parameters() if n in mask.params()]
    moments = 2 * 4 * sum(p.numel() for p in trainable)  # fp32 exp_avg and exp_avg_sq
    assert opt.state_bytes() == moments + 4 * len(trainable)  # and a step count per tensor


def test_slices_of_one_tensor_in_two_categories_cannot_merge():
    shapes = {"w": (8, 4), "o": (4, 4)}
    units = [
        Unit("block.0.f[a]", 0, "attention", "f[a]", (Part("w", 0, ((0, 4),)),), 16),
        Unit("block.0.o", 0, "attention", "o", (Part("o"),), 16),
        Unit("block.0.f[b]", 0, "ffn", "f[b]", (Part("w", 0, ((4, 8),)),), 16),
    ]
    with pytest.raises(
        HFTError, match=r"^whole_tensors cannot merge block.0.f\[a\], block.0.f\[b\]"
    ):
        merge_shared_tensors(units, shapes)


def test_merged_units_keep_their_place_and_the_rest_unchanged():
    shapes = {"w": (8, 4), "o": (4, 4), "n": (4,)}
    units = [
        Unit("block.0.f[a]", 0, "attention", "f[a]", (Part("w", 0, ((0, 4),)),), 16),
        Unit("block.0.o", 0, "attention", "o", (Part("o"),), 16),
        Unit("block.0.f[b]", 0, "attention", "f[b]", (Part("w", 0, ((4, 8),)),), 16),
        Unit("block.0.n", 0, "norm", "n", (Part("n"),), 4),
    ]
    merged = merge_shared_tensors(units, shapes)
    assert [u.key for u in merged] == ["block.0.f[a+b]", "block.0.o", "block.0.n"]
    assert merged[0].parts == (Part("w"),) and merged[0].numel == 32
    assert merged[1:] == units[1:2] + units[3:]
