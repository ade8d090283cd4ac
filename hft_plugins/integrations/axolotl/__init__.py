"""Axolotl plugin: ``hft: true`` in a YAML trains a drawn half of each block (HFT).

    plugins:
      - hft_plugins.integrations.axolotl.HFTPlugin
    hft: true
    hft_ratio: 0.5

Two modules: :mod:`.config` reads the YAML and builds what the trainer needs (the
``hft_*`` keys, the checks, the stage, the engine, the optimizer factory) and imports no
framework, so it works without axolotl installed; :mod:`.plugin` holds ``HFTPlugin``,
axolotl's ``BasePlugin`` with HFT's hooks, and is imported when ``HFTPlugin`` is first
looked up here (axolotl does that when it reads ``plugins:``). ``HFTArgs`` (pydantic) is
built when first looked up, too.
"""

from .config import (
    HFTOptimizerFactory,
    check_config,
    config_engine,
    optimizer_cls_and_kwargs,
)

__all__ = [
    "HFTArgs",
    "HFTOptimizerFactory",
    "HFTPlugin",
    "check_config",
    "config_engine",
    "optimizer_cls_and_kwargs",
]


def __getattr__(name: str):
    if name == "HFTArgs":  # pydantic, imported only when axolotl reads the schema
        from .config import args_model

        return args_model()
    if name == "HFTPlugin":
        from .plugin import HFTPlugin

        return HFTPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
