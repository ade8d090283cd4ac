"""HFT in the Hugging Face Trainer: a mixin that builds the sparse-aware optimizer, and a callback.

The Trainer builds its optimizer in ``create_optimizer`` from whatever has
``requires_grad`` at that moment, and loads resumed optimizer state right after,
before any callback runs. So the mask is applied, and an :class:`HFTOptimizer`
built, inside ``create_optimizer``; a resumed ``optimizer.pt`` carries the mask and
``HFTOptimizer.load_state_dict`` redraws to it. The callback logs what trains and
redraws the half at epoch boundaries when asked to.

    trainer = HFTTrainer(model=model, args=TrainingArguments(...), train_dataset=ds,
                         hft_config=HFTConfig(ratio=0.5, seed=0))
"""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from ..core.atomic import atomic_write_text
from ..core.config import HFTConfig
from ..core.distributed import check_redraw_supported, redraw
from ..core.errors import HFTError
from ..core.mask import Mask, select
from ..core.optim import HFTOptimizer
from ..registry import notify
from . import sharded
from ._common import (
    HFT_TAG,
    MASK_NAME,
    build_hft_optimizer,
    check_hft_config,
    check_optimizer_class,
    hft_model_card,
    hft_start_line,
    reject_peft,
    unwrap_optimizer,
)
from .models import plain_weights

__all__ = [
    "HFTCallback",
    "HFTStageCallback",
    "HFTTrainer",
    "HFTTrainerMixin",
    "check_hft_config",
    "check_optimizer_class",
    "hft_model_card",
    "resolve_hft_config",
    "unwrap_optimizer",
]

_UNSET = object()  # hft_config not passed at all (None passed: HFT off, silently)
logger = logging.getLogger(__name__)


def resolve_hft_config(hft_config, args) -> HFTConfig | None:
    """The stage's config: ``hft_config`` if given, else the ``hft``/``hft_*`` arguments of an
    HFT*Config (None when ``hft`` is off), else None: HFT off. The stage may still be None
    ("not given"); the trainer resolves it by the stage rule."""
    from ._common import config_from_trainer_args

    return config_from_trainer_args(hft_config, args)


def _is_hft_model(model) -> bool:
    from .peft_style import HFTModel

    return isinstance(model, HFTModel)


