"""Bad inputs give one-line errors; interrupted saves leave the previous output intact.

docs/reliability.md lists every bad input tried, with the error a user sees and the
test that checks it; the cases not covered by other test files live here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from hft_plugins import HFTConfig, HFTError, HFTMask, HFTOptimizer, select
from hft_plugins.integrations.peft_style import MASK_NAME, WEIGHTS_NAME, HFTModel, get_hft_model
from hft_plugins.integrations.transformers import HFTCallback
from hft_plugins.testing import tiny_model
from tests.helpers import truncate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", num_hidden_layers=2)


@pytest.fixture(scope="module")
def optimizer(model):
    return HFTOptimizer(model, select(model, HFTConfig()), torch.optim.AdamW, lr=1e-3)


def _write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def _truncated_mask(tmp_path: Path, model) -> Path:
    select(model, HFTConfig()).save(tmp_path / "whole.json")
    text = (tmp_path / "whole.json").read_text()
    return _write(tmp_path, "half.json", text[: len(text) // 2])


def _saved_hft(tmp_path: Path, model, break_it) -> Path:
    get_hft_model(tiny_model("llama", num_hidden_layers=2)).save_pretrained(tmp_path / "hft")
    break_it(tmp_path / "hft")
    return tmp_path / "hft"


def _weights_without_mask(directory: Path) -> None:
    """A save whose weights file lost the mask it carries, its mask file deleted."""
    from safetensors.torch import load_file, save_file

    save_file(load_file(directory / WEIGHTS_NAME), directory / WEIGHTS_NAME, {"format": "pt"})
    (directory / MASK_NAME).unlink()


def _weights_of_format(name: str):
    """A save whose weights file says it is of format ``name``."""

    def rewrite(directory: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        with safe_open(directory / WEIGHTS_NAME, framework="pt") as f:
            metadata = {**f.metadata(), "format": name}
        save_file(load_file(directory / WEIGHTS_NAME), directory / WEIGHTS_NAME, metadata)

    return rewrite


def _frozen_state(optimizer, model) -> dict:
    state = optimizer.state_dict()
    frozen = next(n for n, _ in model.named_parameters() if n not in optimizer.mask.params())
    return {**state, "state": {frozen: {}}}


# (id, action(tmp_path, model, optimizer), message the HFTError starts with)
CASES = [
    ("ratio-string", lambda t, m, o: HFTConfig(ratio="0.5"), "ratio must be a number in (0, 1)"),
    ("ratio-nan", lambda t, m, o: HFTConfig(ratio=float("nan")), "ratio must be in (0, 1)"),
    ("ratio-zero", lambda t, m, o: HFTConfig(ratio=0), "ratio must be in (0, 1), got 0"),
    ("stage-bool", lambda t, m, o: HFTConfig(stage=True), "stage must be a non-negative integer"),
    (
        "flag-string",
        lambda t, m, o: HFTConfig(train_head="yes"),
        "train_head must be true or false",
    ),
    ("strategy-empty", lambda t, m, o: HFTConfig(strategy=""), "strategy must be a non-empty"),
    (
        "strategy-unknown",
        lambda t, m, o: select(m, HFTConfig(strategy="nope")),
        "unknown strategy 'nope'; available: category, layer, matrix",
    ),
    ("config-dict", lambda t, m, o: select(m, {"ratio": 0.5}), "config must be an HFTConfig"),
    ("config-list", lambda t, m, o: HFTConfig.from_dict([1]), "an HFT config must be a mapping"),
    (
        "model-without-blocks",
        lambda t, m, o: select(nn.Linear(3, 3)),
        "no transformer blocks found in Linear",
    ),
    ("mask-missing", lambda t, m, o: HFTMask.load(t / "none.json"), "no HFT mask at"),
    (
        "mask-is-a-model-config",
        lambda t, m, o: HFTMask.load(_write(t, "config.json", '{"model_type": "llama"}')),
        "not an HFT mask: expected format 'hft-mask/1'",
    ),
    (
        "mask-truncated",
        lambda t, m, o: HFTMask.load(_truncated_mask(t, m)),
        "corrupt HFT mask",
    ),
    (
        "mask-binary",
        lambda t, m, o: HFTMask.load(_write(t, "m.bin", b"\xff\xfe\x00garbage")),
        "corrupt HFT mask",
    ),
    (
        "mask-save-over-a-directory",
        lambda t, m, o: select(m).save(t),
        "cannot write",
    ),
    (
        "optimizer-lr-string",
        lambda t, m, o: HFTOptimizer(m, o.mask, torch.optim.AdamW, lr="fast"),
        "torch.optim.adamw.AdamW rejected its arguments ['lr']",
    ),
    (
        "optimizer-unknown-kwarg",
        lambda t, m, o: HFTOptimizer(m, o.mask, torch.optim.AdamW, lrr=1e-3),
        "torch.optim.adamw.AdamW rejected its arguments ['lrr']",
    ),
    (
        "optimizer-state-of-plain-adamw",
        lambda t, m, o: o.load_state_dict(torch.optim.AdamW(m.parameters()).state_dict()),
        "not an HFT optimizer state",
    ),
    (
        "optimizer-state-for-a-frozen-tensor",
        lambda t, m, o: o.load_state_dict(_frozen_state(o, m)),
        "optimizer state for 'model.layers.",
    ),
    ("redraw-with-a-config", lambda t, m, o: o.redraw(HFTConfig()), "redraw needs an hft_plugins"),
    (
        "callback-flag-string",
        lambda t, m, o: HFTCallback(redraw_every_epoch="yes"),
        "redraw_every_epoch must be true or false",
    ),
    (
        "hft-save-weights-truncated",
        lambda t, m, o: HFTModel.from_pretrained(
            tiny_model("llama", num_hidden_layers=2),
            _saved_hft(t, m, lambda d: truncate(d / WEIGHTS_NAME)),
        ),
        "corrupt HFT save",
    ),
    (
        "hft-save-whose-weights-carry-no-mask",
        lambda t, m, o: HFTModel.from_pretrained(
            tiny_model("llama", num_hidden_layers=2),
            _saved_hft(t, m, _weights_without_mask),
        ),
        "corrupt HFT save",
    ),
    (
        "hft-save-of-another-format",
        lambda t, m, o: HFTModel.from_pretrained(
            tiny_model("llama", num_hidden_layers=2),
            _saved_hft(t, m, _weights_of_format("hft-model/2")),
        ),
        "unsupported HFT save",
    ),
    (
        "hft-save-onto-a-file",
        lambda t, m, o: get_hft_model(tiny_model("llama", num_hidden_layers=2)).save_pretrained(
            _write(t, "notes.txt", "keep me")
        ),
        "cannot save an HFT model to",
    ),
]


@pytest.mark.parametrize("action, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_one_line_hft_error(action, message, tmp_path, model, optimizer):
    with pytest.raises(HFTError) as err:
        action(tmp_path, model, optimizer)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_saving_onto_a_file_leaves_the_file_alone(tmp_path):
    notes = _write(tmp_path, "notes.txt", "keep me")
    with pytest.raises(HFTError):
        get_hft_model(tiny_model("llama", num_hidden_layers=2)).save_pretrained(notes)
    assert notes.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["notes.txt"]


# ---- interrupted saves ------------------------------------------------------------------

_CHILD_PRELUDE = """
import os, signal, sys
from pathlib import Path
import torch
from hft_plugins import HFTConfig, select
from hft_plugins.testing import tiny_model
target = Path(sys.argv[1])

