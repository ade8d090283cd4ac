"""What every framework adapter shares: HFTConfig's fields as settings, the stage rule,
the checks of a config, a model and an optimizer class, and the model card.

One config surface. :class:`~hft_plugins.HFTConfig` declares each field, its
default and its help once; from it come

- ``settings()``: one :class:`Setting` per field (``hft_<field>`` key, type,
  default, help), which the CLI (``hft inspect --<field>``), the TRL arguments
  (:data:`HFTArguments`, ``--hft_<field>``) and the Axolotl YAML keys
  (:func:`axolotl_args_model`, ``hft_<field>:``) are generated from;
- :func:`config_from_settings`: the ``hft`` flag and ``hft_*`` values of any of
  them back to an HFTConfig (None when HFT is off; a value given while it is off
  is an error, not a silent no-op).

The TRL arguments and Axolotl keys default to None, meaning "not given": the
field then takes HFTConfig's default, except ``stage``, which the stage rule
decides.

The stage rule (:func:`resolve_stage`), used by every trainer and the Axolotl
plugin: a stage that is not given follows the model's previous HFT stage (the
mask recorded on the model object by an HFT trainer's ``train()``, else
``hft_mask.json`` beside the model's weights, in its directory or its Hub repo):
previous stage + 1. A model with no
previous stage starts at 0 in SFT and the plain Trainer; every other trainer
(DPO, GRPO, KTO, ...) needs the stage given. A stage given explicitly that draws
exactly the previous stage's half (same strategy, seed and stage) is refused.

Framework imports (pydantic) stay inside functions: this module is imported by
each adapter and must not pull in another adapter's framework.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core import catalog
from ..core.config import HFTConfig
from ..core.errors import HFTError
from ..core.mask import Mask
from ..core.optim import HFTOptimizer, qualified_name

FLAG = "hft"
PREFIX = "hft_"
# The mask of the half a saved model trained; a next stage's draw reads this name.
MASK_NAME = "hft_mask.json"
# Where an HFT trainer's train() records the mask it trained with, on the model object.
RECORD_ATTR = "_hft_trained_mask"

FLAG_HELP = "Half Fine-Tuning: train a drawn half of each transformer block, freeze the rest."


@dataclass(frozen=True)
class Setting:
    """One HFTConfig field as a framework setting."""

    field: str  # the HFTConfig field
    key: str  # hft_<field>: TRL argument and Axolotl YAML key
    type: type  # bool, int, float or str (None stripped)
    default: Any  # HFTConfig's default
    help: str  # HFTConfig's help

    @property
    def flag(self) -> str:
        """The ``hft`` command's option: ``--<field>`` with dashes."""
        return "--" + self.field.replace("_", "-")


