"""HFT in TRL: ``hft_config=`` on every TRL trainer, and ``--hft`` for TrlParser scripts.

    trainer = HFTSFTTrainer(model=model, args=SFTConfig(...), train_dataset=ds,
                            hft_config=HFTConfig())
    trainer = HFTDPOTrainer(model=sft.model, args=DPOConfig(...), train_dataset=ds,
                            hft_config=HFTConfig(stage=None))   # the stage after SFT's

One mechanism for all trainers: :func:`hft_trainer` puts :class:`HFTTRLMixin` in
front of a TRL trainer class; ``HFTSFTTrainer``, ``HFTDPOTrainer``,
``HFTGRPOTrainer``, ``HFTRLOOTrainer``, ``HFTKTOTrainer``, ``HFTRewardTrainer`` and
``HFTDistillationTrainer`` are made that way, and :func:`hft_config_class` makes
the matching ``HFT*Config`` (the TRL config plus ``hft`` and ``hft_<field>`` for
every HFTConfig field). ``hft_plugins.get_hft_config`` reads those arguments, as
TRL's ``get_peft_config`` reads the PEFT ones.

Reference models: where TRL builds the reference itself from the policy's path
(DPO and KTO without ``ref_model``, GRPO and RLOO with ``beta != 0``), the HFT
trainer gives it instead a reference that shares the frozen half's tensors with
the policy and copies only the trainable ones (TRL would load a second full
model, and fails for a model built in code). If a later redraw makes a shared
tensor trainable, the reference gets its own copy of it first, so the reference
stays the model training started from.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import sys
import types
from dataclasses import dataclass

from torch import nn
from trl import (
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    KTOConfig,
    KTOTrainer,
    RewardConfig,
    RewardTrainer,
    RLOOConfig,
    RLOOTrainer,
    SFTConfig,
    SFTTrainer,
)

from ..core.config import HFTArguments, HFTConfig, get_hft_config
from ..core.errors import HFTError
from ..core.mask import HFTMask
from ..core.shapes import check_same_shapes, shapes
from .models import RECORD_ATTR
from .peft_style import HFTModel
from .sharded import args_engine
from .transformers import _UNSET, HFTTrainerMixin

try:  # TRL 1.16; older releases have no stable distillation trainer
    from trl import DistillationConfig, DistillationTrainer
except ImportError:  # pragma: no cover - depends on the TRL version
    DistillationConfig = DistillationTrainer = None

__all__ = [
    "HFTTRLMixin",
    "hft_config_class",
    "hft_trainer",
    "shared_reference",
    "unshare",
    # generated below, one per TRL trainer
    "HFTSFTConfig",
    "HFTSFTTrainer",
    "HFTDPOConfig",
    "HFTDPOTrainer",
    "HFTGRPOConfig",
    "HFTGRPOTrainer",
    "HFTRLOOConfig",
    "HFTRLOOTrainer",
    "HFTKTOConfig",
    "HFTKTOTrainer",
    "HFTRewardConfig",
    "HFTRewardTrainer",
]

# TRL trainers that build a reference model from the policy's path when none is given.
_REFERENCE_TRAINERS = (DPOTrainer, KTOTrainer, GRPOTrainer, RLOOTrainer)


def hft_config_class(config_cls: type) -> type:
    """``config_cls`` (a TRL config dataclass) plus ``hft`` and ``hft_<field>`` per HFTConfig field.

    Values are checked when the arguments are built or parsed: a bad value, or an
    ``hft_*`` value while ``hft`` is off, fails there with one line.
    """
    name = f"HFT{config_cls.__name__}"

    def __post_init__(self):
        super(cls, self).__post_init__()
        get_hft_config(self)

    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"TRL's {config_cls.__name__} plus ``hft`` and one ``hft_<field>`` argument "
        "per HFTConfig field (None: not given).",
        "__post_init__": __post_init__,
    }
    cls = dataclass(
        types.new_class(name, (HFTArguments, config_cls), {}, lambda ns: ns.update(namespace))
    )
    return cls


def _refuse_hft_model(model) -> None:
    """TRL reads ``model.base_model`` as the backbone; an HFTModel's is the whole model."""
    if isinstance(model, HFTModel):
        raise HFTError(
            "TRL trainers cannot take an HFTModel (TRL reads model.base_model as the backbone); "
            "pass model.base_model and hft_config=model.hft_config"
        )


