"""The stage rule: which HFT stage a trainer trains when the config leaves it out.

A stage that is not given (``HFTConfig(stage=None)``) follows the model's previous HFT
stage: previous stage + 1. A model with no previous stage starts at 0 where a model may
start its HFT history (SFT, the plain Trainer); every other trainer (DPO, GRPO, KTO, ...)
needs the stage given. A stage given explicitly that draws exactly the previous stage's
half (same strategy, seed and stage) is refused.

The previous stage is the mask a model was trained with: recorded on the model object by
an HFT trainer's ``train()``, else ``hft_mask.json`` beside its weights. Finding it needs
the model's files (``integrations/models.previous_stage``); the rule itself needs only
the mask.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import HFTConfig
from .errors import HFTError
from .mask import HFTMask

# The mask of the half a saved model trained; a next stage's rule reads this file.
MASK_NAME = "hft_mask.json"


@dataclass(frozen=True)
class PreviousStage:
    """The mask of a model's previous HFT stage and where it was found."""

    mask: HFTMask
    source: str


def decide_stage(
    config: HFTConfig,
    previous: PreviousStage | None,
    *,
    trainer: str,
    first_stage: bool,
    how: str,
) -> HFTConfig:
    """``config`` with its stage decided by the stage rule (see the module docstring).

    ``trainer`` names the trainer for messages ("DPOTrainer", "axolotl rl: dpo");
    ``first_stage`` is True where a model may start its HFT history (SFT, the plain
    Trainer); ``how`` tells how to give the stage, with ``{n}`` for a number
    ("pass --hft_stage {n}").
    """
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
