"""The hooks a plugin can implement; the built-in strategies and layouts use them too."""

import pluggy

hookspec = pluggy.HookspecMarker("hft_plugins")


@hookspec
def register_strategies(register):
    """Register selection strategies: ``register(name, function, help)``."""


@hookspec
def register_layouts(register):
    """Register architecture layouts: ``register(layout)``."""


@hookspec
def mask_applied(model, mask):
    """Called after a mask has set ``requires_grad`` on a model."""


@hookspec
def stage_begin(model, mask, stage):
    """Called when a fine-tuning stage starts training with ``mask``."""


@hookspec
def stage_end(model, mask, stage):
    """Called when a fine-tuning stage has finished training with ``mask``."""