def _multi_process() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def hft_logs(optimizer: HFTOptimizer) -> dict[str, float]:
    """What the Trainer's logs get: the trainable fraction of all parameters and the stage."""
    done, total = optimizer.mask.fractions()["total"]
    return {"hft_trainable_fraction": done / total, "hft_stage": optimizer.mask.config.stage}


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
    """

    def __init__(self, redraw_every_epoch: bool = False):
        if not isinstance(redraw_every_epoch, bool):
            raise HFTError(f"redraw_every_epoch must be true or false, got {redraw_every_epoch!r}")
        self.redraw_every_epoch = redraw_every_epoch
        # Called with the new mask before each redraw (e.g. to unshare a DPO reference).
        self.before_redraw: list[Callable[[Mask], None]] = []
        # The model the training loop calls (DDP-wrapped under torchrun); HFTTrainer sets it.
        self.wrapped_model: Callable[[], object] | None = None
        # Under DeepSpeed ZeRO / FSDP2 (no HFTOptimizer): (engine, the mask); HFTTrainer sets it.
        self.sharded: Callable[[], tuple[str, Mask]] | None = None

    def redraw(self, optimizer: HFTOptimizer, mask: Mask) -> None:
        """Switch to ``mask``; under DDP the wrapper's gradient sync follows the new half."""
        wrapped = self.wrapped_model() if self.wrapped_model is not None else None
        if wrapped is None and _multi_process():
            raise HFTError(
                "a redraw with several processes needs the wrapped model: use HFTTrainer "
                "(or HFTTrainerMixin), or call hft_plugins.core.distributed.redraw yourself"
            )
        check_redraw_supported(optimizer, wrapped)
        for hook in self.before_redraw:
            hook(mask)
        redraw(optimizer, mask, wrapped)

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        opt = unwrap_optimizer(optimizer)
        if opt is None and self.sharded is not None:
            engine, mask = self.sharded()
            if state.is_world_process_zero:
                logger.info(sharded.start_line(mask, engine))
                logger.info(mask.summary())
            # no HFTOptimizer to begin the stage: the stage is this run (one stage per run)
            notify("stage_begin", model=kwargs.get("model"), mask=mask, stage=mask.config.stage)
            return
        if opt is None:
            raise HFTError(
                "HFTCallback needs an HFTOptimizer: use HFTTrainer or pass optimizers=(HFTOptimizer(...), None)"
            )
        super().on_train_begin(args, state, control, optimizer=optimizer, **kwargs)
        if state.is_world_process_zero:
            logger.info(hft_start_line(opt))
            logger.info(opt.mask.summary())

    def on_train_end(self, args, state, control, optimizer=None, **kwargs):
        if unwrap_optimizer(optimizer) is None and self.sharded is not None:
            _, mask = self.sharded()
            notify("stage_end", model=kwargs.get("model"), mask=mask, stage=mask.config.stage)
            return
        super().on_train_end(args, state, control, optimizer=optimizer, **kwargs)

    def on_epoch_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        opt = unwrap_optimizer(optimizer)
        fresh_epoch = state.global_step > 0 and float(state.epoch or 0).is_integer()
        if self.redraw_every_epoch and opt is not None and fresh_epoch:
            self.redraw(opt, select(opt.model, opt.mask.config.next_stage()))

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        opt = unwrap_optimizer(optimizer)
        if opt is None or logs is None or "hft_trainable_fraction" in logs:
            return
        extra = hft_logs(opt)
        logs.update(extra)
        if state.log_history:
            state.log_history[-1].update(extra)


