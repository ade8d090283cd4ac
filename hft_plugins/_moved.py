"""Old module paths of hft_plugins, kept importable with a DeprecationWarning.

The package was layered into ``core/``, ``registry/`` and ``builtin/``; ``import
hft_plugins.mask`` (and the rest below) still works and gives the module at its new
path, the same object, so ``isinstance`` checks and monkeypatching keep working.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED = {
    "hft_plugins.architectures": "hft_plugins.core.layouts",
    "hft_plugins.atomic": "hft_plugins.core.atomic",
    "hft_plugins.blocks": "hft_plugins.core.blocks",
    "hft_plugins.config": "hft_plugins.core.config",
    "hft_plugins.distributed": "hft_plugins.core.distributed",
    "hft_plugins.errors": "hft_plugins.core.errors",
    "hft_plugins.mask": "hft_plugins.core.mask",
    "hft_plugins.optim": "hft_plugins.core.optim",
    "hft_plugins.reset": "hft_plugins.core.reset",
    "hft_plugins.sliced_grad": "hft_plugins.core.sliced_grad",
    "hft_plugins.hookspecs": "hft_plugins.registry.hookspecs",
    "hft_plugins.plugins": "hft_plugins.registry + hft_plugins.core.catalog",
    "hft_plugins.strategies": "hft_plugins.builtin.strategies",
    "hft_plugins.family_layouts": "hft_plugins.builtin.families",
    "hft_plugins.builtins": "hft_plugins.builtin.families",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        warnings.warn(
            f"{spec.name} moved to {self.new.replace(' + ', ' and ')}; the old path will be removed in a later release",
            DeprecationWarning,
            stacklevel=2,
        )
        if "+" not in self.new:
            module = importlib.import_module(self.new)
            self.spec = module.__spec__  # the import system overwrites it; exec_module restores
            return module
        # a module that was split: its names, looked up in the new modules in turn
        parts = [importlib.import_module(name.strip()) for name in self.new.split("+")]
        module = types.ModuleType(spec.name)
        module.call = parts[0].notify  # the old name of notify

        def lookup(name):
            for part in parts:
                if hasattr(part, name):
                    return getattr(part, name)
            raise AttributeError(f"module {spec.name!r} has no attribute {name!r}")

        module.__getattr__ = lookup
        return module

    def exec_module(self, module):
        # the module at its new path is already executed; it keeps its own spec
        if getattr(self, "spec", None) is not None:
            module.__spec__ = self.spec


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
