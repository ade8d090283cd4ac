"""HFT in the Hugging Face Trainer: a mixin that builds the sparse-aware optimizer, and a callback.

The Trainer builds its optimizer in ``create_optimizer`` from whatever has
``requires_grad`` at that moment, and loads resumed optimizer state right after,
before any callback runs. So the mask is applied, and an :class:`HFTOptimizer`
built, inside ``create_optimizer``; a resumed ``optimizer.pt`` carries the mask and
``HFTOptimizer.load_state_dict`` redraws to it. The callback logs what trains and
redraws the half at epoch boundaries when asked to.

    trainer = HFTTrainer(model=model, args=TrainingArguments(...), train_dataset=ds,
                         hft_config=HFTConfig(ratio=0.5, seed=0))

Every trainer that goes through the Trainer (this mixin, TRL's through it, Axolotl's
plugin) checks and wraps its optimizer choice with :func:`check_optimizer_class` and
:func:`build_hft_optimizer`, and says what trains with :func:`start_line` and
:func:`hft_logs`.
"""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from ..core.atomic import atomic_write_text
from ..core.config import HFTConfig, checked_config, get_hft_config
from ..core.distributed import check_redraw_supported, redraw
from ..core.errors import HFTError
from ..core.mask import HFTMask, select
from ..core.optim import HFTOptimizer, qualified_name
from ..core.stage import MASK_NAME, decide_stage
from ..registry import notify
from . import sharded
from .model_card import HFT_TAG, hft_model_card
from .models import plain_weights, previous_stage, record_trained_mask
from .peft_style import HFTModel, reject_peft

__all__ = [
    "HFTCallback",
    "HFTEngineCallback",
    "HFTStageCallback",
    "HFTTrainer",
    "HFTTrainerMixin",
    "build_hft_optimizer",
    "check_optimizer_class",
    "hft_logs",
    "optimizer_choice",
    "start_line",
    "unwrap_optimizer",
]

_UNSET = object()  # hft_config not passed at all (None passed: HFT off, silently)
logger = logging.getLogger(__name__)


# ---- the optimizer: what every trainer wraps, and how ------------------------------

# Keys the optimizer factory of ``get_optimizer_cls_and_kwargs`` uses to hand over its own groups.
_SPECIAL_OPTIMIZER_KEYS = ("params", "model", "optimizer_dict")


def check_optimizer_class(optimizer_cls, kwargs, source: str = "the optimizer class") -> None:
    """Refuse, in one line, an optimizer HFT cannot wrap with its frozen half left exact.

    ``source`` says where the class came from (``optim='sgd'``, ``optimizer_cls_and_kwargs``).
    """
    name = qualified_name(optimizer_cls)
    if callable(getattr(optimizer_cls, "train", None)) or "schedule_free" in source:
        raise HFTError(
            f"HFT cannot wrap schedule-free optimizers ({source} gives {name!r}): they swap "
            "the weights between their train() and eval() modes, which HFTOptimizer does not "
            "pass on; use e.g. adamw_torch"
        )
    if not (
        isinstance(optimizer_cls, type)
        and issubclass(optimizer_cls, torch.optim.Optimizer)
        and not any(k in kwargs for k in _SPECIAL_OPTIMIZER_KEYS)
    ):
        raise HFTError(
            f"HFT wraps torch optimizer classes; {source} gives {name!r}, which builds its own "
            "parameter groups (GaLore, LOMO, Muon...); use e.g. adamw_torch"
        )


def _register_bnb_embedding_overrides(model: nn.Module, optimizer_cls, kwargs) -> None:
    """As the Trainer does: bitsandbytes keeps embeddings' state in 32 bits under 8-bit optim."""
    if "bitsandbytes" not in str(optimizer_cls) or kwargs.get("optim_bits") != 8:
        return
    import bitsandbytes

    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            manager.register_module_override(module, "weight", {"optim_bits": 32})


