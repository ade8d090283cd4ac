"""HFTConfig: what to train in one stage, as a dataclass with help metadata."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

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
                continue  # "not given": a trainer resolves it (integrations/_common.py)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise HFTError(f"{name} must be a non-negative integer, got {value!r}")
        for name in ("train_embeddings", "train_head", "train_final_norm", "guess_layout"):
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
