"""HFT under sharding engines (DeepSpeed ZeRO-2/3, FSDP2) in the HF Trainer, TRL and Axolotl.

Under these engines HFT does not build an :class:`HFTOptimizer`. The mask is drawn and
applied (``requires_grad``) before the engine is built, and the engine's own optimizer
(the Trainer's plain torch optimizer, or DeepSpeed's from its JSON) is built over the
parameters that require grad. So:

- the engine's fp32 master copies, optimizer state and gradient partitions cover only the
  trainable half (ZeRO builds them from the optimizer's groups, FSDP2 from what requires
  grad), and its checkpoints carry that state in its own format, which resumes;
- the mask must train whole matrices: ZeRO flattens whole parameters and FSDP2's optimizer
  steps whole DTensor shards, neither can keep a frozen slice of a fused q/k/v tensor
  frozen, so such a mask (phi3, GPT-2, GPT-NeoX) is refused before training;
- one stage per run: the engine's optimizer is built once over one half, so a redraw
  inside a run is refused before training; the next stage is a new run from the saved
  model (``HFTConfig.next_stage()`` or the stage rule);
- a resumed run trains the half saved in the checkpoint's ``hft_mask.json``.

Each refusal is one ``HFTError`` line naming the engine and what to use instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..core.errors import HFTError
from ..core.mask import Mask
from ..core.units import Slices
from ._common import MASK_NAME

logger = logging.getLogger(__name__)

__all__ = [
    "adopt_checkpoint_mask",
    "args_engine",
    "check_trainer",
    "fsdp_engine",
    "check_mask",
    "mask_logs",
    "redraw_refusal",
    "save_mask_in_checkpoint",
    "start_line",
    "trainer_engine",
    "zero_engine",
]


def trainer_engine(trainer) -> str | None:
    """ "DeepSpeed ZeRO-N" or "FSDP2" for a Trainer that runs one, else None (DDP, one process).

    FSDP1 and ZeRO-0/1 are refused here, in one line.
    """
    if getattr(trainer, "is_deepspeed_enabled", False):
        config = getattr(getattr(trainer.args, "hf_deepspeed_config", None), "config", None) or {}
        return _zero(int((config.get("zero_optimization") or {}).get("stage", 0)))
    if getattr(trainer, "is_fsdp_enabled", False):
        plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
        return _fsdp(int(getattr(plugin, "fsdp_version", 1) or 1))
    return None


def args_engine(args) -> str | None:
    """The engine ``TrainingArguments`` ask for (before the Trainer builds its Accelerator).

    The Trainer's own view (:func:`trainer_engine`) decides in the end: on a machine where
    accelerate cannot shard (CPU processes), an FSDP request falls back to DDP.
    """
    if args is None:
        return None
    if getattr(args, "deepspeed", None):
        config = getattr(getattr(args, "hf_deepspeed_config", None), "config", None) or {}
        return _zero(int((config.get("zero_optimization") or {}).get("stage", 0)))
    if getattr(args, "fsdp", None):
        config = getattr(args, "fsdp_config", None) or {}
        return _fsdp(int(config.get("fsdp_version", config.get("version", 1)) or 1))
    return None


def zero_engine(stage: int) -> str:
    """ "DeepSpeed ZeRO-2" / "-3" for a ZeRO stage; ZeRO-0/1 refused in one line."""
    return _zero(stage)


def fsdp_engine(version: int) -> str:
    """ "FSDP2" for ``fsdp_version: 2``; FSDP1 refused in one line."""
    return _fsdp(version)


def _zero(stage: int) -> str:
    if stage not in (2, 3):
        raise HFTError(
            f"HFT under DeepSpeed ZeRO-{stage} is not supported: use ZeRO-2 or ZeRO-3 "
            "(integrations/deepspeed/zero2.json, zero3.json) or DDP"
        )
    return f"DeepSpeed ZeRO-{stage}"


def _fsdp(version: int) -> str:
    if version != 2:
        raise HFTError(
            f"HFT under FSDP{version} is not supported: FSDP1 flattens parameters and loses "
            "requires_grad per tensor; set fsdp_version: 2 (integrations/accelerate/fsdp2.yaml)"
        )
    return "FSDP2"


def check_trainer(engine: str, *, given, hft_model: bool, redraw_every_epoch: bool) -> None:
    """What HFTTrainer refuses under ``engine``, before any training (one line each)."""
    if given is not None:
        raise refuse_given_optimizer(engine)
    if hft_model:
        raise refuse_hft_model(engine)
    if redraw_every_epoch:
        raise redraw_refusal(engine, "redraw_every_epoch")


def check_mask(mask: Mask, engine: str) -> None:
    """Refuse a mask that trains slices of fused tensors: the engine steps whole tensors."""
    sliced = sorted(name for name, part in mask.params().items() if isinstance(part, Slices))
    if sliced:
        raise HFTError(
            f"HFT under {engine} trains whole matrices only; this mask trains slices of "
            f"{len(sliced)} fused tensor(s) (first: {sliced[0]!r}), whose frozen part the "
            "engine's optimizer would move; train this family with DDP"
        )


def redraw_refusal(engine: str, what: str = "a redraw inside one run") -> HFTError:
    """The one-line error for a redraw (epoch redraw, next_stage()) under ``engine``."""
    return HFTError(
        f"HFT {what} is not supported under {engine}: the engine's optimizer and its "
        "partitions are built once over one half; run each stage as its own run from the "
        "saved model (HFTConfig.next_stage(), or the stage rule), or use DDP"
    )


def refuse_given_optimizer(engine: str) -> HFTError:
    return HFTError(
        f"an HFTOptimizer in optimizers= cannot run under {engine}: the engine builds its own "
        "optimizer over the trainable half; pass hft_config and no optimizer"
    )


def refuse_hft_model(engine: str) -> HFTError:
    return HFTError(
        f"an HFTModel cannot train under {engine}: its save holds only the trained tensors "
        "and the engine saves whole sharded states; pass the plain model and hft_config"
    )


def start_line(mask: Mask, engine: str) -> str:
    """One line: the draw, the trainable fraction and who builds the optimizer."""
    c = mask.config
    done, total = mask.fractions()["total"]
    return (
        f"HFT: strategy={c.strategy} ratio={c.ratio} seed={c.seed} stage={c.stage}; "
        f"trainable {done / total:.4f} of all parameters ({done:,} of {total:,}); "
        f"under {engine}: the engine's optimizer over the trainable whole matrices"
    )


def mask_logs(mask: Mask) -> dict[str, float]:
    done, total = mask.fractions()["total"]
    return {"hft_trainable_fraction": done / total, "hft_stage": mask.config.stage}


def checkpoint_path(trainer, checkpoint) -> Path | None:
    if checkpoint is True:
        from transformers.trainer_utils import get_last_checkpoint

        checkpoint = get_last_checkpoint(trainer.args.output_dir)
    return Path(checkpoint) if checkpoint else None


def adopt_checkpoint_mask(trainer, checkpoint, model, engine: str) -> Mask | None:
    """Before a resume: train the half saved in the checkpoint (a later stage, another seed).

    The engine's optimizer state in the checkpoint covers that half, so it must be the one
    that requires grad when the engine is built. Returns the adopted mask, or None when the
    checkpoint has no ``hft_mask.json`` or holds the current one.
    """
    path = checkpoint_path(trainer, checkpoint)
    if path is None or not (path / MASK_NAME).is_file():
        return None
    saved = Mask.load(path / MASK_NAME)
    saved.check(model)
    check_mask(saved, engine)
    saved.apply(model)
    logger.info(
        f"HFT: resuming {path} with its saved half (stage {saved.config.stage}, "
        f"seed {saved.config.seed})"
    )
    return saved


def save_mask_in_checkpoint(trainer, trial, mask: Mask) -> None:
    """``hft_mask.json`` in the checkpoint just written (FSDP2's sharded checkpoints and
    DeepSpeed's do not all go through ``_save``)."""
    if not trainer.args.should_save:
        return
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    run_dir = Path(trainer._get_output_dir(trial=trial))
    folder = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
    if folder.is_dir():
        mask.save(folder / MASK_NAME)
