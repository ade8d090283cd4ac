"""Half Fine-Tuning with TRL's SFTTrainer: ``hft_config=`` where TRL takes ``peft_config``.

python examples/trl_sft.py
"""

import tempfile

from datasets import Dataset
from trl import SFTConfig

from hft_plugins import HFTConfig
from hft_plugins.integrations.trl import HFTSFTTrainer
from hft_plugins.testing import tiny_model, tiny_tokenizer

pairs = [("What is 2+2?", "4."), ("Name a colour.", "Blue."), ("Say hello.", "Hello!")] * 4
dataset = Dataset.from_list(
    [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in pairs
    ]
)

with tempfile.TemporaryDirectory() as out:
    trainer = HFTSFTTrainer(
        model=tiny_model("qwen2"),
        args=SFTConfig(
            output_dir=out,
            max_steps=10,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            logging_steps=5,
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            report_to=[],
        ),
        train_dataset=dataset,
        processing_class=tiny_tokenizer(),
        hft_config=HFTConfig(seed=0, stage=0),
    )
    trainer.train()
    trainer.save_model(out)  # a normal full checkpoint; the mask goes beside it
    trainer.hft_mask.save(f"{out}/hft_mask.json")

losses = [round(e["loss"], 3) for e in trainer.state.log_history if "loss" in e]
done, total = trainer.hft_mask.fractions()["blocks"]
print(f"SFT losses {losses}; trained {done:,} of {total:,} block parameters")
