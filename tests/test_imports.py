import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("transformers", "trl", "peft", "accelerate", "datasets", "axolotl", "matplotlib")


def test_core_and_cli_import_no_framework():
    """The core needs torch, pluggy and safetensors only; adapters import theirs when used."""
    code = (
        "import sys, hft_plugins, hft_plugins.cli, hft_plugins.optim, hft_plugins.sliced_grad, "
        "hft_plugins.distributed, hft_plugins.reset, hft_plugins.demo.cli\n"
        "hft_plugins.cli.build_parser()\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "[]"


def test_shared_adapter_module_imports_no_framework():
    """integrations/_common.py serves every adapter: none of their frameworks (nor pydantic)."""
    code = (
        "import sys, hft_plugins.integrations._common as c\n"
        "c.settings(); c.HFTArguments()\n"
        f"print(sorted(m for m in {(*FRAMEWORKS, 'pydantic')!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "[]"
