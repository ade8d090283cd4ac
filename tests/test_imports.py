"""Fitness tests of the package's layers: imports go downward only, and no circles.

Layers, bottom to top: ``registry`` (pluggy and the standard library), ``core``
(torch, safetensors), ``builtin`` (plugins over the core), ``integrations`` (one
adapter per framework, imported lazily), and the entry modules (``cli``, ``testing``,
the package facade). Static imports only: the registry loads the built-ins by name.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hft_plugins"
FRAMEWORKS = ("transformers", "trl", "peft", "accelerate", "datasets", "axolotl", "matplotlib")
LAYERS = ("registry", "core", "builtin", "integrations", "entry")
# what each layer may import from outside the package, at module level
THIRD_PARTY = {
    "registry": {"pluggy"},
    "core": {"torch", "safetensors"},
    "builtin": {"torch"},
    "integrations": {"torch", "safetensors"},
    "entry": {"torch"},
}
# an adapter imports its own framework at module level: it is imported only when used
FRAMEWORK_OF = {
    "hft_plugins.integrations.transformers": {"transformers"},
    "hft_plugins.integrations.trl": {"trl", "transformers"},
    "hft_plugins.integrations.axolotl.plugin": {"axolotl"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in LAYERS:
        return parts[1]
    if len(parts) == 2 and parts[1] in LAYERS:
        return parts[1]
    return "entry"


def _imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement of ``path``."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
            # "from pkg import module" imports the module; "from module import name" the module
            found += [(name if _is_module(name) else base, id(node) in top_level) for name in names]
    return found


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _graph() -> dict[str, list[tuple[str, bool]]]:
    return {
        _module_name(path): _imports(path, _module_name(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_every_import_goes_down_or_sideways():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = []
    for module, imports in _graph().items():
        if module == "hft_plugins":
            continue  # the facade re-exports from every layer
        for target, _ in imports:
            if target.startswith("hft_plugins") and target != "hft_plugins":
                if rank[_layer(target)] > rank[_layer(module)]:
                    upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_import_circles():
    graph = {
        module: {t for t, _ in imports if t.startswith("hft_plugins.") and t in _graph_keys()}
        for module, imports in _graph().items()
        if module != "hft_plugins"
    }
    seen, stack, circles = set(), [], []

    def visit(node):
        if node in stack:
            circles.append(" -> ".join([*stack[stack.index(node) :], node]))
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert circles == []


def _graph_keys() -> set[str]:
    return {_module_name(path) for path in PACKAGE.rglob("*.py")}


def test_module_level_third_party_imports_stay_in_their_layer():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    stray = []
    for module, imports in _graph().items():
        allowed = THIRD_PARTY[_layer(module)] | FRAMEWORK_OF.get(module, set())
        for target, top_level in imports:
            root = target.split(".")[0]
            if top_level and root not in stdlib and root != "hft_plugins" and root not in allowed:
                stray.append(f"{module} imports {target}")
    assert stray == []


def test_the_fitness_checks_see_an_upward_import(tmp_path, monkeypatch):
    """The graph reader finds a relative upward import (so the checks above can fail)."""
    path = PACKAGE / "core" / "mask.py"
    imports = dict(_imports(path, "hft_plugins.core.mask"))
    assert "hft_plugins.registry" in imports and "hft_plugins.core.catalog" in imports
    fake = tmp_path / "x.py"
    fake.write_text("from ..integrations import trl\n")
    assert _imports(fake, "hft_plugins.core.x") == [("hft_plugins.integrations.trl", True)]
    assert _layer("hft_plugins.integrations.trl") == "integrations"


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    return out.stdout.strip()


def test_core_and_cli_import_no_framework():
    """The core needs torch, pluggy and safetensors only; adapters import theirs when used."""
    code = (
        "import sys, hft_plugins, hft_plugins.cli, hft_plugins.core.optim, "
        "hft_plugins.core.sliced_grad, hft_plugins.core.distributed, hft_plugins.core.reset\n"
        "hft_plugins.cli.build_parser()\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    )
    assert _run(code) == "[]"


def test_config_surface_imports_no_framework():
    """core/config.py gives every adapter its settings: none of their frameworks (nor pydantic)."""
    code = (
        "import sys, hft_plugins.core.config as c\n"
        "c.SETTINGS; c.HFTArguments(); c.get_hft_config({'hft': True})\n"
        f"print(sorted(m for m in {(*FRAMEWORKS, 'pydantic')!r} if m in sys.modules))"
    )
    assert _run(code) == "[]"


def test_the_public_api_needs_no_framework():
    """The top level, PEFT-style wrapper included, imports no framework."""
    code = (
        "import sys\n"
        "from hft_plugins import HFTConfig, HFTOptimizer, get_hft_model, HFTModel, Layout, select\n"
        "from hft_plugins import get_hft_config\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    )
    assert _run(code) == "[]"
