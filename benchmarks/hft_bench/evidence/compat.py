"""Imports that moved inside hft_plugins: the layered package keeps them in ``core``."""

from __future__ import annotations

try:
    from hft_plugins.core.atomic import atomic_files, atomic_write_text
except ImportError:  # the flat layout, before hft_plugins was layered
    from hft_plugins.atomic import atomic_files, atomic_write_text

__all__ = ["atomic_files", "atomic_write_text"]