def _plain_type(annotation) -> type:
    """``int | None`` -> int: the type a value of the field has when given."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def settings() -> tuple[Setting, ...]:
    """Every HFTConfig field, in declaration order, as a :class:`Setting`."""
    hints = typing.get_type_hints(HFTConfig)
    return tuple(
        Setting(
            field=f.name,
            key=PREFIX + f.name,
            type=_plain_type(hints[f.name]),
            default=f.default,
            help=f.metadata.get("help", ""),
        )
        for f in dataclasses.fields(HFTConfig)
    )


SETTINGS = settings()
KEYS = {s.key: s for s in SETTINGS}


def setting_help(s: Setting) -> str:
    """Help for an ``hft_*`` setting that defaults to None ("not given")."""
    if s.field == "stage":
        return (
            f"HFT: {s.help} Not given: the stage after the model's previous HFT stage; "
            "SFT starts at 0, other trainers need it."
        )
    default = str(s.default).lower() if isinstance(s.default, bool) else s.default
    return f"HFT: {s.help} Not given: {default}."


def _trl_fields() -> list:
    fields = [("hft", bool, field(default=False, metadata={"help": FLAG_HELP}))]
    for s in SETTINGS:
        fields.append(
            (s.key, s.type | None, field(default=None, metadata={"help": setting_help(s)}))
        )
    return fields


# The TRL arguments: ``hft`` plus ``hft_<field>`` for every HFTConfig field. A plain
# dataclass, so that TRL's configs (dataclasses parsed by TrlParser) can inherit it.
HFTArguments = dataclasses.make_dataclass("HFTArguments", _trl_fields())
HFTArguments.__module__ = __name__
HFTArguments.__doc__ = (
    "The ``hft`` flag and one ``hft_<field>`` argument per HFTConfig field (None: not given)."
)


def axolotl_args_model():
    """The pydantic model of the Axolotl YAML keys: ``hft`` and ``hft_<field>``, all optional."""
    from pydantic import Field, create_model

    fields = {
        "hft": (bool | None, Field(default=None, json_schema_extra={"description": FLAG_HELP}))
    }
    for s in SETTINGS:
        fields[s.key] = (
            s.type | None,
            Field(default=None, json_schema_extra={"description": setting_help(s)}),
        )
    model = create_model("HFTArgs", **fields)
    model.__doc__ = "The YAML keys the HFT plugin adds to axolotl's config schema."
    return model


def config_from_settings(values: Mapping[str, Any], *, turn_on: str) -> HFTConfig | None:
    """The HFTConfig of an ``hft`` flag and ``hft_*`` values (None: not given), or None when off.

    ``turn_on`` says how HFT is turned on where the values come from (``--hft``,
    ``hft: true``), for the error about a value given while HFT is off. ``stage``
    stays None when not given: a trainer resolves it (:func:`resolve_stage`).
    """
    enabled = values.get(FLAG)
    if enabled not in (None, True, False):
        raise HFTError(f"hft must be true or false, got {enabled!r}")
    unknown = sorted(
        k for k in values if isinstance(k, str) and k.startswith(PREFIX) and k not in KEYS
    )
    if unknown:
        raise HFTError(f"unknown option {unknown[0]!r}; known: {', '.join(KEYS)}")
    given = {s.field: values[s.key] for s in SETTINGS if values.get(s.key) is not None}
    if not enabled:
        if given:
            key = PREFIX + next(iter(given))
            raise HFTError(f"{key} is set but HFT is off: add {turn_on}, or remove {key}")
        return None
    config = HFTConfig(**{"stage": None, **given})
    catalog.strategy(config.strategy)  # an unknown name fails now, not after loading the model
    return config


def config_from_trainer_args(hft_config, args) -> HFTConfig | None:
    """A trainer's config: ``hft_config`` if given, else the ``hft``/``hft_*`` arguments of
    ``args`` (an HFT*Config; None when ``hft`` is off), else None: HFT off. Both given must
    agree (``hft_config=get_hft_config(args)`` does)."""
    from_args = None
    if all(hasattr(args, name) for name in (FLAG, *KEYS)):
        from_args = config_from_settings(vars(args), turn_on="--hft")
    if hft_config is None:
        return from_args
    if not isinstance(hft_config, HFTConfig):
        raise HFTError(
            f"hft_config must be an hft_plugins.HFTConfig, got {type(hft_config).__name__}"
        )
    if from_args is not None and from_args != hft_config:
        raise HFTError(
            "hft_config differs from the --hft_* arguments of args; pass one of the two "
            "(hft_config=get_hft_config(args) is the same config)"
        )
    return hft_config


def trainer_config(hft_config, args, model, *, trainer: str, first_stage: bool):
    """:func:`config_from_trainer_args` with the stage decided by :func:`resolve_stage`."""
    config = config_from_trainer_args(hft_config, args)
    if config is None:
        return None
    how = "pass HFTConfig(stage={n})"
    if hasattr(args, FLAG):
        how = "pass --hft_stage {n} (hft_config=HFTConfig(stage={n}) in Python)"
    return resolve_stage(config, model, trainer=trainer, first_stage=first_stage, how=how)


# ---- the stage rule ----------------------------------------------------------


@dataclass(frozen=True)
class PreviousStage:
    """The mask of a model's previous HFT stage and where it was found."""

    mask: Mask
    source: str


