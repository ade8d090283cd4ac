"""Half Fine-Tuning (arXiv 2404.18466): train a drawn half of each block, freeze the rest.

The public API; the layers below it are ``registry/`` (hook specs and the plugin
manager), ``core/`` (config, layouts, mask, optimizer), ``builtin/`` (the built-in
strategies and layouts, as plugins) and ``integrations/`` (one adapter per framework).
See docs/architecture.md.
"""

from . import _moved
from .core.config import HFTConfig
from .core.errors import HFTError
from .core.mask import Mask, select
from .core.optim import HFTOptimizer
from .registry import hookimpl

__all__ = ["HFTConfig", "HFTError", "HFTOptimizer", "Mask", "apply_hft", "hookimpl", "select"]
__version__ = "0.1.0"

_moved.install()


def apply_hft(model, config: HFTConfig | None = None) -> Mask:
    """Draw the mask of ``config`` for ``model`` and apply it; returns the mask."""
    mask = select(model, config)
    mask.apply(model)
    return mask
