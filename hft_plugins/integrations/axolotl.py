"""Axolotl plugin: ``hft: true`` in a YAML trains a drawn half of each block (HFT).

    plugins:
      - hft_plugins.integrations.axolotl.HFTPlugin
    hft: true
    hft_ratio: 0.5

How it uses axolotl 0.19.0's hooks (which ones are really called, and when):

- ``register(cfg)`` sees the raw YAML before axolotl validates it: conflicting
  options (adapters, ``unfrozen_parameters``, LISA, per-group learning rates,
  DeepSpeed ZeRO-0/1, FSDP1) fail here with one line, before any data or model loads.
- ``post_model_load(cfg, model)`` runs for every model the loader builds. The
  first one in a run is the policy: a GGUF-loaded policy is made a plain float
  model (``models.plain_weights``), and the mask is drawn and applied to it. DPO's
  reference model is loaded afterwards through the same loader and hooks; it is
  recognised as the second model and left untouched.
- ``post_trainer_create(cfg, trainer)`` checks that the trainer trains the
  masked model (and does not use it as reference), then installs
  :class:`HFTOptimizerFactory` as the trainer's optimizer factory: the plugin
  ``create_optimizer`` hook is declared by axolotl but never called, while the
  trainer builds its optimizer from ``optimizer_cls_and_kwargs`` at train time,
  so resumed optimizer state loads into our optimizer as usual. The trainer's
  reference model (DPO, KTO, ...) is replaced by one that shares the policy's frozen
  half (``shared_reference``, as the TRL trainers do); the loaded copy is dropped.

Under DeepSpeed ZeRO-2/3 (``deepspeed:``) or FSDP2 (``fsdp_version: 2``) no
HFTOptimizer is built (integrations/sharded.py): the mask is drawn once on the loaded
policy (ZeRO-3: partitioned at load, drawn from ``ds_shape``) and applied as
``requires_grad``, a mask with slices of fused tensors is refused in one line there,
and axolotl's own optimizer is built by the engine over what requires grad. The
checkpoints are the engine's, with ``hft_mask.json`` beside; a resumed run trains the
half in the checkpoint's ``hft_mask.json``; one stage per run.

Only this module imports axolotl, and only when ``HFTPlugin`` is first looked
up; :func:`check_config` and :class:`HFTArgs` work without axolotl installed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.config import HFTConfig
from ..core.errors import HFTError
from ..core.mask import Mask, select
from ..core.optim import HFTOptimizer
from . import sharded
from ._common import (
    MASK_NAME,
    axolotl_args_model,
    build_hft_optimizer,
    check_optimizer_class,
    config_from_settings,
    resolve_stage,
    shared_reference,
)
from .models import plain_weights

LOG = logging.getLogger("axolotl.hft_plugins")  # under axolotl's logger, so its log config shows it

# Options whose job HFT does differently; each would silently undo or bypass the mask.
_CONFLICTS = {
    "adapter": "an adapter trains new weights while HFT trains half of the existing ones",
    "unfrozen_parameters": "axolotl applies it after the plugin and would override the mask",
    "loraplus_lr_ratio": "HFT builds the optimizer itself, so per-group learning rates are ignored",
    "embedding_lr": "HFT builds the optimizer itself, so per-group learning rates are ignored",
    "embedding_lr_scale": "HFT builds the optimizer itself, so per-group learning rates are ignored",
    "lr_groups": "HFT builds the optimizer itself, so per-group learning rates are ignored",
}
_LISA = "LISA switches the trainable layers during training; HFT fixes one half per stage"

# The YAML keys: ``hft`` and ``hft_<field>`` for every HFTConfig field, generated from it.
HFTArgs = axolotl_args_model()
HFTArgs.__module__ = __name__


def hft_config(cfg: Mapping[str, Any]) -> HFTConfig | None:
    """The HFTConfig an axolotl config asks for, or None when ``hft`` is off.

    Its stage is None when ``hft_stage`` is not set: :func:`resolve_config` decides it.
    """
    return config_from_settings(cfg, turn_on="hft: true")


def _run_kind(cfg: Mapping[str, Any]) -> str | None:
    """What the run trains, for the stage rule: None for SFT, else e.g. "rl: dpo"."""
    if cfg.get("rl"):
        rl = cfg["rl"]
        return f"rl: {getattr(rl, 'value', rl)}"
    for key in ("reward_model", "process_reward_model"):
        if cfg.get(key):
            return f"{key}: true"
    return None


def resolve_config(cfg: Mapping[str, Any], model=None) -> HFTConfig | None:
    """:func:`hft_config` with the stage decided by the stage rule.

    The previous stage is read from ``model`` when given (the loaded policy), else from
    ``hft_mask.json`` beside ``base_model``'s weights (its directory or Hub repo). SFT
    starts at stage 0; an ``rl:`` or reward-model run needs ``hft_stage`` unless the base
    model has a previous stage.
    """
    config = hft_config(cfg)
    if config is None:
        return None
    kind = _run_kind(cfg)
    return resolve_stage(
        config,
        model if model is not None else cfg.get("base_model"),
        trainer=f"axolotl {kind}" if kind else "axolotl",
        first_stage=kind is None,
        how="set hft_stage: {n}",
    )


def config_engine(cfg: Mapping[str, Any]) -> str | None:
    """The sharding engine an axolotl config asks for: "DeepSpeed ZeRO-2/3", "FSDP2" or None.

    ``deepspeed:`` is a JSON path (read relative to the working directory, as axolotl
    does) or the JSON itself; FSDP's version is ``fsdp_version`` or
    ``fsdp_config.fsdp_version`` (axolotl's default: 1). ZeRO-0/1 and FSDP1 are refused
    here, in one line; a ``deepspeed:`` file that cannot be read is left to the trainer
    (:func:`sharded.trainer_engine`), which decides in the end.
    """
    ds = cfg.get("deepspeed")
    if ds not in (None, False, "", {}):
        if isinstance(ds, Mapping):
            config = ds
        else:
            try:
                config = json.loads(Path(str(ds)).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return "DeepSpeed"
        zero = config.get("zero_optimization") or {}
        return sharded.zero_engine(int(zero.get("stage", 0) or 0))
    fsdp_config = cfg.get("fsdp_config") or {}
    if cfg.get("fsdp") or fsdp_config:
        version = cfg.get("fsdp_version")
        if version is None and isinstance(fsdp_config, Mapping):
            version = fsdp_config.get("fsdp_version", fsdp_config.get("version"))
        return sharded.fsdp_engine(int(version or 1))
    return None


def check_config(cfg: Mapping[str, Any]) -> HFTConfig | None:
    """Reject options that conflict with ``hft: true``; return its HFTConfig (None when off).

    Pure (no axolotl import) so it is testable anywhere; the plugin calls it on
    the raw YAML, where unset options are absent rather than filled with defaults.
    The stage is decided here (from ``base_model``'s ``hft_mask.json``), so a missing
    ``hft_stage`` fails before any data or model loads.
    """
    config = hft_config(cfg)
    if config is None:
        return None
    for key, why in _CONFLICTS.items():
        value = cfg.get(key)
        if value not in (None, False, "", [], {}):
            raise HFTError(f"hft: true cannot be combined with {key}: {value!r} ({why})")
    for key in sorted(k for k in cfg if isinstance(k, str) and k.startswith("lisa_")):
        if cfg[key] is not None:
            raise HFTError(f"hft: true cannot be combined with {key}: {cfg[key]!r} ({_LISA})")
    config_engine(cfg)  # ZeRO-0/1 and FSDP1 stop here
    return resolve_config(cfg)


class HFTOptimizerFactory:
    """Builds the HFTOptimizer when the trainer builds its optimizer.

    transformers calls ``factory()(model, **kwargs)``, axolotl's trainers
    ``factory()(model, training_args, **kwargs)``; both end here.
    """

    def __call__(
        self,
        model,
        training_args=None,
        *,
        hft_mask: Mask,
        optimizer_cls,
        weight_decay: float = 0.0,
        **kwargs,
    ) -> HFTOptimizer:
        optimizer = build_hft_optimizer(
            model, hft_mask, optimizer_cls, kwargs, weight_decay=weight_decay
        )
        LOG.info(f"HFT: training with {optimizer!r}")
        return optimizer


def optimizer_cls_and_kwargs(trainer, mask: Mask) -> tuple[type, dict[str, Any]]:
    """The trainer's own optimizer choice, wrapped so that only the mask's half has state."""
    if trainer.optimizer_cls_and_kwargs is not None:  # an axolotl custom optimizer
        optimizer_cls, kwargs = trainer.optimizer_cls_and_kwargs
    else:
        optimizer_cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
    optim = str(getattr(trainer.args.optim, "value", trainer.args.optim))
    check_optimizer_class(optimizer_cls, kwargs, f"optimizer: {optim}")
    kwargs = {**kwargs, "weight_decay": trainer.args.weight_decay}
    return HFTOptimizerFactory, {"hft_mask": mask, "optimizer_cls": optimizer_cls, **kwargs}


def _checkpoint_mask(cfg: Mapping[str, Any], model) -> Mask | None:
    """Under an engine, the half saved in ``resume_from_checkpoint``'s ``hft_mask.json``.

    The engine's optimizer state in the checkpoint covers that half, so it must be the
    one that requires grad when the engine is built (it may be another stage or seed
    than the YAML's). None when the run does not resume or the checkpoint has no mask.
    """
    resume = cfg.get("resume_from_checkpoint")
    if not resume or not (Path(str(resume)) / MASK_NAME).is_file():
        return None
    saved = Mask.load(Path(str(resume)) / MASK_NAME)
    saved.check(model)
    LOG.info(f"HFT: resuming {resume} with its saved half (stage {saved.config.stage})")
    return saved


def _mask_in_checkpoints(mask: Mask):
    """A callback writing ``hft_mask.json`` into each checkpoint the trainer writes (the
    engine's checkpoints carry no HFTOptimizer state, so the half is recorded beside)."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class HFTMaskInCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if args.should_save and folder.is_dir():
                mask.save(folder / MASK_NAME)

    return HFTMaskInCheckpoints()


def parameter_bytes(*models) -> int:
    """The bytes of the parameters of ``models``, a tensor shared between them counted once."""
    seen = {id(p): p for model in models for p in model.parameters()}
    return sum(p.numel() * p.element_size() for p in seen.values())


def _build_plugin_class():
    from axolotl.integrations.base import BasePlugin

    class HFTPlugin(BasePlugin):
        """Half Fine-Tuning for axolotl: ``hft: true`` trains a drawn half of each block."""

        def __init__(self):
            super().__init__()
            self._reset()

        def _reset(self):
            self.config: HFTConfig | None = None
            self.policy = None
            self.mask: Mask | None = None
            self.engine: str | None = None  # DeepSpeed ZeRO-2/3, FSDP2: no HFTOptimizer

        def get_input_args(self) -> str:
            return f"{__name__}.HFTArgs"

        def register(self, cfg):
            self._reset()
            self.config = check_config(cfg)

        def post_model_load(self, cfg, model):
            if hft_config(cfg) is None:
                return
            if self.policy is not None:
                # The policy always loads first (axolotl.train.setup_model_and_trainer);
                # a second model in the same run is the DPO/KTO reference: no mask (it is
                # replaced by one sharing the policy's frozen half in post_trainer_create).
                LOG.info("HFT: leaving the reference model untouched")
                return
            plain_weights(model)  # a GGUF-loaded model: its quantized mark cleared, said once
            # the stage decided on the raw YAML in register(); else decide it now
            config = self.config if self.config is not None else resolve_config(cfg, model)
            self.engine = config_engine(cfg)
            mask = None
            if self.engine is not None:  # a resumed run trains its checkpoint's half
                mask = _checkpoint_mask(cfg, model)
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
            if hft_config(cfg) is None:
                return
            if self.mask is None or trainer.model is not self.policy:
                raise HFTError("the trainer's model is not the one the HFT plugin masked")
            if getattr(trainer, "ref_model", None) is self.policy:
                raise HFTError("the HFT-masked policy model is also the reference model")
            from .transformers import HFTCallback, HFTStageCallback

            # the trainer's view decides: on CPU processes an FSDP request may run as DDP
            self.engine = sharded.trainer_engine(trainer)
            if self.engine is None:
                trainer.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs(trainer, self.mask)
                trainer.add_callback(HFTStageCallback())  # stage_end when training ends
                self._share_reference(cfg, trainer)
            else:
                engine, mask = self.engine, self.mask
                sharded.check_mask(mask, engine)
                sharded.check_trainer(engine, given=None, hft_model=False, redraw_every_epoch=False)
                if trainer.optimizer_cls_and_kwargs is not None:  # an axolotl custom optimizer
                    optimizer_cls, kwargs = trainer.optimizer_cls_and_kwargs
                    optim = str(getattr(trainer.args.optim, "value", trainer.args.optim))
                    check_optimizer_class(optimizer_cls, kwargs, f"optimizer: {optim}")
                callback = HFTCallback()  # stage_begin/stage_end once, the start line
                callback.sharded = lambda: (engine, mask)
                trainer.add_callback(callback)
                trainer.add_callback(_mask_in_checkpoints(mask))
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

    HFTPlugin.__qualname__ = "HFTPlugin"  # defined lazily, but named as the YAML names it
    return HFTPlugin


def __getattr__(name: str):
    if name == "HFTPlugin":
        cls = globals()["HFTPlugin"] = _build_plugin_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
