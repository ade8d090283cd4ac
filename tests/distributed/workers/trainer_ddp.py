"""HFTTrainer under torchrun (accelerate's multi-CPU DDP, gloo): two epochs, a redraw between.

Rank 0 writes every rank's weights at the start, at the end of epoch 0 (stage 0) and at
the end (stage 1), the two masks, and the distributed type accelerate ran.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback, TrainingArguments

from hft_plugins import HFTConfig
from hft_plugins.integrations.transformers import HFTCallback, HFTTrainer
from hft_plugins.testing import tiny_model
from tests.helpers import lm_dataset, snapshot


class Snapshots(TrainerCallback):
    def __init__(self, model):
        self.model = model
        self.taken = {"start": snapshot(model)}
        self.masks = []

    def on_epoch_end(self, args, state, control, optimizer=None, **kwargs):
        self.taken[f"stage{len(self.masks)}"] = snapshot(self.model)
        self.masks.append(optimizer.optimizer.mask.to_json())


def main() -> None:
    out = Path(sys.argv[1])
    model = tiny_model("llama", seed=0)
    snapshots = Snapshots(model)
    trainer = HFTTrainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(out / "run"),
            per_device_train_batch_size=2,
            learning_rate=1e-2,
            weight_decay=0.1,
            num_train_epochs=2,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
            data_seed=0,
            ddp_backend="gloo",
        ),
        train_dataset=lm_dataset(n=16),  # 4 steps per epoch on each of 2 ranks
        hft_config=HFTConfig(seed=5),
        callbacks=[HFTCallback(redraw_every_epoch=True), snapshots],
    )
    trainer.train()
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, snapshots.taken)
    if dist.get_rank() == 0:
        torch.save(
            {
                "ranks": gathered,
                "masks": snapshots.masks,
                "distributed_type": str(trainer.accelerator.distributed_type),
                "wrapper": type(trainer.model_wrapped).__name__,
                "find_unused_parameters": getattr(
                    trainer.model_wrapped, "find_unused_parameters", None
                ),
            },
            out / "trainer_ddp.pt",
        )
    dist.barrier()


if __name__ == "__main__":
    main()
