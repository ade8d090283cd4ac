"""DDP on CPU/gloo with a redraw between two stages, each rank on its own data.

``rebuild``: hft_plugins.core.distributed.redraw (the DDP reducer follows the new half);
``plain``: optimizer.redraw alone, to show what DDP does without the rebuild.
Rank 0 writes every rank's weights at the start, after stage 0 and after stage 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from hft_plugins import HFTConfig, HFTError, HFTOptimizer, select
from hft_plugins.core.distributed import redraw
from hft_plugins.testing import tiny_model

STEPS = 3


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def train(ddp, optimizer, rows) -> None:
    for _ in range(STEPS):
        ddp(input_ids=rows, labels=rows).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def refused_redraws(model, optimizer) -> dict[str, str]:
    """Redraws that cannot work with several processes, and the HFTError each gives."""
    from hft_plugins.integrations.transformers import HFTCallback

    stage2 = select(model, HFTConfig(seed=5, stage=2))
    refusals = {}
    attempts = {
        "unbound_callback": lambda: HFTCallback().redraw(optimizer, stage2),
        "static_graph": lambda: redraw(
            optimizer, stage2, DistributedDataParallel(model, static_graph=True)
        ),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
        except HFTError as exc:
            refusals[name] = str(exc)
    refusals["mask_unchanged"] = optimizer.mask.config.stage == 1
    return refusals


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    rows = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(10 + rank))
    model = tiny_model("llama", seed=0).eval()  # eval: no dropout, same function everywhere
    config = HFTConfig(seed=5)
    mask = select(model, config)
    mask.apply(model)
    ddp = DistributedDataParallel(model)
    optimizer = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    snapshots = {"start": weights(model)}
    train(ddp, optimizer, rows)
    snapshots["stage0"] = weights(model)
    new_mask = select(model, config.next_stage())
    error = None
    try:
        if mode == "rebuild":
            redraw(optimizer, new_mask, ddp)
        else:
            optimizer.redraw(new_mask)
        train(ddp, optimizer, rows)
    except RuntimeError as exc:
        error = str(exc).splitlines()[0]
    snapshots["stage1"] = weights(model)
    refusals = refused_redraws(model, optimizer) if mode == "rebuild" else {}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"snapshots": snapshots, "error": error, "refusals": refusals})
    if rank == 0:
        torch.save(
            {
                "ranks": gathered,
                "masks": [mask.to_json(), new_mask.to_json()],
            },
            out / f"ddp_{mode}.pt",
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
