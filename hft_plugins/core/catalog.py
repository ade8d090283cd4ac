"""The strategies and layouts that plugins registered, checked and looked up by name."""

from __future__ import annotations

from ..registry import Registered, collect
from .errors import HFTError
from .layouts import Layout


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
    return collect("register_strategies", _strategy_entry)


def layout_entries() -> dict[str, Registered]:
    """Every registered layout by name, built-ins first."""
    return collect("register_layouts", _layout_entry)


def layouts() -> list[Layout]:
    """Every registered layout, built-ins first."""
    return [entry.value for entry in layout_entries().values()]


def strategy(name: str):
    """The strategy function called ``name``; the error lists the available ones."""
    found = strategies()
    if name not in found:
        raise HFTError(f"unknown strategy {name!r}; available: {', '.join(sorted(found))}")
    return found[name].value
