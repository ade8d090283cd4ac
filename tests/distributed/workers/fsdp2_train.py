"""FSDP2 (fully_shard) on CPU/gloo: train a tiny model with an HFT mask, and a 1-process twin.

Rank 0 writes, per family, the sharded run's full weights, the single-process run's
weights, the initial weights and what optimizer state each rank holds, for the
test to compare.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from hft_plugins import HFTConfig, HFTOptimizer, select
from hft_plugins.testing import tiny_model

STEPS = 3


def batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, 96, (4, 12), generator=generator)


def blocks(model):
    inner = getattr(model, "model", None) or model.transformer
    return inner.layers if hasattr(inner, "layers") else inner.h


def steps(model, optimizer, rows: torch.Tensor) -> None:
    for _ in range(STEPS):
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def train(model, mask, rows: torch.Tensor) -> tuple[HFTOptimizer, dict]:
    """Stage 0, then a redraw and stage 1; returns the optimizer and the stage-0 weights."""
    model.eval()  # no dropout: the sharded and the single run must see the same function
    # eps well above rounding noise: a key bias has an exactly-zero true gradient, and Adam
    # would turn each run's rounding noise there into full-size, different steps
    # foreach=True, the GPU default: its kernels refuse DTensors mixed with plain tensors
    optimizer = HFTOptimizer(
        model, mask, torch.optim.AdamW, lr=1e-2, eps=1e-4, weight_decay=0.1, foreach=True
    )
    steps(model, optimizer, rows)
    stage0 = full_weights(model)
    optimizer.redraw(select(model, mask.config.next_stage()))
    steps(model, optimizer, rows)
    return optimizer, stage0


def full_weights(model) -> dict[str, torch.Tensor]:
    return {
        name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
        for name, p in model.named_parameters()
    }


def local_state(optimizer: HFTOptimizer) -> dict[str, int]:
    """State key -> elements of exp_avg this rank holds."""
    return {
        key: (
            s["exp_avg"].to_local() if isinstance(s["exp_avg"], DTensor) else s["exp_avg"]
        ).numel()
        for key, s in optimizer.state_dict()["state"].items()
    }


def run(family: str, out: Path) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    data = batch()
    model = tiny_model(family, seed=0)
    initial = full_weights(model)
    mask = select(model, HFTConfig(seed=3))
    mask.apply(model)
    for block in blocks(model):
        fully_shard(block)
    fully_shard(model)
    per_rank = data.shape[0] // world
    optimizer, stage0 = train(model, mask, data[rank * per_rank : (rank + 1) * per_rank])
    sharded = full_weights(model)
    states = [None] * world
    dist.all_gather_object(
        states, {"state": local_state(optimizer), "bytes": optimizer.state_bytes()}
    )
    if rank == 0:
        twin = tiny_model(family, seed=0)
        twin_mask = select(twin, HFTConfig(seed=3))
        _, twin_stage0 = train(twin, twin_mask, data)
        torch.save(
            {
                "initial": initial,
                "sharded0": stage0,
                "single0": twin_stage0,
                "sharded": sharded,
                "single": full_weights(twin),
            },
            out / f"{family}.pt",
        )
        info = {"ranks": states, "mask": mask.to_json(), "mask1": optimizer.mask.to_json()}
        (out / f"{family}.json").write_text(json.dumps(info))


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    torch.use_deterministic_algorithms(True)
    for family in sys.argv[2:]:
        run(family, out)
    dist.barrier()  # rank 0 trains the twin alone; leave together
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
