"""Half Fine-Tuning with TRL's DPOTrainer, with a reference model that costs only the half.

    python examples/trl_dpo.py

With no ``ref_model``, HFTDPOTrainer builds a reference that shares every frozen tensor
with the policy and copies only the trainable ones: the frozen half never changes, so
sharing it is exact. (TRL would otherwise reload a full copy from the model's path,
which a model built in code does not have.)
"""

import tempfile

from datasets import Dataset
from trl import DPOConfig

from hft_plugins import HFTConfig
from hft_plugins.integrations.trl import HFTDPOTrainer
from hft_plugins.testing import tiny_model, tiny_tokenizer


def storage_bytes(*modules):
    seen = {}
    for module in modules:
        for p in module.parameters():
            seen[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    return sum(seen.values())


rows = [("Q: 2+2? A:", " 4.", " 5."), ("Q: Capital of France? A:", " Paris.", " Rome.")] * 4
dataset = Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows])
model = tiny_model("llama")

with tempfile.TemporaryDirectory() as out:
    trainer = HFTDPOTrainer(
        model=model,
        args=DPOConfig(
            output_dir=out,
            max_steps=8,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            logging_steps=4,
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            report_to=[],
        ),
        train_dataset=dataset,
        processing_class=tiny_tokenizer(),
        hft_config=HFTConfig(stage=1),  # DPO after SFT: the next stage, a new half
    )
    policy = storage_bytes(model)
    reference = storage_bytes(model, trainer.ref_model) - policy
    print(f"policy {policy:,} bytes; the reference adds {reference:,} ({reference / policy:.0%})")
    trainer.train()

losses = [round(e["loss"], 4) for e in trainer.state.log_history if "loss" in e]
print(f"DPO losses {losses}")