def optimizer_choice(trainer, model, source: str | None = None) -> tuple[type, dict]:
    """The optimizer class and arguments ``trainer`` would build for ``model`` (its
    ``optimizer_cls_and_kwargs``, else the TrainingArguments' ``optim``), if HFT can wrap
    them. ``source`` names the choice in a refusal as the user wrote it (default:
    ``optimizer_cls_and_kwargs`` or ``optim='...'``)."""
    optim = str(getattr(trainer.args.optim, "value", trainer.args.optim))
    if trainer.optimizer_cls_and_kwargs is not None:
        optimizer_cls, kwargs = trainer.optimizer_cls_and_kwargs
        source = source or "optimizer_cls_and_kwargs"
    else:
        optimizer_cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
        source = source or f"optim={optim!r}"
    check_optimizer_class(optimizer_cls, kwargs, source)
    return optimizer_cls, dict(kwargs)


def build_hft_optimizer(
    model: nn.Module,
    mask: HFTMask,
    optimizer_cls,
    kwargs: Mapping[str, Any],
    *,
    weight_decay: float,
) -> HFTOptimizer:
    """A trainer's optimizer choice as an HFTOptimizer over ``mask``'s half: the one way every
    adapter wraps it (this mixin, and so TRL, and the Axolotl plugin's factory).

    ``optimizer_cls`` and ``kwargs`` are what the trainer would build (its
    ``get_optimizer_cls_and_kwargs``, or ``optimizer_cls_and_kwargs``; check them first with
    :func:`check_optimizer_class`). ``weight_decay`` (the TrainingArguments') goes to the decay
    group and none to biases and norms, as in the Trainer's own groups, whose
    ``weight_decay`` wins over one in ``kwargs``.
    """
    kwargs = {**kwargs, "weight_decay": weight_decay}
    optimizer = HFTOptimizer(model, mask, optimizer_cls, **kwargs)
    _register_bnb_embedding_overrides(model, optimizer_cls, kwargs)
    return optimizer


def unwrap_optimizer(optimizer) -> HFTOptimizer | None:
    """The HFTOptimizer inside accelerate's (or any) ``.optimizer`` wrappers, or None."""
    seen = 0
    while optimizer is not None and seen < 8:
        if isinstance(optimizer, HFTOptimizer):
            return optimizer
        optimizer = getattr(optimizer, "optimizer", None)
        seen += 1
    return None


# ---- what a run says about its half ---------------------------------------------------


def start_line(mask: HFTMask, steps_with: str) -> str:
    """One line: the draw, the trainable fraction and ``steps_with`` (what steps the half)."""
    c = mask.config
    done, total = mask.fractions()["total"]
    return (
        f"HFT: strategy={c.strategy} ratio={c.ratio} seed={c.seed} stage={c.stage}; "
        f"trainable {done / total:.4f} of all parameters ({done:,} of {total:,}); {steps_with}"
    )


def _optimizer_steps(optimizer: HFTOptimizer) -> str:
    inner = type(optimizer.inner)
    fused = " (fused)" if optimizer.inner.defaults.get("fused") else ""
    return f"optimizer {inner.__module__}.{inner.__qualname__}{fused}"


def _engine_steps(engine: str) -> str:
    return f"under {engine}: the engine's optimizer over the trainable whole matrices"


def hft_logs(mask: HFTMask) -> dict[str, float]:
    """What the Trainer's logs get: the trainable fraction of all parameters and the stage."""
    done, total = mask.fractions()["total"]
    return {"hft_trainable_fraction": done / total, "hft_stage": mask.config.stage}


# ---- callbacks ------------------------------------------------------------------------


class HFTStageCallback(TrainerCallback):
    """Begins and ends the HFTOptimizer's stage with ``train()``: ``stage_end`` fires when
    training ends (``stage_begin`` fired when the optimizer was built or redrawn; a later
    ``train()`` on a stage that ended begins it again). The optimizer stays as it is, so a
    following ``next_stage()``, redraw or resume goes on from it."""

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        opt = unwrap_optimizer(optimizer)
        if opt is not None:
            opt.begin_stage()

    def on_train_end(self, args, state, control, optimizer=None, **kwargs):
        opt = unwrap_optimizer(optimizer)
        if opt is not None:
            opt.end_stage()


