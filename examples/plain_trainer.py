"""Half Fine-Tuning with the plain Hugging Face Trainer, on a tiny llama, on CPU.

    python examples/plain_trainer.py

HFTTrainer is transformers.Trainer plus ``hft_config``: it draws the half, freezes the
rest and builds an optimizer that holds state only for the half.
"""

import tempfile

import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, TrainingArguments

from hft_plugins import HFTConfig
from hft_plugins.integrations.transformers import HFTTrainer
from hft_plugins.testing import tiny_model, tiny_tokenizer

tokenizer = tiny_tokenizer()
texts = ["the cat sat on the mat.", "a dog ran in the park.", "blue sky, green grass."] * 4
dataset = Dataset.from_dict({"text": texts}).map(
    lambda row: tokenizer(row["text"]), remove_columns=["text"]
)
model = tiny_model("llama")
before = {n: p.detach().clone() for n, p in model.named_parameters()}

with tempfile.TemporaryDirectory() as out:
    trainer = HFTTrainer(
        model=model,
        args=TrainingArguments(
            output_dir=out,
            max_steps=10,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            logging_steps=5,
            report_to=[],
            use_cpu=True,
        ),
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        hft_config=HFTConfig(strategy="category", ratio=0.5, seed=0),
    )
    print(trainer.hft_mask.summary())
    trainer.train()

plan = trainer.hft_mask.params()
frozen = [n for n in before if n not in plan]
assert all(torch.equal(before[n], dict(model.named_parameters())[n]) for n in frozen)
print(
    f"{len(frozen)} frozen tensors unchanged; optimizer state {trainer.hft_optimizer.state_bytes():,} bytes"
)
print("logged:", {k: v for k, v in trainer.state.log_history[0].items() if k.startswith("hft")})
