"""HFT in TRL: ``hft_config=`` where TRL takes ``peft_config``, and ``--hft`` for TrlParser scripts.

    trainer = HFTSFTTrainer(model=model, args=SFTConfig(...), train_dataset=ds,
                            hft_config=HFTConfig())
    trainer = HFTDPOTrainer(model=model, args=DPOConfig(...), train_dataset=ds,
                            hft_config=HFTConfig(stage=1))

DPO without ``ref_model``: the frozen half never changes, so the reference shares
the frozen tensors with the policy and copies only the trainable ones (TRL would
reload a full second model from ``config._name_or_path``, which fails for a model
built in code). If a later redraw makes a shared tensor trainable, the reference
gets its own copy of it first, so the reference stays the model DPO started from.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field

from torch import nn
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from ..config import HFTConfig
from ..errors import HFTError
from ..mask import Mask, select
from .transformers import HFTTrainerMixin, reject_peft, resolve_hft_config

__all__ = [
    "HFTDPOConfig",
    "HFTDPOTrainer",
    "HFTSFTConfig",
    "HFTSFTTrainer",
    "shared_reference",
]

_DEFAULT = HFTConfig()


@dataclass
class _HFTArguments:
    """The ``hft_*`` command-line fields, shared by the SFT and DPO configs."""

    hft: bool = field(
        default=False,
        metadata={"help": "Half Fine-Tuning: train a drawn half of each block, freeze the rest."},
    )
    hft_strategy: str = field(
        default=_DEFAULT.strategy,
        metadata={"help": "HFT selection rule: 'category' (the paper's), 'layer', 'matrix'."},
    )
    hft_ratio: float = field(
        default=_DEFAULT.ratio,
        metadata={"help": "HFT: fraction of the blocks' parameters that train, in (0, 1)."},
    )
    hft_seed: int = field(default=_DEFAULT.seed, metadata={"help": "HFT: seed of the draw."})
    hft_stage: int = field(
        default=0,
        metadata={"help": "HFT: stage index; each stage draws a new half (SFT=0, DPO=1)."},
    )

    def to_hft_config(self) -> HFTConfig | None:
        """The HFTConfig these fields describe, or None when ``hft`` is false."""
        if not self.hft:
            return None
        return HFTConfig(
            strategy=self.hft_strategy,
            ratio=self.hft_ratio,
            seed=self.hft_seed,
            stage=self.hft_stage,
        )


@dataclass
class HFTSFTConfig(_HFTArguments, SFTConfig):
    """SFTConfig plus ``hft``, ``hft_strategy``, ``hft_ratio``, ``hft_seed``, ``hft_stage``."""

    def __post_init__(self):
        super().__post_init__()
        self.to_hft_config()  # bad hft_* values fail when the arguments are parsed


@dataclass
class HFTDPOConfig(_HFTArguments, DPOConfig):
    """DPOConfig plus the ``hft_*`` fields; ``hft_stage`` defaults to 1 (DPO follows SFT)."""

    hft_stage: int = field(
        default=1,
        metadata={"help": "HFT: stage index; each stage draws a new half (SFT=0, DPO=1)."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.to_hft_config()


class HFTSFTTrainer(HFTTrainerMixin, SFTTrainer):
    """TRL's SFTTrainer training only the HFT half (``hft_config=`` or ``HFTSFTConfig(hft=True)``)."""


class HFTDPOTrainer(HFTTrainerMixin, DPOTrainer):
    """TRL's DPOTrainer training only the HFT half; without ``ref_model`` the reference shares
    the frozen half's storage with the policy."""

    def __init__(self, *args, hft_config: HFTConfig | None = None, **kwargs):
        bound = inspect.signature(DPOTrainer.__init__).bind_partial(None, *args, **kwargs).arguments
        bound.pop("self")
        config = resolve_hft_config(hft_config, bound.get("args"))
        self._hft_reference = None
        if config is not None and bound.get("peft_config") is None:
            model = bound.get("model")
            if isinstance(model, str):
                bound["model"] = model = _load(model, bound.get("args"))
            reject_peft(model)
            select(model, config).apply(model)
            ref = bound.get("ref_model")
            if ref is None:
                bound["ref_model"] = self._hft_reference = shared_reference(model)
            else:
                _check_same_shapes(model, ref)
        super().__init__(hft_config=hft_config, **bound)
        if self._hft_reference is not None:
            self.hft_callback.before_redraw.append(self._unshare_reference)

    def _unshare_reference(self, mask: Mask) -> None:
        """Give the reference its own copy of every shared tensor the new mask will train."""
        params = dict(self.model.named_parameters())
        unshare(self._hft_reference, [params[name] for name in mask.params()])


def _load(path: str, args) -> nn.Module:
    from trl.trainer.utils import create_model_from_path

    kwargs = dict(getattr(args, "model_init_kwargs", None) or {})
    return create_model_from_path(path, **kwargs)


def shared_reference(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` that shares every frozen tensor and buffer with it.

    Only the parameters with ``requires_grad`` (the trainable half, whole fused tensors
    included) are copied, so the reference costs exactly their bytes.
    """
    memo = {id(p): p for p in model.parameters() if not p.requires_grad}
    memo.update({id(b): b for b in model.buffers()})
    reference = copy.deepcopy(model, memo)
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


def _check_same_shapes(model: nn.Module, ref: nn.Module) -> None:
    if not isinstance(ref, nn.Module):
        raise HFTError(f"ref_model must be a torch module, got {type(ref).__name__}")
    mine = {n: tuple(p.shape) for n, p in model.named_parameters()}
    theirs = {n: tuple(p.shape) for n, p in ref.named_parameters()}
    for name, shape in mine.items():
        if name not in theirs:
            raise HFTError(f"ref_model does not match the policy: it has no parameter {name!r}")
        if theirs[name] != shape:
            raise HFTError(
                f"ref_model does not match the policy: {name!r} has shape {list(theirs[name])}, "
                f"the policy's is {list(shape)}"
            )
    extra = sorted(set(theirs) - set(mine))
    if extra:
        raise HFTError(f"ref_model does not match the policy: extra parameter {extra[0]!r}")