class HFTCallback(HFTStageCallback):
    """Logs the trainable fraction; with ``redraw_every_epoch`` draws a new half each epoch.

    An epoch redraw moves to the next stage of the optimizer's current mask, so a run
    resumed mid-epoch keeps the mask saved in its checkpoint and a run resumed at an
    epoch boundary redraws exactly as the uninterrupted run did.

    ``trainer`` is the Trainer it serves (an HFT trainer builds its own callback with it,
    taking ``redraw_every_epoch`` from one you pass): under DDP a redraw re-syncs its
    wrapped model. ``before_redraw`` is called with the new mask before each redraw (a TRL
    trainer gives its shared reference model its own copy of what the mask will train).
    """

    def __init__(
        self,
        redraw_every_epoch: bool = False,
        *,
        trainer: Trainer | None = None,
        before_redraw: Callable[[HFTMask], None] | None = None,
    ):
        if not isinstance(redraw_every_epoch, bool):
            raise HFTError(f"redraw_every_epoch must be true or false, got {redraw_every_epoch!r}")
        self.redraw_every_epoch = redraw_every_epoch
        self.trainer = trainer
        self.before_redraw = before_redraw

    def redraw(self, optimizer: HFTOptimizer, mask: HFTMask) -> None:
        """Switch to ``mask``; under DDP the wrapper's gradient sync follows the new half."""
        wrapped = self.trainer.model_wrapped if self.trainer is not None else None
        if wrapped is None and _multi_process():
            raise HFTError(
                "a redraw with several processes needs the wrapped model: use HFTTrainer "
                "(or HFTTrainerMixin), or call hft_plugins.core.distributed.redraw yourself"
            )
        check_redraw_supported(optimizer, wrapped)
        if self.before_redraw is not None:
            self.before_redraw(mask)
        redraw(optimizer, mask, wrapped)

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        opt = unwrap_optimizer(optimizer)
        if opt is None:
            raise HFTError(
                "HFTCallback needs an HFTOptimizer: use HFTTrainer or pass optimizers=(HFTOptimizer(...), None)"
            )
        super().on_train_begin(args, state, control, optimizer=optimizer, **kwargs)
        if state.is_world_process_zero:
            logger.info(start_line(opt.mask, _optimizer_steps(opt)))
            logger.info(opt.mask.summary())

    def on_epoch_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        opt = unwrap_optimizer(optimizer)
        fresh_epoch = state.global_step > 0 and float(state.epoch or 0).is_integer()
        if self.redraw_every_epoch and opt is not None and fresh_epoch:
            self.redraw(opt, select(opt.model, opt.mask.config.next_stage()))

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        opt = unwrap_optimizer(optimizer)
        if opt is None or logs is None or "hft_trainable_fraction" in logs:
            return
        extra = hft_logs(opt.mask)
        logs.update(extra)
        if state.log_history:
            state.log_history[-1].update(extra)


class HFTEngineCallback(TrainerCallback):
    """The stage of a run under DeepSpeed ZeRO-2/3 or FSDP2, where no HFTOptimizer holds the
    mask (integrations/sharded.py): the run is the stage, so ``stage_begin`` and
    ``stage_end`` fire with ``train()``; the start line says who steps the half; every
    checkpoint gets ``hft_mask.json``, which a resumed run trains.

    ``engine`` names the engine; ``mask`` gives the half the run trains (a resumed run's
    is its checkpoint's).
    """

    def __init__(self, engine: str, mask: Callable[[], HFTMask]):
        self.engine = engine
        self.mask = mask

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        mask = self.mask()
        if state.is_world_process_zero:
            logger.info(start_line(mask, _engine_steps(self.engine)))
            logger.info(mask.summary())
        notify("stage_begin", model=model, mask=mask, stage=mask.config.stage)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        mask = self.mask()
        notify("stage_end", model=model, mask=mask, stage=mask.config.stage)

    def on_save(self, args, state, control, **kwargs):
        # the engine's checkpoints (FSDP2's sharded ones, DeepSpeed's) do not all go through
        # the Trainer's _save, which writes the mask beside the weights
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if args.should_save and folder.is_dir():
            self.mask().save(folder / MASK_NAME)


