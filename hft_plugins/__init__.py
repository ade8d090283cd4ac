"""Half Fine-Tuning (arXiv 2404.18466): train a drawn half of each block, freeze the rest.

The public API; the layers below it are ``registry/`` (hook specs and the plugin
manager), ``core/`` (config, layouts, mask, optimizer), ``builtin/`` (the built-in
strategies and layouts, as plugins) and ``integrations/`` (one adapter per framework).

    from hft_plugins import HFTConfig, get_hft_model
    model = get_hft_model(model, HFTConfig())   # PEFT-style; needs no framework
    model.print_trainable_parameters()

The trainers live in their adapters, each imported when used:
``hft_plugins.integrations.transformers.HFTTrainer``, ``hft_plugins.integrations.trl``'s
``HFT*Trainer``s, and the Axolotl plugin ``hft_plugins.integrations.axolotl.HFTPlugin``.
"""

from .core.config import HFTConfig, get_hft_config
from .core.errors import HFTError
from .core.layouts import Layout
from .core.mask import HFTMask, select
from .core.optim import HFTOptimizer
from .integrations.peft_style import AutoHFTModelForCausalLM, HFTModel, get_hft_model
from .registry import hookimpl

__all__ = [
    "AutoHFTModelForCausalLM",
    "HFTConfig",
    "HFTError",
    "HFTModel",
    "HFTMask",
    "HFTOptimizer",
    "Layout",
    "apply_hft",
    "get_hft_config",
    "get_hft_model",
    "hookimpl",
    "select",
]
__version__ = "0.1.0"


def apply_hft(model, config: HFTConfig | None = None) -> HFTMask:
    """Draw the mask of ``config`` for ``model`` and apply it; returns the mask."""
    mask = select(model, config)
    mask.apply(model)
    return mask
