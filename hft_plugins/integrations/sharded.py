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
from collections.abc import Mapping
from pathlib import Path

from ..core.errors import HFTError
from ..core.mask import HFTMask
from ..core.stage import MASK_NAME
from ..core.units import Slices

logger = logging.getLogger(__name__)

__all__ = [
    "args_engine",
    "check_mask",
    "check_trainer",
    "checkpoint_mask",
    "deepspeed_engine",
    "fsdp_engine",
    "redraw_refusal",
    "trainer_engine",
]


def trainer_engine(trainer) -> str | None:
    """ "DeepSpeed ZeRO-N" or "FSDP2" for a Trainer that runs one, else None (DDP, one process).

    FSDP1 and ZeRO-0/1 are refused here, in one line.
    """
    if getattr(trainer, "is_deepspeed_enabled", False):
        return deepspeed_engine(_deepspeed_config(trainer.args))
    if getattr(trainer, "is_fsdp_enabled", False):
        plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
        return fsdp_engine(getattr(plugin, "fsdp_version", 1))
    return None


def args_engine(args) -> str | None:
    """The engine ``TrainingArguments`` ask for (before the Trainer builds its Accelerator).

    The Trainer's own view (:func:`trainer_engine`) decides in the end: on a machine where
    accelerate cannot shard (CPU processes), an FSDP request falls back to DDP.
    """
    if args is None:
        return None
    if getattr(args, "deepspeed", None):
        return deepspeed_engine(_deepspeed_config(args))
    if getattr(args, "fsdp", None):
        config = getattr(args, "fsdp_config", None) or {}
        return fsdp_engine(config.get("fsdp_version", config.get("version")))
    return None


def _deepspeed_config(args) -> Mapping:
    return getattr(getattr(args, "hf_deepspeed_config", None), "config", None) or {}


def deepspeed_engine(config: Mapping) -> str:
    """ "DeepSpeed ZeRO-2" / "-3" for a DeepSpeed config (its ``zero_optimization.stage``);
    ZeRO-0/1 refused in one line."""
    stage = int((config.get("zero_optimization") or {}).get("stage", 0) or 0)
    if stage not in (2, 3):
        raise HFTError(
            f"HFT under DeepSpeed ZeRO-{stage} is not supported: use ZeRO-2 or ZeRO-3 "
            "(zero_optimization.stage in the DeepSpeed config) or DDP"
        )
    return f"DeepSpeed ZeRO-{stage}"


def fsdp_engine(version) -> str:
    """ "FSDP2" for ``fsdp_version: 2``; FSDP1 (the default when not given) refused in one line."""
    version = int(version or 1)
    if version != 2:
        raise HFTError(
            f"HFT under FSDP{version} is not supported: FSDP1 flattens parameters and loses "
            "requires_grad per tensor; set fsdp_version: 2 (in the accelerate config, or "
            "fsdp_config of the TrainingArguments)"
        )
    return "FSDP2"


def check_trainer(engine: str, *, given, hft_model: bool, redraw_every_epoch: bool) -> None:
    """What HFTTrainer refuses under ``engine``, before any training (one line each)."""
    if given is not None:
        raise HFTError(
            f"an HFTOptimizer in optimizers= cannot run under {engine}: the engine builds its "
            "own optimizer over the trainable half; pass hft_config and no optimizer"
        )
    if hft_model:
        raise HFTError(
            f"an HFTModel cannot train under {engine}: its save holds only the trained tensors "
            "and the engine saves whole sharded states; pass the plain model and hft_config"
        )
    if redraw_every_epoch:
        raise redraw_refusal(engine, "redraw_every_epoch")


def check_mask(mask: HFTMask, engine: str) -> None:
    """Refuse a mask that trains slices of fused tensors: the engine steps whole tensors."""
    sliced = sorted(name for name, part in mask.params().items() if isinstance(part, Slices))
    if sliced:
        raise HFTError(
            f"HFT under {engine} trains whole tensors only; this mask trains slices of "
            f"{len(sliced)} fused tensor(s) (first: {sliced[0]!r}), whose frozen part the "
            "engine's optimizer would move; set whole_tensors=True (hft_whole_tensors: true) "
            "to train or freeze each fused tensor whole, or train with DDP"
        )


def redraw_refusal(engine: str, what: str = "a redraw inside one run") -> HFTError:
    """The one-line error for a redraw (epoch redraw, next_stage()) under ``engine``."""
    return HFTError(
        f"HFT {what} is not supported under {engine}: the engine's optimizer and its "
        "partitions are built once over one half; run each stage as its own run from the "
        "saved model (HFTConfig.next_stage(), or the stage rule), or use DDP"
    )


def checkpoint_mask(checkpoint, model, engine: str) -> HFTMask | None:
    """The half a resumed run trains: the one saved in the checkpoint's ``hft_mask.json``
    (another stage or seed than the config's, after a redraw or a change of config).

    The engine's optimizer state in the checkpoint covers that half, so it must be the one
    that requires grad when the engine is built. ``checkpoint`` is a directory (or None: no
    resume); None when it holds no ``hft_mask.json``.
    """
    path = Path(str(checkpoint)) / MASK_NAME if checkpoint else None
    if path is None or not path.is_file():
        return None
    saved = HFTMask.load(path)
    saved.check(model)
    check_mask(saved, engine)
    logger.info(
        f"HFT: resuming {checkpoint} with its saved half (stage {saved.config.stage}, "
        f"seed {saved.config.seed})"
    )
    return saved
