"""Half-reset (the paper's pilot): put the frozen half of a tuned model back to its base.

For a mask drawn for the tuned model, every parameter (or slice of a fused one)
the mask does not train gets the base model's value; the trainable parts keep the
tuned values. The paper found this restores much of the base's knowledge while
keeping most of what tuning added.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import HFTError
from .mask import Mask


@torch.no_grad()
def half_reset(base_model: nn.Module, tuned_model: nn.Module, mask: Mask) -> nn.Module:
    """Reset ``tuned_model``'s parts that ``mask`` freezes to ``base_model``'s; in place, returned."""
    if not isinstance(mask, Mask):
        raise HFTError(f"mask must be an hft_plugins Mask, got {type(mask).__name__}")
    mask.check(tuned_model)
    base = dict(base_model.named_parameters(remove_duplicate=False))
    tuned = dict(tuned_model.named_parameters(remove_duplicate=False))
    for name, param in tuned.items():
        if name not in base:
            raise HFTError(f"base model has no parameter {name!r}")
        if base[name].shape != param.shape:
            raise HFTError(
                f"parameter {name!r} has shape {list(base[name].shape)} in the base model "
                f"and {list(param.shape)} in the tuned model"
            )
    plan = mask.params()
    for name, param in tuned.items():
        if name not in mask.layout.shapes:
            continue  # a tied alias: its owner decides
        source = base[name].to(param.device, param.dtype)
        if name not in plan:
            param.copy_(source)
        elif plan[name] is not None:
            kept = plan[name]
            frozen = torch.ones(param.shape[kept.dim], dtype=torch.bool, device=param.device)
            for a, b in kept.ranges:
                frozen[a:b] = False
            index = frozen.nonzero()[:, 0]
            param.index_copy_(kept.dim, index, source.index_select(kept.dim, index))
    return tuned_model
