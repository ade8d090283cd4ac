"""Check HFT under accelerate's FSDP2 on GPUs: frozen half bit-identical, the rest trained.

    accelerate launch --config_file integrations/accelerate/fsdp2.yaml \
        integrations/accelerate/check_fsdp2.py

Trains tiny llama (separate q/k/v) for 3 steps with HFTTrainer and prints one line per
model; phi3 (fused qkv: frozen slices) must be refused in one line under FSDP2 (the
Trainer's plain optimizer steps whole shards). accelerate shards only on GPUs; on CPU it
runs unsharded (DistributedType.NO) and phi3 trains through HFTOptimizer instead. The CPU
tests force the FSDP2 path: tests/distributed/test_trainer_sharded.py.
"""

import torch
from torch.distributed.tensor import DTensor
from transformers import TrainingArguments

from hft_plugins import HFTConfig, HFTError
from hft_plugins.core.optim import state_bytes
from hft_plugins.integrations.transformers import HFTTrainer
from hft_plugins.testing import tiny_model


def full(param) -> torch.Tensor:
    return (param.full_tensor() if isinstance(param, DTensor) else param).detach().float().cpu()


def frozen_part(tensor, slices) -> torch.Tensor:
    keep = torch.ones(tensor.shape[slices.dim], dtype=torch.bool)
    for a, b in slices.ranges:
        keep[a:b] = False
    return tensor.index_select(slices.dim, keep.nonzero().flatten())


def main() -> None:
    rows = torch.randint(7, 90, (16, 12), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": r, "labels": r} for r in rows]
    for family in ("llama", "phi3"):
        model = tiny_model(family)
        before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
        args = TrainingArguments(
            output_dir=f"/tmp/hft-check-fsdp2-{family}",
            per_device_train_batch_size=2,
            max_steps=3,
            learning_rate=1e-2,
            weight_decay=0.1,
            bf16=torch.cuda.is_available(),
            use_cpu=not torch.cuda.is_available(),
            report_to=[],
            save_strategy="no",
        )
        try:
            trainer = HFTTrainer(
                model=model, args=args, train_dataset=data, hft_config=HFTConfig(seed=1)
            )
        except HFTError as exc:
            print(f"{family}: refused: {exc}")
            continue
        trainer.train()
        after = {n: full(p) for n, p in trainer.model.named_parameters()}
        plan = trainer.hft_mask.params()
        frozen_ok = all(torch.equal(before[n], after[n]) for n in before if n not in plan)
        slices_ok = all(
            torch.equal(frozen_part(before[n], s), frozen_part(after[n], s))
            for n, s in plan.items()
            if s is not None
        )
        moved = sum(not torch.equal(before[n], after[n]) for n in plan)
        if trainer.accelerator.is_main_process:
            print(
                f"{family}: {trainer.accelerator.distributed_type} "
                f"frozen bit-identical={frozen_ok} frozen slices bit-identical={slices_ok} "
                f"trainable tensors moved={moved}/{len(plan)} "
                f"optimizer state bytes on rank 0={state_bytes(trainer.optimizer.optimizer)}"
            )


if __name__ == "__main__":
    main()
