"""The plugin manager: the built-in plugin modules first, then the ``hft_plugins`` entry points.

The built-ins are modules named in :data:`DEFAULT_PLUGINS`, imported by name and
registered exactly as a third party's entry point is, so nothing here imports the
code it registers. What the registering hooks return is collected once per process
and kept until the set of plugins changes (:func:`reset`, or a plugin registered or
unregistered on the manager).

A plugin that fails to load or to register is skipped with a warning that names it;
the rest keep working. ``HFT_DISABLE_PLUGINS=1`` turns every third-party plugin off;
a comma-separated list of entry-point names turns off just those.

Hooks are called one implementation at a time (pluggy's ``get_hookimpls``) rather than
through ``pm.hook.<name>(...)``: pluggy stops at the first implementation that raises
and does not say which plugin registered what, and both matter here.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "hft_plugins"
DISABLE_ENV = "HFT_DISABLE_PLUGINS"
BUILTIN = "builtin"
DEFAULT_PLUGINS = (
    "hft_plugins.builtin.strategies",
    "hft_plugins.builtin.families",
)


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
_collected: dict[str, tuple[list[object], dict[str, Registered]]] = {}


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
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=f"{BUILTIN}:{module_name}")
    disabled = _disabled()
    if disabled is not True:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in disabled or pm.has_plugin(ep.name):
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin must not break hft
                skip(ep.name, f"failed to load: {type(exc).__name__}: {exc}")
    _manager = pm
    return pm


def reset() -> None:
    """Forget the manager, its plugins and what they registered (tests, or after an install)."""
    global _manager
    _manager = None
    _failures.clear()
    _collected.clear()


def failures() -> dict[str, str]:
    """Plugins skipped so far, with the reason."""
    manager()
    return dict(_failures)


def skip(plugin: str, reason: str) -> None:
    """Record and warn once that ``plugin`` was skipped."""
    _failures[plugin] = reason
    warnings.warn(f"hft plugin {plugin!r} skipped: {reason}", HFTPluginWarning, stacklevel=3)


def source_of(plugin_name: str) -> str:
    return BUILTIN if plugin_name.startswith(f"{BUILTIN}:") else plugin_name


def collect(hook_name: str, make_entry: Callable[..., Registered]) -> dict[str, Registered]:
    """What every plugin's ``hook_name`` registers, by name; built-ins win name clashes.

    ``make_entry(source, *args, **kwargs)`` turns one ``register(...)`` call into a
    :class:`Registered` (and raises on a bad one: that plugin is skipped). Collected
    once per set of plugins.
    """
    pm = manager()
    plugins = list(pm.get_plugins())  # held, so an identity cannot be reused while cached
    cached = _collected.get(hook_name)
    if cached is not None and _same_objects(cached[0], plugins):
        return dict(cached[1])
    found: dict[str, Registered] = {}
    # get_hookimpls lists in registration order: built-ins first
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        source = source_of(impl.plugin_name)
        batch: dict[str, Registered] = {}

        def register(*args, _batch=batch, _source=source, **kwargs):
            entry = make_entry(_source, *args, **kwargs)
            _batch[entry.name] = entry

        try:
            impl.function(register=register)
        except Exception as exc:
            skip(impl.plugin_name, f"{hook_name} raised {type(exc).__name__}: {exc}")
            continue
        for name, entry in batch.items():
            if name in found:
                skip(impl.plugin_name, f"{name!r} is already registered by {found[name].source}")
            else:
                found[name] = entry
    _collected[hook_name] = (plugins, found)
    return dict(found)


def _same_objects(a: list[object], b: list[object]) -> bool:
    return len(a) == len(b) and all(any(x is y for y in b) for x in a)


def notify(hook_name: str, **kwargs) -> None:
    """Call an observer hook (mask_applied, stage_begin, stage_end, register_commands).

    A plugin whose hook raises is reported with a warning naming it, as for the
    registering hooks, so a broken logger cannot stop a training run mid-stage.
    """
    # reversed: pluggy's own calling order (the last registered first)
    for impl in reversed(getattr(manager().hook, hook_name).get_hookimpls()):
        try:
            impl.function(**{name: kwargs[name] for name in impl.argnames})
        except Exception as exc:
            skip(impl.plugin_name, f"{hook_name} raised {type(exc).__name__}: {exc}")
