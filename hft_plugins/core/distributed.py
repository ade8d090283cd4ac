"""Redraws under data parallelism: keep DDP in step, refuse what DeepSpeed cannot do.

DDP registers for gradient all-reduce only the parameters that required grad when
it was built: after a redraw, the newly trainable half would never be reduced (the
ranks drift apart) and the newly frozen half would leave the reducer waiting.
:func:`redraw` rebuilds the reducer in place, so every holder of the DDP object
(the Trainer, accelerate, a training loop's local variable) keeps working.
DeepSpeed ZeRO partitions only the parameters trainable at start and does not
support changing that set, so a redraw there is an error.
"""

from __future__ import annotations

import sys

import torch.distributed as dist
from torch import nn

from .errors import HFTError
from .mask import HFTMask
from .optim import HFTOptimizer

_DEEPSPEED_REDRAW = (
    "an HFT redraw is not supported under DeepSpeed: ZeRO keeps optimizer state only for the "
    "parameters trainable at start; run each stage as its own DeepSpeed run "
    "(HFTConfig.next_stage()), or use DDP/FSDP2"
)


def redraw(optimizer: HFTOptimizer, mask: HFTMask, model: nn.Module | None = None) -> None:
    """``optimizer.redraw(mask)``, then re-register DDP's gradient sync for the new half.

    ``model`` is the wrapped model the training loop calls (a DDP module, or the plain
    model). Call it at the same step on every rank: the DDP rebuild is collective-free,
    but the ranks must draw the same mask (same config) to stay in sync.
    """
    check_redraw_supported(optimizer, model)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        _check_rebuildable(model)
    optimizer.redraw(mask)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        rebuild_ddp_reducer(model)


def under_deepspeed(*objects) -> bool:
    """True if any object (or what it wraps) is DeepSpeed's, or accelerate runs DeepSpeed."""
    for obj in objects:
        for _ in range(8):
            if obj is None:
                break
            if type(obj).__module__.split(".")[0] == "deepspeed":
                return True
            obj = getattr(obj, "optimizer", None) or getattr(obj, "module", None)
    accelerate_state = sys.modules.get("accelerate.state")
    if accelerate_state is not None:
        kind = accelerate_state.PartialState._shared_state.get("distributed_type")
        return getattr(kind, "value", kind) == "DEEPSPEED"
    return False


def check_redraw_supported(optimizer: HFTOptimizer, model: nn.Module | None = None) -> None:
    """Raise the one-line HFTError if a redraw cannot work in this run (DeepSpeed)."""
    if under_deepspeed(optimizer, model):
        raise HFTError(_DEEPSPEED_REDRAW)


def rebuild_ddp_reducer(ddp: nn.parallel.DistributedDataParallel) -> None:
    """Rebuild DDP's buckets and grad hooks for the parameters that require grad now.

    Uses DDP's own construction steps (checked on torch 2.13); the module states are not
    re-broadcast, as every rank already holds the same weights.
    """
    _check_rebuildable(ddp)
    try:
        parameters, expect_sparse = ddp._build_params_for_reducer()
        ddp._remove_autograd_hooks()
        names = ddp._build_debug_param_to_name_mapping(parameters)
        ddp._ddp_init_helper(parameters, expect_sparse, names, False)
    except AttributeError as exc:
        raise HFTError(
            f"this torch's DDP cannot be rebuilt in place ({exc}); wrap the model in a new "
            "DistributedDataParallel after the redraw"
        ) from None
    for hook, state in ddp._comm_hooks:  # e.g. accelerate's fp16/bf16 compression
        dist._register_comm_hook(ddp.reducer, state, hook)
    ddp._has_rebuilt_buckets = False


def _check_rebuildable(ddp: nn.parallel.DistributedDataParallel) -> None:
    if (
        getattr(ddp, "static_graph", False)
        or getattr(ddp, "mixed_precision", None) is not None
        or getattr(ddp, "_delay_all_reduce_params", None)
    ):
        raise HFTError(
            "an HFT redraw under DDP needs static_graph=False, no DDP mixed_precision and no "
            "delayed all-reduce: DDP cannot re-register parameters in those modes"
        )