def die_after_half(write):
    def partial(*args, **kwargs):
        write(*args, **kwargs)
        path = Path(args[1] if write.__name__ == "save_file" else args[0])
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no cleanup: a real crash
    return partial
"""


def _run_child(body: str, target: Path) -> subprocess.CompletedProcess:
    code = _CHILD_PRELUDE + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", code, str(target)], env=env, capture_output=True, timeout=120
    )


def test_mask_save_killed_midway_keeps_the_previous_mask(tmp_path):
    target = tmp_path / "mask.json"
    done = _run_child(
        """
        model = tiny_model("llama", num_hidden_layers=2)
        select(model, HFTConfig(stage=0)).save(target)
        Path.write_text = die_after_half(Path.write_text)
        select(model, HFTConfig(stage=1)).save(target)
        """,
        target,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    model = tiny_model("llama", num_hidden_layers=2)
    assert HFTMask.load(target) == select(model, HFTConfig(stage=0))
    stage1 = select(model, HFTConfig(stage=1))
    stage1.save(target)  # the crash's leftover temporary does not stop the next save
    assert HFTMask.load(target) == stage1


def test_mask_save_that_fails_midway_keeps_the_previous_mask(tmp_path, monkeypatch):
    model = tiny_model("llama", num_hidden_layers=2)
    target = tmp_path / "mask.json"
    select(model, HFTConfig(stage=0)).save(target)
    write = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        write(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        select(model, HFTConfig(stage=1)).save(target)
    monkeypatch.undo()
    assert HFTMask.load(target) == select(model, HFTConfig(stage=0))
    assert os.listdir(tmp_path) == ["mask.json"]  # no temporary left behind


def test_save_pretrained_killed_midway_keeps_the_previous_save(tmp_path):
    target = tmp_path / "hft"
    done = _run_child(
        """
        from hft_plugins.integrations import peft_style
        model = peft_style.get_hft_model(tiny_model("llama", num_hidden_layers=2), HFTConfig())
        model.save_pretrained(target)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        peft_style.save_file = die_after_half(peft_style.save_file)
        model.save_pretrained(target)
        """,
        target,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    first = get_hft_model(tiny_model("llama", num_hidden_layers=2), HFTConfig())
    loaded = HFTModel.from_pretrained(tiny_model("llama", num_hidden_layers=2), target)
    for (name, a), (_, b) in zip(
        first.base_model.named_parameters(), loaded.base_model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    json.loads((target / MASK_NAME).read_text())  # whole, not half-written


def test_save_pretrained_killed_after_committing_its_weights_loads_the_new_save(tmp_path):
    """The one window of a save: the weights (which carry their own config and mask) renamed
    into place, their readable copies not yet. The new save loads, warning of the stale copy."""
    target = tmp_path / "hft"
    done = _run_child(
        """
        from hft_plugins.integrations import peft_style
        small = lambda: tiny_model("llama", num_hidden_layers=2)
        peft_style.get_hft_model(small(), HFTConfig()).save_pretrained(target)
        model = peft_style.get_hft_model(small(), HFTConfig(stage=1))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        replace = os.replace
        def replace_then_die(*args):
            replace(*args)
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace_then_die
        model.save_pretrained(target)
        """,
        target,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    with pytest.warns(UserWarning, match="is not the mask hft_model.safetensors was saved with"):
        loaded = HFTModel.from_pretrained(tiny_model("llama", num_hidden_layers=2), target)
    assert loaded.hft_config == HFTConfig(stage=1)
    base = dict(tiny_model("llama", num_hidden_layers=2).named_parameters())
    for name in loaded.hft_mask.params():
        assert torch.equal(loaded.base_model.get_parameter(name), base[name] + 1.0), name
    loaded.save_pretrained(target)  # rewrites the copies; the dead save's temporaries go
    assert HFTMask.load(target / MASK_NAME) == loaded.hft_mask
    assert not [p.name for p in target.iterdir() if p.name.startswith(".")]


def test_atomic_directory_respects_the_umask(tmp_path):
    from hft_plugins.core.atomic import atomic_directory

    old = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "out") as staging:
            (staging / "f").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "f").read_text() == "x"
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
