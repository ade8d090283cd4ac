"""SFT or DPO with TRL from the command line; ``--hft`` turns on Half Fine-Tuning.

    python integrations/trl/hft_trl.py sft --model_name_or_path MODEL \
        --dataset integrations/trl/sft.jsonl --output_dir out/sft --hft
    python integrations/trl/hft_trl.py dpo --model_name_or_path out/sft \
        --dataset integrations/trl/dpo.jsonl --output_dir out/dpo --hft --hft_stage 1

Every SFTConfig / DPOConfig flag works as in TRL's own scripts; ``--hft_strategy``,
``--hft_ratio``, ``--hft_seed`` and ``--hft_stage`` choose the half. A YAML file of the
same keys goes in ``--config``.
"""

import sys
from dataclasses import dataclass, field

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import TrlParser

from hft_plugins.integrations.trl import HFTDPOConfig, HFTDPOTrainer, HFTSFTConfig, HFTSFTTrainer

MODES = {"sft": (HFTSFTConfig, HFTSFTTrainer), "dpo": (HFTDPOConfig, HFTDPOTrainer)}


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "A model directory (or hub id, if online)."})
    dataset: str = field(
        metadata={"help": "A local .jsonl file: messages (SFT) or prompt/chosen/rejected (DPO)."}
    )


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in MODES:
        sys.exit(
            f"usage: hft_trl.py {{{'|'.join(MODES)}}} [options]; --help after the mode lists them"
        )
    config_cls, trainer_cls = MODES[argv[0]]
    script, args = TrlParser((ScriptArguments, config_cls)).parse_args_and_config(argv[1:])
    model = AutoModelForCausalLM.from_pretrained(script.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    dataset = load_dataset("json", data_files=script.dataset, split="train")
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    if trainer.hft_config is not None:
        print(trainer.hft_mask.summary())
    trainer.train()
    trainer.save_model(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    if trainer.hft_config is not None:
        trainer.hft_mask.save(f"{args.output_dir}/hft_mask.json")
    print(f"saved to {args.output_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
