"""The built-in strategies and layouts, registered like any third-party plugin."""

import pluggy

from .architectures import BUILTIN_LAYOUTS
from .family_layouts import FAMILY_LAYOUTS
from .strategies import BUILTIN_STRATEGIES

hookimpl = pluggy.HookimplMarker("hft_plugins")


@hookimpl
def register_strategies(register):
    for name, (function, help_text) in BUILTIN_STRATEGIES.items():
        register(name, function, help_text)


@hookimpl
def register_layouts(register):
    for layout in (*BUILTIN_LAYOUTS, *FAMILY_LAYOUTS):
        register(layout)