class HFTTRLMixin(HFTTrainerMixin):
    """Put before a TRL trainer class (see :func:`hft_trainer`): ``hft_config=`` on that trainer.

    Adds to :class:`HFTTrainerMixin`: an HFTModel is refused (TRL needs the bare model),
    a ``ref_model`` you pass must have the policy's shapes, and a reference that TRL
    would build from the policy's path shares the frozen half instead.
    """

    hft_first_stage = False  # only SFT may start a model's HFT history by default
    hft_share_reference = False  # TRL builds a reference from the policy's path

    def __init__(self, *args, hft_config: HFTConfig | None = _UNSET, **kwargs):
        _refuse_hft_model(kwargs.get("model", args[0] if args else None))
        self._hft_reference = None
        share = self.hft_share_reference and not self._hft_sharded_args(args, kwargs)
        building = _reference_shared_with(self) if share else contextlib.nullcontext()
        with building:
            super().__init__(*args, hft_config=hft_config, **kwargs)
        given_ref = getattr(self, "ref_model", None)  # passed by name or by position
        if self.hft_config is not None and given_ref is not None and self._hft_reference is None:
            _check_same_shapes(self.model, self.accelerator.unwrap_model(given_ref))
        if self._hft_reference is not None:
            # The mixin may apply another mask than the one drawn for the reference (that of an
            # HFTOptimizer in optimizers=): nothing it trains may be shared.
            self._hft_before_redraw(self.hft_mask)

    def _hft_sharded_args(self, args, kwargs) -> bool:
        """Under DeepSpeed ZeRO / FSDP2 the reference is not shared with the policy: the
        engine partitions each model's parameters on its own, so TRL builds its own copy."""
        bound = inspect.signature(super(HFTTrainerMixin, self).__init__).bind_partial(
            *args, **kwargs
        )
        return args_engine(bound.arguments.get("args")) is not None

    def _share_reference(self, policy: nn.Module) -> nn.Module:
        """Called when TRL asks for the reference: mask the policy, share its frozen half."""
        self._hft_drawn_mask(policy).apply(policy)  # the stage's one draw
        self._hft_reference = shared_reference(policy)
        return self._hft_reference

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if self._hft_reference is not None and resume_from_checkpoint:
            self._check_resumable(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _check_resumable(self, checkpoint) -> None:
        """Refuse a checkpoint whose mask trained a tensor the reference shares.

        Resuming loads the checkpoint's weights into the policy in place; a shared tensor
        its run trained (after an epoch redraw, or with another seed/stage) would then be
        trained weights in the reference too, silently changing the loss.
        """
        import torch
        from transformers.trainer_utils import get_last_checkpoint

        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        path = os.path.join(str(checkpoint), "optimizer.pt")
        if checkpoint is None or not os.path.isfile(path):
            return  # the Trainer reports a missing checkpoint itself
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(state, dict) or "mask" not in state:
            return  # HFTOptimizer.load_state_dict refuses it with one line
        saved = HFTMask.from_json(state["mask"])
        shared = {id(p) for p in self._hft_reference.parameters()}
        params = dict(self.model.named_parameters())
        for name in saved.params():
            if name in params and id(params[name]) in shared:
                raise HFTError(
                    f"cannot resume from {checkpoint}: its mask (stage {saved.config.stage}, seed "
                    f"{saved.config.seed}) trained {name!r}, which the shared reference model "
                    "holds; pass ref_model= (a copy of the model training started from)"
                )

    def _hft_before_redraw(self, mask: HFTMask) -> None:
        """Give a shared reference its own copy of every shared tensor ``mask`` will train."""
        if self._hft_reference is not None:
            params = dict(self.model.named_parameters())
            unshare(self._hft_reference, [params[name] for name in mask.params()])


def shared_reference(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` that shares every frozen tensor and buffer with it.

    Only the parameters with ``requires_grad`` (the trainable half, whole fused tensors
    included) are copied, so the reference costs exactly their bytes.
    """
    memo = {id(p): p for p in model.parameters() if not p.requires_grad}
    memo.update({id(b): b for b in model.buffers()})
    for module in model.modules():
        recorded = module.__dict__.get(RECORD_ATTR)
        if recorded is not None:
            memo[id(recorded)] = recorded
    reference = copy.deepcopy(model, memo)
    for module in reference.modules():
        # A forward patched onto the instance as a closure (TRL's fused LM head from an
        # earlier trainer) would still run the policy; the class's forward runs the copy.
        if isinstance(module.__dict__.get("forward"), types.FunctionType):
            del module.__dict__["forward"]
    for param in reference.parameters():
        param.requires_grad_(False)
    return reference.eval()


def unshare(reference: nn.Module, tensors: list[nn.Parameter]) -> None:
    """Replace, everywhere in ``reference``, each of ``tensors`` by a private frozen copy."""
    copies = {id(t): None for t in tensors}
    for module in reference.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and id(param) in copies:
                if copies[id(param)] is None:
                    copies[id(param)] = nn.Parameter(param.detach().clone(), requires_grad=False)
                module._parameters[name] = copies[id(param)]


@contextlib.contextmanager
def _reference_shared_with(trainer: HFTTRLMixin):
    """While ``trainer`` initialises, TRL's ``create_model_from_path`` for the policy's own
    path (the reference it builds when none is given) returns a shared reference instead.

    TRL's trainers call the function by the name their module imported, so it is replaced
    in each TRL module of the trainer's class hierarchy, and restored afterwards.
    """
    modules = []
    for klass in type(trainer).__mro__:
        module = sys.modules.get(klass.__module__)
        if klass.__module__.split(".")[0] == "trl" and hasattr(module, "create_model_from_path"):
            if module not in modules:
                modules.append(module)
    originals = {module: module.create_model_from_path for module in modules}

    def wrap(original):
        def create_model_from_path(model_id, *args, **kwargs):
            policy = trainer.__dict__.get("model")
            if (
                trainer.hft_config is not None
                and trainer._hft_reference is None
                and isinstance(policy, nn.Module)
                and model_id == getattr(getattr(policy, "config", None), "_name_or_path", None)
            ):
                return trainer._share_reference(policy)
            return original(model_id, *args, **kwargs)

        return create_model_from_path

    for module, original in originals.items():
        module.create_model_from_path = wrap(original)
    try:
        yield
    finally:
        for module, original in originals.items():
            module.create_model_from_path = original


def hft_trainer(
    trainer_cls: type, *, first_stage: bool | None = None, share_reference: bool | None = None
) -> type:
    """``trainer_cls`` (a TRL trainer, or your subclass of one) with ``hft_config=``.

    ``first_stage``: may a model start its HFT history here (stage 0 when the stage is not
    given)? Default: only for SFT trainers. ``share_reference``: does TRL build a reference
    model from the policy's path that should share the frozen half? Default: for DPO, KTO,
    GRPO and RLOO and their subclasses.
    """
    if first_stage is None:
        first_stage = issubclass(trainer_cls, SFTTrainer)
    if share_reference is None:
        share_reference = issubclass(trainer_cls, _REFERENCE_TRAINERS)
    name = f"HFT{trainer_cls.__name__}"
    return type(
        name,
        (HFTTRLMixin, trainer_cls),
        {
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"TRL's {trainer_cls.__name__} training only the HFT half given by "
            "``hft_config=`` (or an HFT config's ``hft`` arguments); without one, the plain "
            f"{trainer_cls.__name__}.",
            "hft_first_stage": first_stage,
            "hft_share_reference": share_reference,
        },
    )


def _check_same_shapes(model: nn.Module, ref: nn.Module) -> None:
    if not isinstance(ref, nn.Module):
        raise HFTError(f"ref_model must be a torch module, got {type(ref).__name__}")
    check_same_shapes(
        shapes(ref),
        shapes(model),
        missing="ref_model does not match the policy: it has no parameter {name}",
        shape="ref_model does not match the policy: {name} has shape {have}, the policy's is {want}",
        extra="ref_model does not match the policy: extra parameter {name}",
    )


# ---- one HFT trainer and one HFT config per TRL trainer ------------------------------

HFTSFTConfig = hft_config_class(SFTConfig)
HFTSFTTrainer = hft_trainer(SFTTrainer)
HFTDPOConfig = hft_config_class(DPOConfig)
HFTDPOTrainer = hft_trainer(DPOTrainer)
HFTGRPOConfig = hft_config_class(GRPOConfig)
HFTGRPOTrainer = hft_trainer(GRPOTrainer)
HFTRLOOConfig = hft_config_class(RLOOConfig)
HFTRLOOTrainer = hft_trainer(RLOOTrainer)
HFTKTOConfig = hft_config_class(KTOConfig)
HFTKTOTrainer = hft_trainer(KTOTrainer)
HFTRewardConfig = hft_config_class(RewardConfig)
HFTRewardTrainer = hft_trainer(RewardTrainer)
if DistillationTrainer is not None:
    HFTDistillationConfig = hft_config_class(DistillationConfig)
    HFTDistillationTrainer = hft_trainer(DistillationTrainer)
    __all__ += ["HFTDistillationConfig", "HFTDistillationTrainer"]
