"""The real ``axolotl train <yaml>`` CLI with ``hft: true``, on CPU, in the axolotl virtualenv.

Runs the shipped YAMLs of integrations/axolotl/ as a user would (SFT, then DPO
on its output as the next stage, and SFT on a model with fused projections) and checks the saved output: the frozen
half is bit-identical to the input model, the trainable half moved, and the
checkpoint's optimizer state covers exactly the trainable half.

The virtualenv is $HFT_AXOLOTL_VENV, else .venv-axolotl at the repository root
(scripts/setup-axolotl-venv.sh creates it); the tests skip when it is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hft_plugins import HFTConfig, HFTMask, select

pytestmark = [pytest.mark.axolotl, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "integrations" / "axolotl"
VENV = Path(os.environ.get("HFT_AXOLOTL_VENV", REPO / ".venv-axolotl"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}",  # axolotl execs `accelerate`
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
        HF_HUB_OFFLINE="1",
        AXOLOTL_DO_NOT_TRACK="1",
        WANDB_DISABLED="true",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=1200, check=False
    )


def _check(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, f"{done.args} failed:\n{(done.stdout + done.stderr)[-4000:]}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A copy of integrations/axolotl/ with its tiny model built, as the README has users do."""
    if not (VENV / "bin" / "axolotl").exists():
        pytest.skip(f"no axolotl virtualenv at {VENV} (run scripts/setup-axolotl-venv.sh)")
    work = tmp_path_factory.mktemp("axolotl")
    for name in ("sft.yml", "dpo.yml", "make_tiny_model.py"):
        shutil.copy(SHIPPED / name, work / name)
    shutil.copytree(SHIPPED / "data", work / "data")
    python = str(VENV / "bin" / "python")
    _check(_run([python, "make_tiny_model.py", "tiny-llama"], work))
    return work


def _train(work: Path, config: str) -> None:
    _check(_run([str(VENV / "bin" / "axolotl"), "train", config], work))


def _frozen_and_trainable(value: torch.Tensor, slices) -> tuple[list, list]:
    """(frozen pieces, trainable pieces) of one tensor under the mask."""
    if slices is None:
        return [], [value]
    frozen, trainable, start = [], [], 0
    for a, b in slices.ranges:
        frozen.append(value.narrow(slices.dim, start, a - start))
        trainable.append(value.narrow(slices.dim, a, b - a))
        start = b
    frozen.append(value.narrow(slices.dim, start, value.shape[slices.dim] - start))
    return frozen, trainable


def _frozen_tensors(model_dir: Path, mask: HFTMask) -> list[torch.Tensor]:
    """The whole tensors of a saved model that ``mask`` leaves frozen (not the sliced ones:
    a fused tensor with a trainable slice is trained, and so copied, as a whole)."""
    plan = mask.params()
    return [t for n, t in load_file(model_dir / "model.safetensors").items() if n not in plan]


def assert_half_trained(model_dir: Path, out_dir: Path, config: HFTConfig, steps: int) -> HFTMask:
    """The saved output of an HFT run: the mask asked for, half moved, optimizer state of that half."""
    from transformers import AutoModelForCausalLM

    mask = HFTMask.load(out_dir / "hft_mask.json")
    expected = select(AutoModelForCausalLM.from_pretrained(model_dir), config)
    assert mask == expected and mask.trainable == expected.trainable
    plan = mask.params()

    before = load_file(model_dir / "model.safetensors")
    after = load_file(out_dir / "model.safetensors")
    assert before.keys() == after.keys()
    for name, old in before.items():
        new = after[name]
        if name not in plan:
            assert torch.equal(old, new), f"frozen {name} changed"
            continue
        old_frozen, old_trained = _frozen_and_trainable(old, plan[name])
        new_frozen, new_trained = _frozen_and_trainable(new, plan[name])
        for a, b in zip(old_frozen, new_frozen, strict=True):
            assert torch.equal(a, b), f"frozen slice of {name} changed"
        for a, b in zip(old_trained, new_trained, strict=True):
            assert not torch.equal(a, b), f"trainable {name} did not move"

    checkpoint = out_dir / f"checkpoint-{steps}"
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert saved["format"] == "hft-optimizer/2"
    assert HFTMask.from_json(saved["mask"]) == mask
    keys = set()
    for name, parts in mask.trainable_parts().items():  # one state per unit range
        if parts is None:
            keys.add(name)
        else:
            keys.update(f"{name}[{p.dim}:{a}:{b}]" for p in parts for a, b in p.ranges)
    assert set(saved["state"]) == keys
    for state in saved["state"].values():
        assert float(state["step"]) == steps  # our optimizer took every step
    moments = sum(s["exp_avg"].numel() for s in saved["state"].values())
    assert moments == mask.trainable_numel < mask.total_numel
    return mask


