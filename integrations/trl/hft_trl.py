"""SFT or DPO with TRL from the command line, as TRL's own scripts; ``--hft`` turns on HFT.

    python integrations/trl/hft_trl.py sft --model_name_or_path MODEL \
        --dataset_name integrations/trl/sft.jsonl --output_dir out/sft --hft
    python integrations/trl/hft_trl.py dpo --model_name_or_path out/sft \
        --dataset_name integrations/trl/dpo.jsonl --output_dir out/dpo --hft

The arguments are TRL's (``ScriptArguments``, ``SFTConfig`` / ``DPOConfig``,
``ModelConfig``) plus ``--hft`` and one ``--hft_<field>`` per HFTConfig field; a YAML
file of the same keys goes in ``--config``. ``--hft_stage`` may be left out: the stage
then follows the one in the model directory's ``hft_mask.json`` (DPO on the SFT output
is stage 1); SFT on a fresh model starts at 0, DPO on a fresh model needs it given.
``--dataset_name`` takes a hub id, a local directory, or a ``.jsonl``/``.json``/
``.csv``/``.parquet`` file.
"""

import sys
from pathlib import Path

from datasets import load_dataset
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from hft_plugins import HFTError, get_hft_config
from hft_plugins.integrations.trl import HFTDPOConfig, HFTDPOTrainer, HFTSFTConfig, HFTSFTTrainer

MODES = {"sft": (HFTSFTConfig, HFTSFTTrainer), "dpo": (HFTDPOConfig, HFTDPOTrainer)}
FILE_TYPES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load(script: ScriptArguments):
    """The dataset of ``--dataset_name``: a local data file, a local directory or a hub id."""
    path = Path(script.dataset_name)
    if path.is_file():
        if path.suffix not in FILE_TYPES:
            raise HFTError(f"--dataset_name {path}: not one of {', '.join(FILE_TYPES)}")
        return load_dataset(
            FILE_TYPES[path.suffix], data_files={script.dataset_train_split: str(path)}
        )
    return load_dataset(
        script.dataset_name, name=script.dataset_config, streaming=script.dataset_streaming
    )


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in MODES:
        sys.exit(
            f"usage: hft_trl.py {{{'|'.join(MODES)}}} [options]; --help after the mode lists them"
        )
    config_cls, trainer_cls = MODES[argv[0]]
    parser = TrlParser((ScriptArguments, config_cls, ModelConfig))
    script, args, model_args = parser.parse_args_and_config(argv[1:])
    if script.dataset_name is None:
        raise HFTError("--dataset_name is required (a hub id, a directory or a data file)")
    if model_args.model_name_or_path is None:
        raise HFTError("--model_name_or_path is required")
    args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(args.model_init_kwargs or {}),
    }
    dataset = load(script)
    trainer = trainer_cls(
        model=model_args.model_name_or_path,
        args=args,
        train_dataset=dataset[script.dataset_train_split],
        eval_dataset=dataset[script.dataset_test_split] if args.eval_strategy != "no" else None,
        peft_config=get_peft_config(model_args),
        hft_config=get_hft_config(args),
    )
    if trainer.hft_config is not None:
        print(trainer.hft_mask.summary())
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    if trainer.hft_config is not None:  # the next stage's --hft_stage follows this file
        trainer.hft_mask.save(Path(args.output_dir) / "hft_mask.json")
    print(f"saved to {args.output_dir}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except HFTError as exc:  # a bad --hft_* value or combination: one line, as argparse does
        sys.exit(f"hft_trl.py: error: {exc}")
