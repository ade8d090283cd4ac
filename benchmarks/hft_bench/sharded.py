"""What the sharded runs measure (benchmarks/gpu_sharded.sh, the distributed tests).

The engines' TrainingArguments as the checkout ships them, every parameter gathered
whole on every rank, and the optimizer-state bytes a rank holds.
"""

from __future__ import annotations

from pathlib import Path

from hft_plugins import HFTError

# TrainingArguments for FSDP2 in the Trainer (what integrations/accelerate/fsdp2.yaml sets)
FSDP2_ARGUMENTS = {
    "fsdp": "full_shard",
    "fsdp_config": {
        "fsdp_version": 2,
        "reshard_after_forward": True,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "state_dict_type": "SHARDED_STATE_DICT",
        "cpu_ram_efficient_loading": False,
    },
}


def engine_arguments(engine: str, repo: Path) -> dict:
    """TrainingArguments keys for ``engine``: zero2 and zero3 the DeepSpeed configs shipped
    in the checkout ``repo``'s integrations/deepspeed/, fsdp2 :data:`FSDP2_ARGUMENTS`."""
    if engine in ("zero2", "zero3"):
        return {"deepspeed": str(repo / "integrations" / "deepspeed" / f"{engine}.json")}
    if engine == "fsdp2":
        return {
            "fsdp": FSDP2_ARGUMENTS["fsdp"],
            "fsdp_config": dict(FSDP2_ARGUMENTS["fsdp_config"]),
        }
    raise HFTError(f"unknown engine {engine!r}; known: zero2, zero3, fsdp2")


def full_tensors(model, skip=()) -> dict:
    """name -> a copy of the full tensor on every rank (ZeRO-3 partitions and FSDP2 DTensors
    gathered), for the parameters not in ``skip``: how the frozen half is compared."""
    out = {}
    for name, param in model.named_parameters():
        if name in skip:
            continue
        if hasattr(param, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([param]):
                out[name] = param.detach().clone()
        elif hasattr(param, "full_tensor"):
            out[name] = param.full_tensor().detach().clone()
        else:
            out[name] = param.detach().clone()
    return out


def engine_state_bytes(optimizer) -> dict[str, int]:
    """Optimizer-state bytes this rank holds: ``master`` (DeepSpeed's fp32 partitions) and
    ``moments`` (the inner optimizer's state tensors; FSDP2: the local shards).

    ``optimizer`` is what the Trainer holds (accelerate's and DeepSpeed's wrappers are
    looked through).
    """

    def nbytes(tensors) -> int:
        total = 0
        for t in tensors:
            t = t.to_local() if hasattr(t, "to_local") else t
            total += t.numel() * t.element_size()
        return total

    zero = optimizer
    for _ in range(4):  # accelerate's DeepSpeedOptimizerWrapper -> DeepSpeedZeroOptimizer
        if hasattr(zero, "single_partition_of_fp32_groups") or hasattr(
            zero, "fp32_partitioned_groups_flat"
        ):
            break
        zero = getattr(zero, "optimizer", None)
    master = 0
    if zero is not None and hasattr(zero, "single_partition_of_fp32_groups"):
        master = nbytes(zero.single_partition_of_fp32_groups)
    elif zero is not None and hasattr(zero, "fp32_partitioned_groups_flat"):
        master = nbytes(zero.fp32_partitioned_groups_flat)
    inner = zero.optimizer if zero is not None else optimizer
    while not hasattr(inner, "state") and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    if zero is None:  # FSDP2 / plain: accelerate's AcceleratedOptimizer around the torch one
        inner = optimizer
        while hasattr(inner, "optimizer"):
            inner = inner.optimizer
    moments = nbytes(
        v
        for state in inner.state.values()
        for v in state.values()
        if hasattr(v, "dim") and v.dim() > 0
    )
    return {"master": master, "moments": moments}
