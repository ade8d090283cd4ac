"""The plugin manager: built-ins first, then the ``hft_plugins`` entry-point group.

A plugin that fails to load or to register is skipped with a warning that names
it; the rest keep working. ``HFT_DISABLE_PLUGINS=1`` turns every third-party
plugin off; a comma-separated list of entry-point names turns off just those.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from dataclasses import dataclass
from typing import Any

import pluggy

from . import builtins, hookspecs
from .architectures import Layout
from .errors import HFTError

ENTRY_POINT_GROUP = "hft_plugins"
DISABLE_ENV = "HFT_DISABLE_PLUGINS"
hookimpl = pluggy.HookimplMarker("hft_plugins")


@dataclass(frozen=True)
class Registered:
    name: str
    value: Any
    help: str
    source: str  # "builtin" or the plugin that registered it


class HFTPluginWarning(UserWarning):
    """A third-party plugin failed to load or register and was skipped."""


_manager: pluggy.PluginManager | None = None
_failures: dict[str, str] = {}


def _disabled() -> set[str] | bool:
    value = os.environ.get(DISABLE_ENV, "").strip()
    if value.lower() in ("1", "true", "yes", "all"):
        return True
    return {v.strip() for v in value.split(",") if v.strip()}


def manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    global _manager
    if _manager is not None:
        return _manager
    pm = pluggy.PluginManager("hft_plugins")
    pm.add_hookspecs(hookspecs)
    pm.register(builtins, name="builtin")
    disabled = _disabled()
    if disabled is not True:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in disabled or pm.has_plugin(ep.name):
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin must not break hft
                _skip(ep.name, f"failed to load: {type(exc).__name__}: {exc}")
    _manager = pm
    return pm


def reset() -> None:
    """Forget the manager and its plugins (tests, or after installing a plugin)."""
    global _manager
    _manager = None
    _failures.clear()


def failures() -> dict[str, str]:
    """Plugins skipped so far, with the reason."""
    manager()
    return dict(_failures)


def _skip(plugin: str, reason: str) -> None:
    _failures[plugin] = reason
    warnings.warn(f"hft plugin {plugin!r} skipped: {reason}", HFTPluginWarning, stacklevel=3)


def _collect(hook_name: str, make_entry) -> dict[str, Registered]:
    pm = manager()
    found: dict[str, Registered] = {}
    # get_hookimpls lists in registration order: built-ins first, so they win name clashes
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        source = impl.plugin_name
        batch: dict[str, Registered] = {}

        def register(*args, _batch=batch, _source=source, **kwargs):
            entry = make_entry(_source, *args, **kwargs)
            _batch[entry.name] = entry

        try:
            impl.function(register=register)
        except Exception as exc:
            _skip(source, f"{hook_name} raised {type(exc).__name__}: {exc}")
            continue
        for name, entry in batch.items():
            if name in found:
                _skip(source, f"{name!r} is already registered by {found[name].source}")
            else:
                found[name] = entry
    return found


def _strategy_entry(source, name, function, help=""):
    if not isinstance(name, str) or not callable(function):
        raise HFTError(f"register(name, function, help) needs a name and a callable, got {name!r}")
    return Registered(name, function, help, source)


def _layout_entry(source, layout):
    if not isinstance(layout, Layout):
        raise HFTError(f"register(layout) needs an hft_plugins Layout, got {type(layout).__name__}")
    return Registered(layout.name, layout, ", ".join(layout.model_types), source)


def strategies() -> dict[str, Registered]:
    """Every registered strategy by name."""
    return _collect("register_strategies", _strategy_entry)


def layouts() -> list[Layout]:
    """Every registered layout, built-ins first."""
    return [entry.value for entry in layout_entries().values()]


def layout_entries() -> dict[str, Registered]:
    return _collect("register_layouts", _layout_entry)


def strategy(name: str):
    """The strategy function called ``name``; the error lists the available ones."""
    found = strategies()
    if name not in found:
        raise HFTError(f"unknown strategy {name!r}; available: {', '.join(sorted(found))}")
    return found[name].value


def call(hook_name: str, **kwargs) -> None:
    """Call an observer hook (mask_applied, stage_begin, stage_end) on every plugin."""
    getattr(manager().hook, hook_name)(**kwargs)
