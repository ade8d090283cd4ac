"""What the Axolotl plugin reads from an axolotl config, and what it builds for the trainer.

- :func:`args_model`: the YAML keys, ``hft`` and ``hft_<field>`` for every HFTConfig field,
  as the pydantic model axolotl merges into its config schema (the package's ``HFTArgs``);
- :func:`check_config`: on the raw YAML, before any data or model loads, the options HFT
  conflicts with (adapters, ``unfrozen_parameters``, LISA, per-group learning rates,
  DeepSpeed ZeRO-0/1, FSDP1) fail in one line, and the stage is decided;
- :func:`config_engine`: the sharding engine the YAML asks for;
- :func:`optimizer_cls_and_kwargs`: the trainer's optimizer choice, wrapped by
  :class:`HFTOptimizerFactory` when the trainer builds its optimizer.

No framework is imported at module level (pydantic when ``HFTArgs`` is first looked up,
transformers inside the optimizer functions): this works without axolotl or pydantic installed.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...core.config import FLAG, FLAG_HELP, SETTINGS, HFTConfig, get_hft_config
from ...core.errors import HFTError
from ...core.mask import HFTMask
from ...core.optim import HFTOptimizer
from ...core.stage import decide_stage
from .. import sharded
from ..models import previous_stage

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


@functools.cache
def args_model():
    """The pydantic model of the YAML keys: ``hft`` and ``hft_<field>``, all optional."""
    from pydantic import Field, create_model

    fields = {
        FLAG: (bool | None, Field(default=None, json_schema_extra={"description": FLAG_HELP}))
    }
    for s in SETTINGS:
        fields[s.key] = (
            s.type | None,
            Field(default=None, json_schema_extra={"description": s.optional_help}),
        )
    model = create_model("HFTArgs", **fields)
    model.__module__ = "hft_plugins.integrations.axolotl"  # where the plugin names it
    model.__doc__ = "The YAML keys the HFT plugin adds to axolotl's config schema."
    return model


def _run_kind(cfg: Mapping[str, Any]) -> str | None:
    """What the run trains, for the stage rule: None for SFT, else e.g. "rl: dpo"."""
    if cfg.get("rl"):
        rl = cfg["rl"]
        return f"rl: {getattr(rl, 'value', rl)}"
    for key in ("reward_model", "process_reward_model"):
        if cfg.get(key):
            return f"{key}: true"
    return None


def with_stage(cfg: Mapping[str, Any], config: HFTConfig, model) -> HFTConfig:
    """``config`` with its stage decided by the stage rule (``core/stage.py``).

    The previous stage is read from ``model``: the loaded policy, or the name of the base
    model (``hft_mask.json`` beside its weights, in its directory or Hub repo). SFT starts
    at stage 0; an ``rl:`` or reward-model run needs ``hft_stage`` unless the base model
    has a previous stage.
    """
    kind = _run_kind(cfg)
    return decide_stage(
        config,
        previous_stage(model),
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
        return sharded.deepspeed_engine(config)
    fsdp_config = cfg.get("fsdp_config") or {}
    if cfg.get("fsdp") or fsdp_config:
        version = cfg.get("fsdp_version")
        if version is None and isinstance(fsdp_config, Mapping):
            version = fsdp_config.get("fsdp_version", fsdp_config.get("version"))
        return sharded.fsdp_engine(version)
    return None


def check_config(cfg: Mapping[str, Any]) -> HFTConfig | None:
    """Reject options that conflict with ``hft: true``; return its HFTConfig (None when off).

    The plugin calls it on the raw YAML, where unset options are absent rather than filled
    with defaults. The stage is decided here (from ``base_model``'s ``hft_mask.json``), so a
    missing ``hft_stage`` fails before any data or model loads.
    """
    config = get_hft_config(cfg)
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
    return with_stage(cfg, config, cfg.get("base_model"))


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
        hft_mask: HFTMask,
        optimizer_cls,
        weight_decay: float = 0.0,
        **kwargs,
    ) -> HFTOptimizer:
        from ..transformers import build_hft_optimizer

        optimizer = build_hft_optimizer(
            model, hft_mask, optimizer_cls, kwargs, weight_decay=weight_decay
        )
        LOG.info(f"HFT: training with {optimizer!r}")
        return optimizer


def checked_optimizer_choice(trainer) -> tuple[type, dict[str, Any]]:
    """The optimizer class and arguments the trainer would use, if HFT can wrap them; a
    refusal names the YAML's ``optimizer:`` (an axolotl custom optimizer included)."""
    from ..transformers import optimizer_choice

    optim = str(getattr(trainer.args.optim, "value", trainer.args.optim))
    return optimizer_choice(trainer, trainer.model, f"optimizer: {optim}")


def optimizer_cls_and_kwargs(trainer, mask: HFTMask) -> tuple[type, dict[str, Any]]:
    """The trainer's own optimizer choice, wrapped so that only the mask's half has state."""
    optimizer_cls, kwargs = checked_optimizer_choice(trainer)
    kwargs = {**kwargs, "weight_decay": trainer.args.weight_decay}
    return HFTOptimizerFactory, {"hft_mask": mask, "optimizer_cls": optimizer_cls, **kwargs}
