import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hft_plugins import HFTConfig, HFTOptimizer, apply_hft, hookimpl, registry
from hft_plugins.core import catalog
from hft_plugins.registry import HFTPluginWarning
from hft_plugins.testing import tiny_model

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("fresh_registry")


def test_builtins_register_through_the_hooks():
    strategies = catalog.strategies()
    assert {"category", "layer", "matrix"} <= set(strategies)
    assert all(strategies[n].source == "builtin" for n in ("category", "layer", "matrix"))
    assert "llama" in catalog.layout_entries()


def test_observer_hooks_fire():
    seen = []

    class Recorder:
        @hookimpl
        def mask_applied(self, model, mask):
            seen.append(("applied", mask.config.stage))

        @hookimpl
        def stage_begin(self, model, mask, stage):
            seen.append(("begin", stage))

        @hookimpl
        def stage_end(self, model, mask, stage):
            seen.append(("end", stage))

    registry.manager().register(Recorder())
    import torch

    from hft_plugins import select

    model = tiny_model("llama")
    apply_hft(model, HFTConfig())
    opt = HFTOptimizer(model, select(model, HFTConfig()), torch.optim.AdamW, lr=1e-3)
    opt.redraw(select(model, HFTConfig(stage=1)))
    opt.end_stage()
    assert seen == [
        ("applied", 0),  # once: the optimizer applying the same mask again is no new one
        ("begin", 0),
        ("end", 0),
        ("applied", 1),
        ("begin", 1),
        ("end", 1),
    ]


def _fake_distribution(tmp_path, name, module_source):
    """A plugin 'installed' on sys.path: a module plus a dist-info with the entry point."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = tmp_path / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[hft_plugins]\n{name} = {name}\n")


def test_broken_plugin_is_skipped_by_name_and_the_rest_works(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "broken_plugin", "raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(
        HFTPluginWarning, match="'broken_plugin' skipped: failed to load: RuntimeError: boom"
    ):
        strategies = catalog.strategies()
    assert "category" in strategies
    assert "broken_plugin" in registry.failures()


def test_plugin_whose_hook_raises_is_skipped(tmp_path, monkeypatch):
    _fake_distribution(
        tmp_path,
        "raising_plugin",
        """
        from hft_plugins import hookimpl

        @hookimpl
        def register_strategies(register):
            raise KeyError("oops")
    """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(
        HFTPluginWarning, match="'raising_plugin' skipped: register_strategies raised"
    ):
        assert set(catalog.strategies()) == {"category", "layer", "matrix"}


def test_observer_hook_that_raises_is_reported_and_training_goes_on():
    import torch

    from hft_plugins import select

    class Broken:
        @hookimpl
        def mask_applied(self, model, mask):
            raise RuntimeError("boom")

    registry.manager().register(Broken(), name="broken_logger")
    model = tiny_model("llama")
    with pytest.warns(HFTPluginWarning, match="'broken_logger' skipped: mask_applied raised"):
        opt = HFTOptimizer(model, select(model, HFTConfig()), torch.optim.AdamW, lr=1e-3)
    assert "broken_logger" in registry.failures()
    assert opt.mask.config == HFTConfig()


def test_env_var_turns_third_party_plugins_off(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "broken_plugin", "raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HFT_DISABLE_PLUGINS", "1")
    assert set(catalog.strategies()) == {"category", "layer", "matrix"}
    assert registry.failures() == {}


def test_a_plugin_cannot_take_a_builtin_name(tmp_path, monkeypatch):
    _fake_distribution(
        tmp_path,
        "squatter",
        """
        from hft_plugins import hookimpl

        @hookimpl
        def register_strategies(register):
            register("category", lambda layout, config, rng: set(), "not the paper's")
    """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(HFTPluginWarning, match="'category' is already registered by builtin"):
        assert catalog.strategies()["category"].source == "builtin"


def test_example_plugin_package_installs_and_is_selected_by_name(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT / "examples" / "plugin-top-layers"),
        ],
        check=True,
    )
    env = {"PYTHONPATH": f"{target}:{ROOT}", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    listing = subprocess.run(
        [sys.executable, "-m", "hft_plugins", "plugins"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "top_layers               [top_layers] Train the top blocks" in listing
    shown = subprocess.run(
        [sys.executable, "-m", "hft_plugins", "inspect", "tiny:llama", "--strategy", "top_layers"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split() for line in shown.splitlines() if line.strip()[:1].isdigit()]
    assert [row[-1] for row in rows] == ["0.0000", "0.0000", "1.0000", "1.0000"]


def test_the_registry_is_collected_once_until_the_plugins_change():
    """Every select() reads the same collected strategies; a new plugin is seen at once."""
    from hft_plugins import select

    calls = []

    class Counting:
        @hookimpl
        def register_strategies(self, register):
            calls.append(1)
            register("counted", lambda layout, config, rng: set(), "")

    pm = registry.manager()
    before = catalog.strategies()
    assert catalog.strategies() == before
    pm.register(Counting(), name="counting")
    model = tiny_model("llama")
    for stage in range(3):
        select(model, HFTConfig(stage=stage))
    assert "counted" in catalog.strategies()
    assert len(calls) == 1  # collected once for this set of plugins
    pm.unregister(name="counting")
    assert "counted" not in catalog.strategies()


def test_the_registry_imports_the_builtins_by_name_only():
    """The built-ins are plugin modules the manager imports by name, like entry points."""
    import ast

    source = (ROOT / "hft_plugins" / "registry" / "manager.py").read_text()
    imported = {
        node.module or ""
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom)
    }
    assert not any("builtin" in name for name in imported)
    names = [name for name, _ in registry.manager().list_name_plugin()]
    assert names[: len(registry.DEFAULT_PLUGINS)] == [
        f"builtin:{module}" for module in registry.DEFAULT_PLUGINS
    ]
