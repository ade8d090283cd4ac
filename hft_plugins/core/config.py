"""HFTConfig, what to train in one stage, and the settings every framework gives it by.

:class:`HFTConfig` declares each field, its default and its help once; from it come

- :data:`SETTINGS`: one :class:`Setting` per field (``hft_<field>`` key, type, default,
  help), which the ``hft`` command's options (``--<field>``), the TRL arguments
  (:data:`HFTArguments`, ``--hft_<field>``) and the Axolotl YAML keys (``hft_<field>:``)
  are generated from;
- :func:`get_hft_config`: any of those sources (an arguments object, a YAML mapping)
  back to an HFTConfig, or None when HFT is off; a value given while it is off is an
  error, not a silent no-op.

The TRL arguments and Axolotl keys default to None, meaning "not given": the field then
takes HFTConfig's default, except ``stage``, which the stage rule decides
(:mod:`hft_plugins.core.stage`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .catalog import strategy as registered_strategy
from .errors import HFTError


@dataclass(frozen=True)
class HFTConfig:
    """Which half of the model one fine-tuning stage trains."""

    strategy: str = field(
        default="category",
        metadata={
            "help": "Selection rule: 'category' (the paper's), 'layer', 'matrix' or a plugin's."
        },
    )
    ratio: float = field(
        default=0.5,
        metadata={"help": "Fraction of the transformer blocks' parameters to train, in (0, 1)."},
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the draw; with `stage` fixes the mask."}
    )
    stage: int | None = field(
        default=0,
        metadata={
            "help": "Stage index (SFT=0, DPO=1, ...): each stage draws a new half. None: a "
            "trainer picks it, the stage after the model's saved one (see the stage rule)."
        },
    )
    train_embeddings: bool = field(
        default=True, metadata={"help": "Keep input embeddings trainable (the paper does)."}
    )
    train_head: bool = field(
        default=True,
        metadata={"help": "Keep lm_head and other task heads outside the blocks trainable."},
    )
    train_final_norm: bool = field(
        default=True, metadata={"help": "Keep the norm after the last block trainable."}
    )
    guess_layout: bool = field(
        default=False,
        metadata={
            "help": "Train a guessed half where a block cannot be sorted exactly (unplaced "
            "modules, fused projections of unknown split); warns. Off: such models are refused."
        },
    )
    whole_tensors: bool = field(
        default=False,
        metadata={
            "help": "Train or freeze each fused tensor whole (q|k|v, gate|up, routed experts, "
            "mamba in_proj) as one unit, instead of its logical slices; needed under DeepSpeed "
            "ZeRO-2/3 and FSDP2, which step whole tensors. Draws another half than off."
        },
    )

    def __post_init__(self):
        if not isinstance(self.strategy, str) or not self.strategy:
            raise HFTError(f"strategy must be a non-empty string, got {self.strategy!r}")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, int | float):
            raise HFTError(f"ratio must be a number in (0, 1), got {self.ratio!r}")
        if math.isnan(self.ratio) or not 0 < self.ratio < 1:
            raise HFTError(f"ratio must be in (0, 1), got {self.ratio!r}")
        for name in ("seed", "stage"):
            value = getattr(self, name)
            if value is None and name == "stage":
                continue  # "not given": a trainer decides it (core/stage.py)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise HFTError(f"{name} must be a non-negative integer, got {value!r}")
        for name in (
            "train_embeddings",
            "train_head",
            "train_final_norm",
            "guess_layout",
            "whole_tensors",
        ):
            if not isinstance(getattr(self, name), bool):
                raise HFTError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def next_stage(self) -> HFTConfig:
        """The same config one stage later: a fresh, reproducible draw."""
        self.require_stage("next_stage()")
        return dataclasses.replace(self, stage=self.stage + 1)

    def require_stage(self, what: str) -> None:
        """Refuse ``stage=None`` where a stage number is needed (only trainers resolve None)."""
        if self.stage is None:
            raise HFTError(
                f'{what} needs a stage number; stage=None ("not given") is resolved by an HFT '
                "trainer from the model's previous stage"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HFTConfig:
        if not isinstance(data, dict):
            raise HFTError(f"an HFT config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HFTError(
                f"unknown HFT config key {unknown[0]!r}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)


def checked_config(value) -> HFTConfig | None:
    """``value`` if it is an HFTConfig or None; anything else is a one-line error."""
    if value is not None and not isinstance(value, HFTConfig):
        raise HFTError(f"hft_config must be an hft_plugins.HFTConfig, got {type(value).__name__}")
    return value


# ---- the settings: HFTConfig's fields as framework options ---------------------------

FLAG = "hft"
PREFIX = "hft_"
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

    @property
    def optional_help(self) -> str:
        """Help for the ``hft_*`` setting, which defaults to None ("not given")."""
        if self.field == "stage":
            return (
                f"HFT: {self.help} Not given: the stage after the model's previous HFT stage; "
                "SFT starts at 0, other trainers need it."
            )
        default = str(self.default).lower() if isinstance(self.default, bool) else self.default
        return f"HFT: {self.help} Not given: {default}."


def _plain_type(annotation) -> type:
    """``int | None`` -> int: the type a value of the field has when given."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _settings() -> tuple[Setting, ...]:
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


# Every HFTConfig field, in declaration order, as a Setting; and by key.
SETTINGS = _settings()
KEYS = {s.key: s for s in SETTINGS}

# The TRL arguments: ``hft`` plus ``hft_<field>`` for every HFTConfig field. A plain
# dataclass, so that TRL's configs (dataclasses parsed by TrlParser) can inherit it.
HFTArguments = dataclasses.make_dataclass(
    "HFTArguments",
    [
        ("hft", bool, field(default=False, metadata={"help": FLAG_HELP})),
        *(
            (s.key, s.type | None, field(default=None, metadata={"help": s.optional_help}))
            for s in SETTINGS
        ),
    ],
)
HFTArguments.__module__ = __name__
HFTArguments.__doc__ = (
    "The ``hft`` flag and one ``hft_<field>`` argument per HFTConfig field (None: not given)."
)


def get_hft_config(source) -> HFTConfig | None:
    """The HFTConfig that ``source`` asks for; None when HFT is off.

    ``source`` is an HFTConfig (returned as it is), None, an arguments object with the
    ``hft`` and ``hft_*`` fields (TRL's ``HFT*Config``, :data:`HFTArguments`; arguments
    without them give None), or a mapping of ``hft`` and ``hft_*`` values (an Axolotl
    config). A value of None is "not given": the field keeps HFTConfig's default, except
    ``stage``, which stays None for the trainer's stage rule. The counterpart of TRL's
    ``get_peft_config``::

        trainer = HFTDPOTrainer(..., args=training_args, hft_config=get_hft_config(training_args))
    """
    if source is None or isinstance(source, HFTConfig):
        return source
    if isinstance(source, Mapping):
        values, turn_on = source, "hft: true"
    elif hasattr(source, FLAG):
        values, turn_on = vars(source), "--hft"
    else:
        return None
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
    registered_strategy(config.strategy)  # an unknown name fails now, not after loading the model
    return config
