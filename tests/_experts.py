"""A mixture-of-experts block as recent transformers fuse it, with a mask built by hand.

Routed experts are 3-D parameters: ``gate_up_proj`` [E, 2F, H] (gate rows, then up rows,
along dim 1) and ``down_proj`` [E, H, F]. A unit such as "gate" is rows 0..F of dim 1
across all experts: a non-contiguous slice of a 3-D tensor.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from hft_plugins import HFTConfig, HFTMask
from hft_plugins.core.units import Part, Partition, Unit

EXPERTS, HIDDEN, FFN = 3, 8, 6


class Experts(nn.Module):
    """Every expert on every token, averaged: enough to give each tensor a gradient."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.norm = nn.LayerNorm(HIDDEN)
        self.gate_up_proj = nn.Parameter(torch.randn(EXPERTS, 2 * FFN, HIDDEN, generator=g) / 3)
        self.down_proj = nn.Parameter(torch.randn(EXPERTS, HIDDEN, FFN, generator=g) / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = torch.einsum("th,efh->etf", self.norm(x), self.gate_up_proj).chunk(2, dim=-1)
        return x + torch.einsum("etf,ehf->th", F.silu(gate) * up, self.down_proj) / EXPERTS


def units(gate_up_ranges=((0, FFN), (FFN, 2 * FFN)), gate_up_dim: int = 1) -> list[Unit]:
    """gate and up as ranges of gate_up_proj (by default along dim 1), down and the norm whole."""
    per_row = EXPERTS * HIDDEN
    found = [
        Unit(
            f"block.0.mlp.experts.{name}",
            0,
            "ffn",
            f"mlp.experts.{name}",
            (Part("gate_up_proj", gate_up_dim, (rows,)),),
            per_row * (rows[1] - rows[0]),
        )
        for name, rows in zip(("gate", "up"), gate_up_ranges, strict=True)
    ]
    down = Unit("block.0.mlp.experts.down", 0, "ffn", "mlp.experts.down", (Part("down_proj"),), 0)
    norm = Unit("block.0.norm", 0, "norm", "norm", (Part("norm.weight"), Part("norm.bias")), 0)
    return [
        *found,
        dataclasses.replace(down, numel=EXPERTS * HIDDEN * FFN),
        dataclasses.replace(norm, numel=2 * HIDDEN),
    ]


def mask(module: nn.Module, trainable, stage: int = 0, layout_units=None) -> HFTMask:
    """A mask of ``module`` training the units named in ``trainable`` (gate, up, down, norm)."""
    layout_units = layout_units or units()
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    layout = Partition("experts", layout_units, 1, shapes, {})
    keys = {u.key for u in layout_units if u.key.rsplit(".", 1)[-1] in set(trainable)}
    return HFTMask(HFTConfig(stage=stage), layout, frozenset(keys))
