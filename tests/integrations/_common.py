"""Tiny data and snapshots used by several integration tests."""

import torch

from hft_plugins.core.mask import Mask
from hft_plugins.core.units import range_view


def lm_dataset(n: int = 8, length: int = 12, seed: int = 0):
    """``n`` random token sequences for causal-LM training (labels = inputs)."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 90, (n, length), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_half_trained(mask: Mask, before: dict, model) -> None:
    """Frozen parameters and frozen slices are bit-identical; every trainable tensor moved."""
    plan = mask.params()
    after = dict(model.named_parameters())
    for name, old in before.items():
        new = after[name].detach()
        if name not in plan:
            assert torch.equal(old, new), f"frozen {name} changed"
            continue
        slices = plan[name]
        if slices is None:
            assert not torch.equal(old, new), f"trainable {name} did not move"
            continue
        keep = torch.ones(old.shape[slices.dim], dtype=torch.bool)
        for a, b in slices.ranges:
            keep[a : b : slices.step] = False
            assert not torch.equal(
                range_view(old, slices.dim, a, b, slices.step),
                range_view(new, slices.dim, a, b, slices.step),
            ), f"trainable slice of {name} did not move"
        idx = keep.nonzero().flatten()
        assert torch.equal(old.index_select(slices.dim, idx), new.index_select(slices.dim, idx))