@pytest.fixture(scope="module")
def sft_output(workdir) -> Path:
    """Stage 0: the shipped sft.yml on the tiny model; dpo.yml starts from its output."""
    _train(workdir, "sft.yml")
    return workdir / "outputs" / "sft"


def test_sft_trains_exactly_the_drawn_half(workdir, sft_output):
    sft = yaml.safe_load((workdir / "sft.yml").read_text())
    mask = assert_half_trained(workdir / "tiny-llama", sft_output, HFTConfig(stage=0), steps=3)
    assert "hft_stage" not in sft and mask.config.stage == 0  # SFT on a fresh model: stage 0


def test_dpo_stage_trains_a_new_half_of_the_policy_only(workdir, sft_output):
    """dpo.yml gives no hft_stage: the stage after the SFT output's hft_mask.json."""
    assert "hft_stage" not in yaml.safe_load((workdir / "dpo.yml").read_text())
    _train(workdir, "dpo.yml")
    dpo_output = workdir / "outputs" / "dpo"
    mask = assert_half_trained(sft_output, dpo_output, HFTConfig(stage=1), steps=2)
    assert mask.trainable != HFTMask.load(sft_output / "hft_mask.json").trainable
    log = (dpo_output / "debug.log").read_text()
    assert log.count("HFT: mask applied to the policy model") == 1
    assert "HFT: leaving the reference model untouched" in log
    # the reference shares the policy's frozen half, as the TRL trainers' does
    shared = re.search(
        r"HFT: the reference model shares the policy's frozen half: policy and reference hold "
        r"([\d,]+) bytes of parameters \(([\d,]+) with a reference of its own\)",
        log,
    )
    assert shared, log[-3000:]
    together, separate = (int(n.replace(",", "")) for n in shared.groups())
    frozen_bytes = sum(t.numel() * t.element_size() for t in _frozen_tensors(sft_output, mask))
    assert separate - together == frozen_bytes > 0


def test_dpo_on_a_fresh_model_without_hft_stage_stops_with_one_line(workdir):
    """The stage rule: DPO needs the stage given unless its base model has a previous stage."""
    cfg = yaml.safe_load((workdir / "dpo.yml").read_text())
    cfg.update(base_model="./tiny-llama", output_dir="./outputs/dpo-fresh")
    (workdir / "dpo-fresh.yml").write_text(yaml.safe_dump(cfg))
    done = _run([str(VENV / "bin" / "axolotl"), "train", "dpo-fresh.yml"], workdir)
    assert done.returncode != 0
    line = "HFTError: axolotl rl: dpo needs the HFT stage given"
    assert line in done.stdout + done.stderr
    assert "set hft_stage: 1" in done.stdout + done.stderr
    assert not (workdir / "outputs" / "dpo-fresh" / "model.safetensors").exists()