def record_trained_mask(model, mask: Mask) -> None:
    """Note on ``model`` that it was trained with ``mask`` (read by the next stage's rule)."""
    setattr(model, RECORD_ATTR, mask)


def previous_stage(model) -> PreviousStage | None:
    """The model's previous HFT stage: recorded on the object, else ``hft_mask.json`` beside
    its weights, in its directory or its Hub repo (:func:`models.model_file`)."""
    from .models import model_file

    if not isinstance(model, str | os.PathLike):
        recorded = model.__dict__.get(RECORD_ATTR) if hasattr(model, "__dict__") else None
        if isinstance(recorded, Mask):
            return PreviousStage(recorded, "recorded on the model by its last HFT training")
    found = model_file(model, MASK_NAME)
    return PreviousStage(Mask.load(found), str(found)) if found is not None else None


def resolve_stage(
    config: HFTConfig, model, *, trainer: str, first_stage: bool, how: str
) -> HFTConfig:
    """``config`` with its stage decided by the stage rule (see the module docstring).

    ``trainer`` names the trainer for messages ("DPOTrainer", "axolotl rl: dpo");
    ``first_stage`` is True where a model may start its HFT history (SFT, the plain
    Trainer); ``how`` tells how to give the stage, with ``{n}`` for a number
    ("pass --hft_stage {n}").
    """
    previous = previous_stage(model) if model is not None else None
    if config.stage is None:
        if previous is not None:
            return dataclasses.replace(config, stage=previous.mask.config.stage + 1)
        if first_stage:
            return dataclasses.replace(config, stage=0)
        raise HFTError(
            f"{trainer} needs the HFT stage given: the model has no {MASK_NAME} of an earlier "
            f"HFT stage to follow (SFT is stage 0); {how.format(n=1)}"
        )
    if previous is not None:
        last = previous.mask.config
        if (last.strategy, last.seed, last.stage) == (config.strategy, config.seed, config.stage):
            raise HFTError(
                f"HFT stage {config.stage} (seed {config.seed}) is the stage this model was "
                f"already tuned in ({previous.source}) and would train the same half again; "
                f"{how.format(n=last.stage + 1)}, or leave the stage out to follow on"
            )
    return config


# ---- what the trainers and the PEFT-style wrapper share ----------------------

# Keys the optimizer factory of ``get_optimizer_cls_and_kwargs`` uses to hand over its own groups.
_SPECIAL_OPTIMIZER_KEYS = ("params", "model", "optimizer_dict")
PAPER_URL = "https://arxiv.org/abs/2404.18466"
HFT_TAG = "hft"
_CARD_HEADING = "## Half Fine-Tuning (HFT)"


def check_hft_config(hft_config) -> HFTConfig:
    """``hft_config`` as an HFTConfig (None means the paper's default); anything else is an error."""
    if hft_config is None:
        return HFTConfig()
    if not isinstance(hft_config, HFTConfig):
        raise HFTError(
            f"hft_config must be an hft_plugins.HFTConfig, got {type(hft_config).__name__}"
        )
    return hft_config


def reject_peft(model) -> None:
    """HFT trains half of the base weights; a PEFT adapter freezes them all: refuse the mix."""
    if hasattr(model, "peft_config") or any(
        "lora_" in name for name, _ in model.named_parameters()
    ):
        raise HFTError(
            "HFT cannot be combined with a PEFT adapter on the same model: use one or the other"
        )


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


def register_bnb_embedding_overrides(model: nn.Module, optimizer_cls, kwargs) -> None:
    """As the Trainer does: bitsandbytes keeps embeddings' state in 32 bits under 8-bit optim."""
    if "bitsandbytes" not in str(optimizer_cls) or kwargs.get("optim_bits") != 8:
        return
    import bitsandbytes

    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            manager.register_module_override(module, "weight", {"optim_bits": 32})


