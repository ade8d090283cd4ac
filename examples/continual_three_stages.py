"""A continual run of three tasks, each stage training a freshly drawn half.

    python examples/continual_three_stages.py

``trainer.next_stage()`` redraws the half through ``HFTOptimizer.redraw``: state of
the parts that stay trainable is kept, state of newly frozen parts is freed.
"""

import tempfile

import torch
from datasets import Dataset
from transformers import TrainingArguments

from hft_plugins import HFTConfig
from hft_plugins.integrations.transformers import HFTTrainer
from hft_plugins.tiny import tiny_model, tiny_tokenizer

tokenizer = tiny_tokenizer()


def task(text: str) -> Dataset:
    ids = tokenizer([text] * 8)["input_ids"]
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


tasks = [task("one two three four."), task("red green blue red."), task("cat dog cow hen.")]
model = tiny_model("llama")

with tempfile.TemporaryDirectory() as out:
    trainer = HFTTrainer(
        model=model,
        args=TrainingArguments(
            output_dir=out,
            max_steps=6,
            per_device_train_batch_size=4,
            learning_rate=3e-3,
            logging_steps=6,
            report_to=[],
            use_cpu=True,
        ),
        train_dataset=tasks[0],
        hft_config=HFTConfig(seed=0, stage=0),
    )
    masks = []
    for stage, data in enumerate(tasks):
        if stage:
            trainer.next_stage()
        trainer.train_dataset = data
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainer.train()
        mask = trainer.hft_mask
        plan = mask.params()
        frozen_ok = all(
            torch.equal(before[n], p) for n, p in model.named_parameters() if n not in plan
        )
        masks.append(mask)
        print(
            f"stage {mask.config.stage}: loss {trainer.state.log_history[-2]['loss']:.3f}, "
            f"{len(plan)} tensors trained, frozen half unchanged: {frozen_ok}, "
            f"optimizer state {trainer.hft_optimizer.state_bytes():,} bytes"
        )

blocks = [{u.key for u in m.partition.block_units() if m.is_trainable(u)} for m in masks]
for a in range(3):
    for b in range(a + 1, 3):
        shared = len(blocks[a] & blocks[b]) / len(blocks[a])
        print(f"stages {a} and {b} share {shared:.0%} of their trained block units")