def test_resume_restores_the_hft_optimizer_exactly(workdir, sft_output):
    """Resuming SFT from checkpoint-3 loads our optimizer state and ends bit-identical."""
    cfg = yaml.safe_load((workdir / "sft.yml").read_text())
    cfg.update(
        output_dir="./outputs/sft-resumed",
        resume_from_checkpoint=str(sft_output / "checkpoint-3"),
    )
    (workdir / "sft-resumed.yml").write_text(yaml.safe_dump(cfg))
    _train(workdir, "sft-resumed.yml")
    resumed = workdir / "outputs" / "sft-resumed"
    uninterrupted = load_file(sft_output / "model.safetensors")
    for name, value in load_file(resumed / "model.safetensors").items():
        assert torch.equal(value, uninterrupted[name]), f"{name} differs after resume"
    saved = torch.load(resumed / "checkpoint-6" / "optimizer.pt", weights_only=True)
    assert {float(s["step"]) for s in saved["state"].values()} == {6.0}  # 3 loaded + 3 taken


def test_fused_projections_keep_their_frozen_slices(workdir):
    """Phi-3 fuses q/k/v and gate/up: the tensors train, their frozen slices must not.

    requires_grad is True on the whole fused tensor, so only HFTOptimizer keeps the
    frozen slices bit-identical: this proves it is the optimizer that steps.
    """
    python = str(VENV / "bin" / "python")
    _check(_run([python, "make_tiny_model.py", "tiny-phi3", "--family", "phi3"], workdir))
    cfg = yaml.safe_load((workdir / "sft.yml").read_text())
    cfg.update(
        base_model="./tiny-phi3",
        output_dir="./outputs/sft-phi3",
        dataset_prepared_path="./outputs/prepared-sft-phi3",
    )
    (workdir / "sft-phi3.yml").write_text(yaml.safe_dump(cfg))
    _train(workdir, "sft-phi3.yml")
    mask = assert_half_trained(
        workdir / "tiny-phi3", workdir / "outputs" / "sft-phi3", HFTConfig(stage=0), steps=3
    )
    assert any(s is not None for s in mask.params().values()), "phi3 should have sliced tensors"


def test_conflicting_option_stops_axolotl_with_one_line(workdir):
    cfg = yaml.safe_load((workdir / "sft.yml").read_text())
    cfg.update(unfrozen_parameters=["^lm_head.weight$"], output_dir="./outputs/conflict")
    (workdir / "conflict.yml").write_text(yaml.safe_dump(cfg))
    done = _run([str(VENV / "bin" / "axolotl"), "train", "conflict.yml"], workdir)
    assert done.returncode != 0
    line = "HFTError: hft: true cannot be combined with unfrozen_parameters: ['^lm_head.weight$']"
    assert line in done.stdout + done.stderr
    assert not (workdir / "outputs" / "conflict" / "model.safetensors").exists()


def test_a_gguf_loaded_policy_is_made_plain_and_masked(workdir):
    """post_model_load clears the quantized mark transformers leaves on a GGUF-loaded model
    (one line), so the trainer takes it, and applies the mask."""
    script = """
import logging
from transformers import AutoModelForCausalLM
from axolotl.utils.dict import DictDefault
from hft_plugins.integrations.axolotl import HFTPlugin
from tests.helpers import mark_as_gguf

logging.basicConfig(level=logging.INFO)
model = mark_as_gguf(AutoModelForCausalLM.from_pretrained("tiny-llama"))
cfg = DictDefault({"hft": True, "base_model": "./tiny-llama"})
plugin = HFTPlugin()
plugin.register(cfg)
plugin.post_model_load(cfg, model)
assert not model.is_quantized and getattr(model, "hf_quantizer", None) is None
assert not hasattr(model.config, "quantization_config")
assert plugin.mask is not None and not all(p.requires_grad for p in model.parameters())
print("plain and masked")
"""
    done = _run([str(VENV / "bin" / "python"), "-c", script], workdir)
    _check(done)
    assert "plain and masked" in done.stdout
    said = "HFT: model.Q4_1.gguf was dequantized to torch.float32 on load"
    assert (done.stdout + done.stderr).count(said) == 1


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
