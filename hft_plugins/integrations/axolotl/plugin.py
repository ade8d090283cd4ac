"""``HFTPlugin``: axolotl's ``BasePlugin`` with HFT's hooks (imported only when axolotl
looks the plugin up).

How it uses axolotl 0.19.0's hooks (which ones are really called, and when):

- ``register(cfg)`` sees the raw YAML before axolotl validates it: :func:`check_config`
  refuses conflicting options and decides the stage, before any data or model loads.
- ``post_model_load(cfg, model)`` runs for every model the loader builds. The first one
  in a run is the policy: a GGUF-loaded policy is made a plain float model
  (``models.plain_weights``), and the mask is drawn and applied to it. DPO's reference
  model is loaded afterwards through the same loader and hooks; it is recognised as the
  second model and left untouched.
- ``post_trainer_create(cfg, trainer)`` checks that the trainer trains the masked model
  (and does not use it as reference), then installs :class:`HFTOptimizerFactory` as the
  trainer's optimizer factory: the plugin ``create_optimizer`` hook is declared by
  axolotl but never called, while the trainer builds its optimizer from
  ``optimizer_cls_and_kwargs`` at train time, so resumed optimizer state loads into our
  optimizer as usual. The trainer's reference model (DPO, KTO, ...) is replaced by one
  that shares the policy's frozen half (``trl.shared_reference``, as the TRL trainers
  do); the loaded copy is dropped.

Under DeepSpeed ZeRO-2/3 (``deepspeed:``) or FSDP2 (``fsdp_version: 2``) no HFTOptimizer
is built (integrations/sharded.py): the mask is drawn once on the loaded policy (ZeRO-3:
partitioned at load, drawn from ``ds_shape``) and applied as ``requires_grad``, a mask
with slices of fused tensors is refused in one line there, and axolotl's own optimizer is
built by the engine over what requires grad. The checkpoints are the engine's, with
``hft_mask.json`` beside; a resumed run trains the half in the checkpoint's
``hft_mask.json``; one stage per run.
"""

from __future__ import annotations

from pathlib import Path

from axolotl.integrations.base import BasePlugin

from ...core.config import HFTConfig, get_hft_config
from ...core.errors import HFTError
from ...core.mask import HFTMask, select
from ...core.stage import MASK_NAME
from .. import sharded
from ..models import plain_weights
from .config import (
    LOG,
    check_config,
    checked_optimizer_choice,
    config_engine,
    optimizer_cls_and_kwargs,
    with_stage,
)

__all__ = ["HFTPlugin"]


class HFTPlugin(BasePlugin):
    """Half Fine-Tuning for axolotl: ``hft: true`` trains a drawn half of each block."""

    def __init__(self):
        super().__init__()
        self._reset()

    def _reset(self):
        self.config: HFTConfig | None = None
        self.policy = None
        self.mask: HFTMask | None = None
        self.engine: str | None = None  # DeepSpeed ZeRO-2/3, FSDP2: no HFTOptimizer

    def get_input_args(self) -> str:
        return "hft_plugins.integrations.axolotl.HFTArgs"

    def register(self, cfg):
        self._reset()
        self.config = check_config(cfg)

    def post_model_load(self, cfg, model):
        config = get_hft_config(cfg)
        if config is None:
            return
        if self.policy is not None:
            # The policy always loads first (axolotl.train.setup_model_and_trainer); a second
            # model in the same run is the DPO/KTO reference: no mask (it is replaced by one
            # sharing the policy's frozen half in post_trainer_create).
            LOG.info("HFT: leaving the reference model untouched")
            return
        plain_weights(model)  # a GGUF-loaded model: its quantized mark cleared, said once
        # the stage decided on the raw YAML in register(); else decide it now
        config = self.config if self.config is not None else with_stage(cfg, config, model)
        self.engine = config_engine(cfg)
        mask = None
        if self.engine is not None:  # a resumed run trains its checkpoint's half
            resume = cfg.get("resume_from_checkpoint")
            mask = sharded.checkpoint_mask(resume, model, self.engine)
        if mask is None:
            mask = select(model, config)  # ZeRO-3 partitioned at load: from ds_shape
            if self.engine is not None:
                sharded.check_mask(mask, self.engine)
        mask.apply(model)
        if not mask.config.train_embeddings and cfg.gradient_checkpointing:
            model.enable_input_require_grads()  # else checkpointed blocks get no grad
        self.policy, self.mask = model, mask
        LOG.info(f"HFT: mask applied to the policy model\n{mask.summary()}")

    def post_trainer_create(self, cfg, trainer):
        if get_hft_config(cfg) is None:
            return
        if self.mask is None or trainer.model is not self.policy:
            raise HFTError("the trainer's model is not the one the HFT plugin masked")
        if getattr(trainer, "ref_model", None) is self.policy:
            raise HFTError("the HFT-masked policy model is also the reference model")
        from ..transformers import HFTEngineCallback, HFTStageCallback

        # the trainer's view decides: on CPU processes an FSDP request may run as DDP
        self.engine = sharded.trainer_engine(trainer)
        if self.engine is None:
            trainer.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs(trainer, self.mask)
            trainer.add_callback(HFTStageCallback())  # stage_end when training ends
            self._share_reference(cfg, trainer)
        else:
            sharded.check_mask(self.mask, self.engine)
            if trainer.optimizer_cls_and_kwargs is not None:  # an axolotl custom optimizer
                checked_optimizer_choice(trainer)
            mask = self.mask
            trainer.add_callback(HFTEngineCallback(self.engine, lambda: mask))
        if trainer.is_world_process_zero():
            Path(trainer.args.output_dir).mkdir(parents=True, exist_ok=True)
            self.mask.save(Path(trainer.args.output_dir) / MASK_NAME)

    def _share_reference(self, cfg, trainer):
        """Give the trainer a reference that shares the policy's frozen half (as the TRL
        trainers do) in place of the full copy axolotl loaded. Not when resuming (the
        checkpoint's half may train a shared tensor) or with ``sync_ref_model`` (the
        reference follows the policy)."""
        loaded = getattr(trainer, "ref_model", None)
        if loaded is None:
            return
        why = "resume_from_checkpoint" if cfg.get("resume_from_checkpoint") else None
        if getattr(trainer.args, "sync_ref_model", False):
            why = "sync_ref_model"
        if why is not None:
            LOG.info(f"HFT: with {why} the reference model keeps its own copy of the weights")
            return
        from ..trl import shared_reference

        reference = shared_reference(self.policy)
        separate = parameter_bytes(self.policy, loaded)
        # prepared as TRL prepares its reference; accelerate lets go of the loaded one
        accelerator = trainer.accelerator
        accelerator._models = [m for m in accelerator._models if m is not loaded]
        trainer.ref_model = accelerator.prepare_model(reference, evaluation_mode=True)
        LOG.info(
            "HFT: the reference model shares the policy's frozen half: policy and reference "
            f"hold {parameter_bytes(self.policy, reference):,} bytes of parameters "
            f"({separate:,} with a reference of its own)"
        )

    def post_train_unload(self, cfg):
        self._reset()


def parameter_bytes(*models) -> int:
    """The bytes of the parameters of ``models``, a tensor shared between them counted once."""
    seen = {id(p): p for model in models for p in model.parameters()}
    return sum(p.numel() * p.element_size() for p in seen.values())
