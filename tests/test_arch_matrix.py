"""Every built-in layout end to end: select, apply, 3 optimizer steps, save, load, compare.

Frozen tensors and the frozen slices of fused tensors stay bit-identical, everything
trainable moves, the optimizer keeps state for the trainable elements only, and the
PEFT-style save (the trained half only) restores the tuned model exactly.
"""

from __future__ import annotations

import pytest
import torch

from hft_plugins import HFTConfig, HFTOptimizer
from hft_plugins.integrations.peft_style import WEIGHTS_NAME, HFTModel, get_hft_model
from hft_plugins.tiny import FAMILIES, tiny_model
from tests.integrations._common import assert_half_trained, snapshot


@pytest.mark.parametrize("family", FAMILIES)
def test_family_end_to_end(family, tmp_path):
    model = tiny_model(family, seed=0)
    before = snapshot(model)
    hft = get_hft_model(model, HFTConfig(seed=1))
    mask = hft.hft_mask
    assert not mask.partition.guessed, "every tiny family must be sorted exactly, nothing guessed"
    done, total = mask.fractions()["blocks"]
    assert abs(done / total - 0.5) < 0.1

    optimizer = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    rows = torch.randint(3, 90, (2, 10), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        hft(input_ids=rows, labels=rows).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert_half_trained(mask, before, model)
    entries = sum(len(g["params"]) for g in optimizer.param_groups)
    # fp32 exp_avg and exp_avg_sq for each trainable element, and a scalar step per tensor
    assert optimizer.state_bytes() == 2 * 4 * mask.trainable_numel + 4 * entries

    hft.save_pretrained(tmp_path / "hft")
    saved = (tmp_path / "hft" / WEIGHTS_NAME).stat().st_size
    assert 4 * mask.trainable_numel <= saved < 4 * mask.trainable_numel + 64 * 1024
    loaded = HFTModel.from_pretrained(tiny_model(family, seed=0), tmp_path / "hft")
    assert loaded.hft_mask == mask
    tuned = dict(model.named_parameters())
    for name, param in loaded.base_model.named_parameters():
        assert torch.equal(param, tuned[name]), name
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(
            hft(input_ids=rows, labels=rows).logits, loaded(input_ids=rows, labels=rows).logits
        )
