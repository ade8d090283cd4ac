"""Half-reset (the paper's pilot finding): put a drawn half of a tuned model back to base."""

from __future__ import annotations

import torch
from torch import nn

from .mask import HFTMask
from .shapes import check_same_shapes, shapes
from .units import range_view


@torch.no_grad()
def half_reset(base_model: nn.Module, tuned_model: nn.Module, mask: HFTMask) -> nn.Module:
    """Copy the base values of ``mask``'s trainable block parts into ``tuned_model``.

    Only the block draw is reset; embeddings, heads and the final norm are not part
    of the draw and keep their tuned values. Returns ``tuned_model``, changed in place.
    """
    mask.check(tuned_model)
    check_same_shapes(
        shapes(base_model),
        shapes(tuned_model),
        missing="base model has no parameter {name}",
        shape="base and tuned models differ at {name}: {have} vs {want}",
    )
    base = dict(base_model.named_parameters())
    tuned = dict(tuned_model.named_parameters())
    for unit in mask.partition.block_units():
        if unit.key not in mask.trainable:
            continue
        for part in unit.parts:
            source, target = base[part.param], tuned[part.param]
            if part.ranges is None:
                target.copy_(source)
            for a, b in part.ranges or ():
                view = range_view(target, part.dim, a, b, part.step)
                view.copy_(range_view(source, part.dim, a, b, part.step))
    return tuned_model
