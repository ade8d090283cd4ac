"""The hooks a plugin can implement; the built-in strategies, layouts and commands use them too."""

import pluggy

PROJECT = "hft_plugins"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_strategies(register):
    """Register selection strategies: ``register(name, function, help)``."""


@hookspec
def register_layouts(register):
    """Register architecture layouts: ``register(layout)``."""


@hookspec
def register_commands(subparsers):
    """Add subcommands to the ``hft`` console script (an ``argparse`` subparsers object).

    A command's parser sets ``run=<function(args) -> exit code>`` with ``set_defaults``.
    """


@hookspec
def mask_applied(model, mask):
    """Called after a mask has set ``requires_grad`` on a model."""


@hookspec
def stage_begin(model, mask, stage):
    """Called once per fine-tuning stage, when it starts training with ``mask``."""


@hookspec
def stage_end(model, mask, stage):
    """Called once per fine-tuning stage, when it has finished training with ``mask`` (at the
    next redraw, or ``HFTOptimizer.end_stage()``, which the trainer integrations call when
    ``train()`` ends)."""
