"""The bottom layer: hook specifications and the plugin manager (pluggy and the standard library)."""

from .hookspecs import hookimpl, hookspec
from .manager import (
    DEFAULT_PLUGINS,
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    HFTPluginWarning,
    Registered,
    collect,
    failures,
    manager,
    notify,
    reset,
)

__all__ = [
    "DEFAULT_PLUGINS",
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "HFTPluginWarning",
    "Registered",
    "collect",
    "failures",
    "hookimpl",
    "hookspec",
    "manager",
    "notify",
    "reset",
]