def build_hft_optimizer(
    model: nn.Module, mask: Mask, optimizer_cls, kwargs: Mapping[str, Any], *, weight_decay: float
) -> HFTOptimizer:
    """A trainer's optimizer choice as an HFTOptimizer over ``mask``'s half: the one way every
    adapter wraps it (the HF Trainer mixin, and so TRL, and the Axolotl plugin's factory).

    ``optimizer_cls`` and ``kwargs`` are what the trainer would build (its
    ``get_optimizer_cls_and_kwargs``, or ``optimizer_cls_and_kwargs``; check them first with
    :func:`check_optimizer_class`). ``weight_decay`` (the TrainingArguments') goes to the decay
    group and none to biases and norms, as in the Trainer's own groups, whose
    ``weight_decay`` wins over one in ``kwargs``.
    """
    kwargs = {**kwargs, "weight_decay": weight_decay}
    optimizer = HFTOptimizer(model, mask, optimizer_cls, **kwargs)
    register_bnb_embedding_overrides(model, optimizer_cls, kwargs)
    return optimizer


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


def hft_card_section(mask: Mask) -> str:
    """The model card's HFT section: the draw and the trainable fraction, with the paper."""
    c = mask.config
    done, total = mask.fractions()["total"]
    return (
        f"{_CARD_HEADING}\n\n"
        f"Fine-tuned with [Half Fine-Tuning]({PAPER_URL}) (hft-plugins): this stage trained a "
        "drawn half of every transformer block and left the other half exactly as it was.\n\n"
        "| strategy | ratio | seed | stage | trainable fraction |\n"
        "|---|---|---|---|---|\n"
        f"| {c.strategy} | {c.ratio} | {c.seed} | {c.stage} | {done / total:.4f} "
        f"({done:,} of {total:,} parameters) |\n"
    )


def hft_model_card(
    existing: str | None, mask: Mask, base_model: str | None = None, tags: Iterable[str] = ()
) -> str:
    """``existing`` model card text (or a new card) with the ``hft`` tag and the HFT section.

    What the card held stays; an HFT section from an earlier stage is replaced.
    """
    from huggingface_hub import ModelCard

    text = existing or "# Model card\n"
    card = ModelCard(text if text.lstrip().startswith("---") else "---\n{}\n---\n" + text)
    card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *tags, HFT_TAG]))
    if base_model and not os.path.isdir(base_model) and not card.data.get("base_model"):
        card.data.base_model = base_model
    body = card.text
    start = body.find(_CARD_HEADING)
    if start >= 0:
        end = body.find("\n## ", start + len(_CARD_HEADING))
        body = body[:start].rstrip() + ("\n\n" + body[end + 1 :] if end >= 0 else "")
    card.text = body.rstrip() + "\n\n" + hft_card_section(mask)
    return str(card)


def hft_start_line(optimizer: HFTOptimizer) -> str:
    """One line: the draw, the trainable fraction and the optimizer that steps it."""
    c = optimizer.mask.config
    done, total = optimizer.mask.fractions()["total"]
    inner = type(optimizer.inner)
    fused = " (fused)" if optimizer.inner.defaults.get("fused") else ""
    return (
        f"HFT: strategy={c.strategy} ratio={c.ratio} seed={c.seed} stage={c.stage}; "
        f"trainable {done / total:.4f} of all parameters ({done:,} of {total:,}); "
        f"optimizer {inner.__module__}.{inner.__qualname__}{fused}"
    )


def unwrap_optimizer(optimizer) -> HFTOptimizer | None:
    """The HFTOptimizer inside accelerate's (or any) ``.optimizer`` wrappers, or None."""
    seen = 0
    while optimizer is not None and seen < 8:
        if isinstance(optimizer, HFTOptimizer):
            return optimizer
        optimizer = getattr(optimizer, "optimizer", None)
        seen += 1
    return None
