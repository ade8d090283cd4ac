"""Each example and the TRL command-line script run to the end on CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hft_plugins.core.mask import HFTMask

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_DISABLED": "true"}

EXPECTED = {
    "plain_trainer.py": "frozen tensors unchanged",
    "trl_sft.py": "SFT losses",
    "trl_dpo.py": "the reference adds",
    "peft_style_save_load.py": "restored exactly: True",
    "continual_three_stages.py": "stage 2: loss",
}


def run(*argv, cwd):
    done = subprocess.run(
        [sys.executable, *map(str, argv)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_example_is_tested():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name, tmp_path):
    out = run(ROOT / "examples" / name, cwd=tmp_path)
    assert EXPECTED[name] in out
    assert "unchanged: False" not in out


def test_trl_script_sft_then_dpo(tmp_path):
    trl_dir = ROOT / "integrations" / "trl"
    run(trl_dir / "make_tiny_model.py", tmp_path / "tiny", cwd=ROOT)
    common = ["--max_steps", "2"]
    run(
        trl_dir / "hft_trl.py",
        "sft",
        "--config",
        trl_dir / "sft.yaml",
        "--model_name_or_path",
        tmp_path / "tiny",
        "--output_dir",
        tmp_path / "sft",
        *common,
        cwd=ROOT,
    )
    run(
        trl_dir / "hft_trl.py",
        "dpo",
        "--config",
        trl_dir / "dpo.yaml",
        "--model_name_or_path",
        tmp_path / "sft",
        "--output_dir",
        tmp_path / "dpo",
        *common,
        cwd=ROOT,
    )
    sft_mask = HFTMask.load(tmp_path / "sft" / "hft_mask.json")
    dpo_mask = HFTMask.load(tmp_path / "dpo" / "hft_mask.json")
    # neither YAML gives hft_stage: SFT starts at 0, DPO follows the SFT output's mask file
    assert "hft_stage" not in (trl_dir / "dpo.yaml").read_text().split("#")[0]
    assert (sft_mask.config.stage, dpo_mask.config.stage) == (0, 1)
    assert sft_mask.trainable != dpo_mask.trainable
    before = load_file(tmp_path / "sft" / "model.safetensors")
    after = load_file(tmp_path / "dpo" / "model.safetensors")
    plan = dpo_mask.params()
    for name, tensor in before.items():
        if name not in plan:
            assert torch.equal(tensor, after[name]), name
    assert any(not torch.equal(before[n], after[n]) for n in plan if n in before)


def _script(argv, cwd=ROOT):
    trl_dir = ROOT / "integrations" / "trl"
    return subprocess.run(
        [sys.executable, trl_dir / "hft_trl.py", *map(str, argv)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "mode, flags, message",
    [
        ("sft", ["--hft", "--hft_ratio", "2"], "ratio must be in (0, 1), got 2.0"),
        ("sft", ["--hft", "--hft_strategy", "nope"], "unknown strategy 'nope'"),
        ("sft", ["--hft_ratio", "0.25"], "hft_ratio is set but HFT is off: add --hft"),
        ("dpo", ["--hft"], "HFTDPOTrainer needs the HFT stage given"),
    ],
)
def test_trl_script_bad_hft_value_is_one_line(mode, flags, message, tmp_path):
    trl_dir = ROOT / "integrations" / "trl"
    argv = [mode, "--model_name_or_path", tmp_path, "--dataset_name", trl_dir / f"{mode}.jsonl"]
    argv += ["--output_dir", tmp_path / "out", "--use_cpu", "--report_to", "none"]
    done = _script(argv + flags)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert f"hft_trl.py: error: {message}" in done.stderr.strip().splitlines()[-1]