class HFTTrainerMixin:
    """Put before a ``transformers.Trainer`` subclass: trains only the HFT half.

    ``hft_config`` (an :class:`HFTConfig`) draws the mask; None (the default) leaves HFT off
    and the trainer is the plain one, unless ``args`` is an HFT*Config with ``hft`` on. A
    stage of None is decided by the stage rule (``_common.resolve_stage``). An optimizer
    passed in ``optimizers=`` must be an HFTOptimizer. The optimizer class and its lr/betas/eps/weight decay come from the TrainingArguments,
    as the plain Trainer's do; only torch optimizer classes can be wrapped.
    """

    # True where a model may start its HFT history (stage 0 by default): SFT and the plain
    # Trainer. Other trainers (DPO, GRPO, ...) need the stage given or a previous stage.
    hft_first_stage = True

    def __init__(self, *args, hft_config: HFTConfig | None = _UNSET, **kwargs):
        from ._common import trainer_config

        bound = inspect.signature(super().__init__).bind_partial(*args, **kwargs).arguments
        given = unwrap_optimizer((bound.get("optimizers") or (None, None))[0])
        passed = hft_config is not _UNSET
        hft_config = None if hft_config is _UNSET else hft_config
        if hft_config is None and given is not None:
            hft_config = given.mask.config
        elif hft_config is None and _is_hft_model(bound.get("model")):
            hft_config = bound["model"].hft_config
        elif hft_config is not None or hasattr(bound.get("args"), "hft"):
            hft_config = trainer_config(  # None when off; the stage decided by the stage rule
                hft_config,
                bound.get("args"),
                bound.get("model"),
                trainer=type(self).__name__,
                first_stage=self.hft_first_stage,
            )
        elif not passed:
            warnings.warn(
                f"{type(self).__name__} got no hft_config: HFT is off and it trains as a plain "
                "Trainer; pass hft_config=HFTConfig() for the paper's half",
                stacklevel=2,
            )
        self.hft_config = hft_config
        self.hft_callback = None
        self._hft_engine = None  # "DeepSpeed ZeRO-3", "FSDP2": no HFTOptimizer (sharded.py)
        if self.hft_config is None:  # hft_config=None, or an HFT*Config with hft off
            super().__init__(**bound)
            return
        if bound.get("peft_config") is not None:
            raise HFTError(
                "HFT cannot be combined with peft_config: HFT trains half of the base weights, "
                "a PEFT adapter freezes them all; pass one of the two"
            )
        if isinstance(bound.get("model"), torch.nn.Module):
            # A GGUF-loaded model carries a quantized mark the Trainer refuses: cleared, said once
            plain_weights(bound["model"])
        if given is not None and given.mask.config != self.hft_config:
            raise HFTError(
                f"hft_config (stage {self.hft_config.stage}, seed {self.hft_config.seed}) differs "
                "from the mask of the HFTOptimizer passed in optimizers=; pass one of the two"
            )
        callbacks = list(bound.get("callbacks") or [])
        mine = [cb for cb in callbacks if isinstance(cb, HFTCallback)]
        if not mine:
            mine = [HFTCallback()]
            callbacks.append(mine[0])
        self.hft_callback = mine[0]
        self.hft_callback.wrapped_model = lambda: self.model_wrapped
        # The stage's mask: a given optimizer's, an HFTModel's of this config, else drawn once
        # on first use (by TRL's reference sharing during __init__, or below) and kept.
        self._hft_mask = given.mask if given is not None else None
        model = bound.get("model")
        if given is None and _is_hft_model(model) and model.hft_config == self.hft_config:
            self._hft_mask = model.hft_mask
        # DeepSpeed ZeRO / FSDP2: no HFTOptimizer; what they cannot do is refused before the
        # Trainer builds its Accelerator, and again if the Trainer's view differs (sharded.py)
        self._hft_engine = sharded.args_engine(bound.get("args"))
        self._hft_check_sharded(given, model)
        super().__init__(**{**bound, "callbacks": callbacks})
        reject_peft(self._hft_target())
        engine = sharded.trainer_engine(self)
        if engine != self._hft_engine:
            self._hft_engine = engine
            self._hft_check_sharded(given, self.model)
        if self._hft_engine is not None:
            self.hft_callback.sharded = lambda: (self._hft_engine, self.hft_mask)
        if self.optimizer is not None and unwrap_optimizer(self.optimizer) is None:
            raise HFTError(
                f"optimizers= holds {type(self.optimizer).__name__}; HFTTrainer needs an "
                "HFTOptimizer (or none, to build one from the TrainingArguments)"
            )
        if self.optimizer is None:
            self._hft_optimizer_cls_and_kwargs()  # an optimizer HFT cannot wrap fails now
        if _is_hft_model(self.model):
            # The Trainer reads the labels from the model class's forward (unwrapping PEFT's
            # models only): an HFTModel's would give none, and evaluation no loss.
            from transformers.utils import can_return_loss, find_labels

            if self.args.label_names is None:
                self.label_names = find_labels(type(self.model.base_model))
            self.can_return_loss = can_return_loss(type(self.model.base_model))
        if _is_hft_model(self.model) and self.hft_callback.redraw_every_epoch:
            raise HFTError(
                "an HFTModel trains one stage: redraw_every_epoch would train tensors its "
                "save_pretrained() does not hold; pass the plain model and hft_config instead"
            )
        if hasattr(self._hft_target(), "add_model_tags"):
            self._hft_target().add_model_tags([HFT_TAG])  # model.push_to_hub's card says it too
        # Freeze now so that anything that counts trainable parameters before training sees
        # the half.
        mask = self._hft_drawn_mask()
        if self._hft_engine is not None:
            sharded.check_mask(mask, self._hft_engine)
        mask.apply(self._hft_target())

    def _hft_drawn_mask(self, model=None) -> Mask:
        """The mask of the stage ``hft_config`` names: drawn (for ``model``, default the
        trainer's) the first time it is needed and kept, so a stage draws once."""
        if self._hft_mask is None:
            self._hft_mask = select(self._hft_target(model), self.hft_config)
        return self._hft_mask

    def _hft_check_sharded(self, given, model) -> None:
        if self._hft_engine is None:
            return
        sharded.check_trainer(
            self._hft_engine,
            given=given,
            hft_model=_is_hft_model(model),
            redraw_every_epoch=self.hft_callback.redraw_every_epoch,
        )
        if model is not None:  # (model_init: checked when the mask is drawn below)
            sharded.check_mask(self._hft_drawn_mask(model), self._hft_engine)

    def _hft_target(self, model=None):
        """The model the mask is drawn for: an HFTModel's wrapped model, else the model."""
        model = self.model if model is None else model
        return model.base_model if _is_hft_model(model) else model

    @property
    def hft_optimizer(self) -> HFTOptimizer | None:
        return unwrap_optimizer(self.optimizer)

    @property
    def hft_mask(self) -> Mask:
        """The half that trains now (after a resume or a redraw, the optimizer's)."""
        opt = self.hft_optimizer
        return opt.mask if opt is not None else self._hft_mask

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
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, kwargs = self.optimizer_cls_and_kwargs
            source = "optimizer_cls_and_kwargs"
        else:
            model = self._hft_target(model)
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            source = f"optim={str(getattr(self.args.optim, 'value', self.args.optim))!r}"
        check_optimizer_class(optimizer_cls, kwargs, source)
        return optimizer_cls, dict(kwargs)

    def next_stage(self) -> HFTConfig:
        """Start the next stage: a fresh half for the next ``train()`` call (optimizer kept)."""
        if self.hft_config is None:
            raise HFTError("next_stage() needs HFT turned on (hft_config or --hft)")
        if _is_hft_model(self.model):
            raise HFTError(
                "an HFTModel trains one stage: its save_pretrained() holds that stage's half; "
                "start the next with get_hft_model(model.merge_and_unload(), "
                "model.hft_config.next_stage())"
            )
        if self._hft_engine is not None:
            raise sharded.redraw_refusal(self._hft_engine, "next_stage()")
        # from the stage training is at: epoch redraws or a resume may have moved it on
        self.hft_config = self.hft_mask.config.next_stage()
        self._hft_mask = select(self._hft_target(), self.hft_config)
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
            adopted = sharded.adopt_checkpoint_mask(
                self, resume, self._hft_target(), self._hft_engine
            )
            self._hft_mask = adopted or self._hft_mask
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.state.global_step > 0:  # the next stage's rule reads it (_common.py)
                from ._common import record_trained_mask

                record_trained_mask(self._hft_target(), self.hft_mask)

    def log(self, logs, *args, **kwargs):
        opt = self.hft_optimizer
        if opt is not None:
            logs.update(hft_logs(opt))
        elif self.hft_config is not None and self._hft_engine is not None:
            logs.update(sharded.mask_logs(self.hft_mask))
        return super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.hft_config is not None and self._hft_engine is not None:
            sharded.save_mask_in_checkpoint(self, trial, self.hft_mask)

    # ---- saving -------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """An HFTModel saves as an HFT save (what its save_pretrained writes: the Trainer's
        own path would write its full state dict under ``base_model.`` keys, which nothing
        loads); any other model as the Trainer saves it, with ``hft_mask.json`` beside.
        ``save_model`` and every checkpoint come through here."""
        if self.hft_config is None:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not _is_hft_model(self.model):
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
        if _is_hft_model(target) and target.holds_hft_save(resume_from_checkpoint):
            target.load_hft_save(resume_from_checkpoint)
            return None
        return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        best = self.state.best_model_checkpoint
        if _is_hft_model(self.model) and best and self.model.holds_hft_save(best):
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