def _multi_process() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


# ---- the trainer ----------------------------------------------------------------------


class HFTTrainerMixin:
    """Put before a ``transformers.Trainer`` subclass: trains only the HFT half.

    ``hft_config`` (an :class:`HFTConfig`) draws the mask; None (the default) leaves HFT off
    and the trainer is the plain one, unless ``args`` is an HFT*Config with ``hft`` on. A
    stage of None is decided by the stage rule (:func:`hft_plugins.core.stage.decide_stage`).
    An optimizer passed in ``optimizers=`` must be an HFTOptimizer. The optimizer class and
    its lr/betas/eps/weight decay come from the TrainingArguments, as the plain Trainer's
    do; only torch optimizer classes can be wrapped.

    The half that trains is :attr:`hft_mask`: the stage's mask, drawn once, and the
    HFTOptimizer's once it holds one (after a resume or a redraw it may be a later stage);
    :attr:`hft_config` is that mask's config.
    """

    # True where a model may start its HFT history (stage 0 by default): SFT and the plain
    # Trainer. Other trainers (DPO, GRPO, ...) need the stage given or a previous stage.
    hft_first_stage = True

    def __init__(self, *args, hft_config: HFTConfig | None = _UNSET, **kwargs):
        bound = inspect.signature(super().__init__).bind_partial(*args, **kwargs).arguments
        given = unwrap_optimizer((bound.get("optimizers") or (None, None))[0])
        self._hft_config = self._hft_config_of(hft_config, bound, given)
        self._hft_mask: HFTMask | None = None  # drawn on first use (_hft_drawn_mask)
        self._hft_engine: str | None = None  # "DeepSpeed ZeRO-3", "FSDP2": no HFTOptimizer
        self.hft_callback: TrainerCallback | None = None
        if self._hft_config is None:  # hft_config=None, or an HFT*Config with hft off
            super().__init__(**bound)
            return
        model = bound.get("model")
        self._hft_check_arguments(bound, given)
        if given is not None:
            self._hft_mask = given.mask
        elif isinstance(model, HFTModel) and model.hft_config == self._hft_config:
            self._hft_mask = model.hft_mask
        passed = [cb for cb in bound.get("callbacks") or () if isinstance(cb, HFTCallback)]
        if len(passed) > 1:
            raise HFTError(
                f"callbacks holds {len(passed)} HFTCallbacks; a trainer runs one: pass one"
            )
        redraw_every_epoch = bool(passed) and passed[0].redraw_every_epoch
        # DeepSpeed ZeRO / FSDP2: no HFTOptimizer; what they cannot do is refused before the
        # Trainer builds its Accelerator, and again if the Trainer's view differs (sharded.py)
        self._hft_engine = sharded.args_engine(bound.get("args"))
        self._hft_check_engine(given, model, redraw_every_epoch)
        super().__init__(**bound)
        reject_peft(self._hft_target())
        engine = sharded.trainer_engine(self)
        if engine != self._hft_engine:
            self._hft_engine = engine
            self._hft_check_engine(given, self.model, redraw_every_epoch)
        self.hft_callback = self._hft_install_callback(redraw_every_epoch)
        self._hft_check_trainer(redraw_every_epoch)
        if hasattr(self._hft_target(), "add_model_tags"):
            self._hft_target().add_model_tags([HFT_TAG])  # model.push_to_hub's card says it too
        # Freeze now so that anything that counts trainable parameters before training sees
        # the half.
        mask = self._hft_drawn_mask()
        if self._hft_engine is not None:
            sharded.check_mask(mask, self._hft_engine)
        mask.apply(self._hft_target())

    # ---- the steps of __init__ --------------------------------------------------------

    def _hft_config_of(self, hft_config, bound, given: HFTOptimizer | None) -> HFTConfig | None:
        """The stage's config: ``hft_config``, else a given HFTOptimizer's or HFTModel's,
        else the ``hft`` arguments of ``args``; None: HFT off (with a warning when nothing
        said so)."""
        passed = hft_config is not _UNSET
        hft_config = checked_config(hft_config if passed else None)
        model, args = bound.get("model"), bound.get("args")
        if hft_config is None and given is not None:
            return given.mask.config
        if hft_config is None and isinstance(model, HFTModel):
            return model.hft_config
        if hft_config is None and not hasattr(args, "hft"):
            if not passed:
                warnings.warn(
                    f"{type(self).__name__} got no hft_config: HFT is off and it trains as a "
                    "plain Trainer; pass hft_config=HFTConfig() for the paper's half",
                    stacklevel=3,
                )
            return None
        from_args = get_hft_config(args)
        if hft_config is not None and from_args is not None and from_args != hft_config:
            raise HFTError(
                "hft_config differs from the --hft_* arguments of args; pass one of the two "
                "(hft_config=get_hft_config(args) is the same config)"
            )
        config = hft_config if hft_config is not None else from_args
        if config is None:
            return None
        how = "pass HFTConfig(stage={n})"
        if hasattr(args, "hft"):
            how = "pass --hft_stage {n} (hft_config=HFTConfig(stage={n}) in Python)"
        return decide_stage(
            config,
            previous_stage(model),
            trainer=type(self).__name__,
            first_stage=self.hft_first_stage,
            how=how,
        )

    def _hft_check_arguments(self, bound, given: HFTOptimizer | None) -> None:
        """What HFT refuses among the Trainer's arguments, before the Trainer is built."""
        if bound.get("peft_config") is not None:
            raise HFTError(
                "HFT cannot be combined with peft_config: HFT trains half of the base weights, "
                "a PEFT adapter freezes them all; pass one of the two"
            )
        if isinstance(bound.get("model"), torch.nn.Module):
            # A GGUF-loaded model carries a quantized mark the Trainer refuses: cleared, said once
            plain_weights(bound["model"])
        if given is not None and given.mask.config != self._hft_config:
            raise HFTError(
                f"hft_config (stage {self._hft_config.stage}, seed {self._hft_config.seed}) "
                "differs from the mask of the HFTOptimizer passed in optimizers=; pass one of "
                "the two"
            )

    def _hft_check_engine(self, given, model, redraw_every_epoch: bool) -> None:
        if self._hft_engine is None:
            return
        sharded.check_trainer(
            self._hft_engine,
            given=given,
            hft_model=isinstance(model, HFTModel),
            redraw_every_epoch=redraw_every_epoch,
        )
        if model is not None:  # (model_init: checked when the mask is drawn)
            sharded.check_mask(self._hft_drawn_mask(model), self._hft_engine)

    def _hft_install_callback(self, redraw_every_epoch: bool) -> TrainerCallback:
        """The job's one HFT callback, in place of an HFTCallback passed in ``callbacks``."""
        if self._hft_engine is not None:
            callback = HFTEngineCallback(self._hft_engine, lambda: self.hft_mask)
        else:
            callback = HFTCallback(
                redraw_every_epoch, trainer=self, before_redraw=self._hft_before_redraw
            )
        callbacks = self.callback_handler.callbacks
        passed = [i for i, cb in enumerate(callbacks) if isinstance(cb, HFTCallback)]
        if passed:
            callbacks[passed[0]] = callback
        else:
            self.add_callback(callback)
        return callback

    def _hft_check_trainer(self, redraw_every_epoch: bool) -> None:
        """What HFT refuses, or sets right, on the Trainer once it is built."""
        if self.optimizer is not None and unwrap_optimizer(self.optimizer) is None:
            raise HFTError(
                f"optimizers= holds {type(self.optimizer).__name__}; HFTTrainer needs an "
                "HFTOptimizer (or none, to build one from the TrainingArguments)"
            )
        if self.optimizer is None:
            self._hft_optimizer_cls_and_kwargs()  # an optimizer HFT cannot wrap fails now
        if not isinstance(self.model, HFTModel):
            return
        # The Trainer reads the labels from the model class's forward (unwrapping PEFT's
        # models only): an HFTModel's would give none, and evaluation no loss.
        from transformers.utils import can_return_loss, find_labels

        if self.args.label_names is None:
            self.label_names = find_labels(type(self.model.base_model))
        self.can_return_loss = can_return_loss(type(self.model.base_model))
        if redraw_every_epoch:
            raise HFTError(
                "an HFTModel trains one stage: redraw_every_epoch would train tensors its "
                "save_pretrained() does not hold; pass the plain model and hft_config instead"
            )

    # ---- the half ---------------------------------------------------------------------

    def _hft_drawn_mask(self, model=None) -> HFTMask:
        """The mask of the stage's config: drawn (for ``model``, default the trainer's) the
        first time it is needed and kept, so a stage draws once."""
        if self._hft_mask is None:
            self._hft_mask = select(self._hft_target(model), self._hft_config)
        return self._hft_mask

    def _hft_target(self, model=None):
        """The model the mask is drawn for: an HFTModel's wrapped model, else the model."""
        model = self.model if model is None else model
        return model.base_model if isinstance(model, HFTModel) else model

    def _hft_before_redraw(self, mask: HFTMask) -> None:
        """Called with the new mask before the optimizer moves to it (TRL: unshare)."""

    @property
    def hft_optimizer(self) -> HFTOptimizer | None:
        return unwrap_optimizer(getattr(self, "optimizer", None))  # (None while __init__ runs)

    @property
    def hft_mask(self) -> HFTMask | None:
        """The half that trains now (after a resume or a redraw, the optimizer's)."""
        opt = self.hft_optimizer
        return opt.mask if opt is not None else self._hft_mask

    @property
    def hft_config(self) -> HFTConfig | None:
        """The config of the half that trains now; None: HFT is off."""
        mask = self.hft_mask
        return mask.config if mask is not None else self._hft_config

    def create_optimizer(self, model=None):
        if self.hft_config is None or self._hft_engine is not None:
            # off, or under DeepSpeed ZeRO / FSDP2: the Trainer's plain optimizer over the
            # parameters that require grad (the mask's whole matrices; sharded.py)
            return super().create_optimizer(model)
        if self.optimizer is not None:
            if unwrap_optimizer(self.optimizer) is None:
                raise HFTError(
                    f"optimizer is a {type(self.optimizer).__name__}; HFTTrainer needs an HFTOptimizer"
                )
            return self.optimizer
        opt_model = self._hft_target(model)
        optimizer_cls, kwargs = self._hft_optimizer_cls_and_kwargs(opt_model)
        self.optimizer = build_hft_optimizer(
            opt_model,
            self._hft_drawn_mask(opt_model),  # the stage's mask, drawn once
            optimizer_cls,
            kwargs,
            weight_decay=self.args.weight_decay,
        )
        return self.optimizer

    def _hft_optimizer_cls_and_kwargs(self, model=None) -> tuple[type, dict]:
        """The optimizer class and arguments the Trainer would use, if HFT can wrap them."""
        return optimizer_choice(self, self._hft_target(model))

    def next_stage(self) -> HFTConfig:
        """Start the next stage: a fresh half for the next ``train()`` call (optimizer kept)."""
        if self.hft_config is None:
            raise HFTError("next_stage() needs HFT turned on (hft_config or --hft)")
        if isinstance(self.model, HFTModel):
            raise HFTError(
                "an HFTModel trains one stage: its save_pretrained() holds that stage's half; "
                "start the next with get_hft_model(model.merge_and_unload(), "
                "model.hft_config.next_stage())"
            )
        if self._hft_engine is not None:
            raise sharded.redraw_refusal(self._hft_engine, "next_stage()")
        # from the stage training is at: epoch redraws or a resume may have moved it on
        self._hft_config = self.hft_config.next_stage()
        self._hft_mask = select(self._hft_target(), self._hft_config)
        opt = self.hft_optimizer
        if opt is not None:
            self.hft_callback.redraw(opt, self._hft_mask)
        else:
            self._hft_mask.apply(self._hft_target())
        return self.hft_config

    def train(self, *args, **kwargs):
        if self.hft_config is None:
            return super().train(*args, **kwargs)
        resume = kwargs.get("resume_from_checkpoint", args[0] if args else None)
        if self._hft_engine is not None and resume:
            if resume is True:
                from transformers.trainer_utils import get_last_checkpoint

                resume = get_last_checkpoint(self.args.output_dir)
            adopted = sharded.checkpoint_mask(resume, self._hft_target(), self._hft_engine)
            if adopted is not None:
                adopted.apply(self._hft_target())
                self._hft_mask = adopted
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.state.global_step > 0:  # the next stage's rule reads it
                record_trained_mask(self._hft_target(), self.hft_mask)

    def log(self, logs, *args, **kwargs):
        if self.hft_optimizer is not None or (
            self.hft_config is not None and self._hft_engine is not None
        ):
            logs.update(hft_logs(self.hft_mask))
        return super().log(logs, *args, **kwargs)

    # ---- saving -------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """An HFTModel saves as an HFT save (what its save_pretrained writes: the Trainer's
        own path would write its full state dict under ``base_model.`` keys, which nothing
        loads); any other model as the Trainer saves it, with ``hft_mask.json`` beside.
        ``save_model`` and every checkpoint come through here."""
        if self.hft_config is None:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not isinstance(self.model, HFTModel):
            super()._save(output_dir, state_dict)
            if self.args.should_save:
                self.hft_mask.save(Path(output_dir) / MASK_NAME)
            return
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        if state_dict is not None and not state_dict:
            # DeepSpeed without stage3_gather_16bit_weights_on_model_save: the Trainer
            # writes a DeepSpeed checkpoint instead; there are no tensors to save here.
            logger.warning(f"no gathered weights: {output_dir} gets no HFT save")
        else:
            logger.info(f"Saving the HFT model (its trained half) to {output_dir}")
            self.model.save_pretrained(output_dir, state_dict=state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        elif getattr(self.data_collator, "tokenizer", None) is not None:
            self.data_collator.tokenizer.save_pretrained(output_dir)
        from transformers.trainer import TRAINING_ARGS_NAME

        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        target = self.model if model is None else model
        if isinstance(target, HFTModel) and target.holds_hft_save(resume_from_checkpoint):
            target.load_hft_save(resume_from_checkpoint)
            return None
        return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        best = self.state.best_model_checkpoint
        if isinstance(self.model, HFTModel) and best and self.model.holds_hft_save(best):
            logger.info(
                f"Loading the best HFT model from {best} (score: {self.state.best_metric})."
            )
            self.model.load_hft_save(best)
            return None
        return super()._load_best_model()

    def create_model_card(self, *args, **kwargs):
        """The Trainer's (or TRL's) card, tagged ``hft``, with a section on the half trained."""
        if self.hft_config is None:
            return super().create_model_card(*args, **kwargs)
        bound = inspect.signature(super().create_model_card).bind_partial(*args, **kwargs)
        tags = bound.arguments.get("tags")
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        bound.arguments["tags"] = tags if HFT_TAG in tags else [*tags, HFT_TAG]
        result = super().create_model_card(**bound.arguments)
        path = Path(self.args.output_dir) / "README.md"
        if self.is_world_process_zero() and path.is_file():
            atomic_write_text(path, hft_model_card(path.read_text(), self.hft_mask))
        return result


class HFTTrainer(HFTTrainerMixin, Trainer):
    """``transformers.Trainer`` that trains only the half drawn by ``hft_config``
    (without one, a plain Trainer)."""
