"""Half Fine-Tuning (arXiv 2404.18466): train a drawn half of each block, freeze the rest."""

from .config import HFTConfig
from .errors import HFTError
from .mask import Mask, select
from .optim import HFTOptimizer
from .plugins import hookimpl

__all__ = ["HFTConfig", "HFTError", "HFTOptimizer", "Mask", "apply_hft", "hookimpl", "select"]
__version__ = "0.1.0"


def apply_hft(model, config: HFTConfig | None = None) -> Mask:
    """Draw the mask of ``config`` for ``model`` and apply it; returns the mask."""
    mask = select(model, config)
    mask.apply(model)
    return mask
