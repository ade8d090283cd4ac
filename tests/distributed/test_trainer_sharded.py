"""HFT under DeepSpeed ZeRO-2/3 and the Trainer's FSDP2, 2 CPU processes (gloo).

Each run is ``workers/trainer_sharded.py`` with the shipped ``integrations/deepspeed``
configs: the mask drawn on the (ZeRO-3: partitioned at build) model, the engine's plain
optimizer over the trainable whole matrices, frozen tensors gathered and compared, the
optimizer state per rank measured, a sharded checkpoint resumed bit-exact (by a trainer
built for the next stage: the checkpoint's half is the one resumed), and every engine
limitation refused in one line before training.

DeepSpeed builds a small C++ comm op with g++ on its first run (30-150 s, cached in
``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``).
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("deepspeed")

from hft_plugins import HFTMask  # noqa: E402

pytestmark = pytest.mark.slow

TRAINABLE, TOTAL = 49_344, 86_336  # the tiny Llama's default half
FUSED = r"^HFT under DeepSpeed ZeRO-2 trains whole tensors only; this mask trains slices of 4"


def _run(torchrun, out, *args):
    torchrun("trainer_sharded.py", str(out), *args, timeout=400)
    result = json.loads((out / "result.json").read_text())
    result["final"] = torch.load(out / "final_weights.pt")
    result["start"] = torch.load(out / "start_weights.pt")
    return result


@pytest.fixture(scope="module")
def zero2_sft(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("zero2")
    return _run(torchrun, out, "--engine", "zero2", "--trainer", "sft", "--refusals")


@pytest.fixture(scope="module")
def zero2_dpo(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("zero2_dpo")
    return _run(torchrun, out, "--engine", "zero2", "--trainer", "dpo", "--steps", "2")


@pytest.fixture(scope="module")
def zero3(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("zero3")
    straight = _run(torchrun, out / "straight", "--engine", "zero3", "--save-steps", "2")
    resumed = _run(
        torchrun,
        out / "resumed",
        *("--engine", "zero3", "--stage", "1"),
        *("--resume", str(out / "straight" / "checkpoint-2")),
    )
    return straight, resumed


@pytest.fixture(scope="module")
def fsdp2(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("fsdp2")
    straight = _run(
        torchrun, out / "straight", "--engine", "fsdp2", "--save-steps", "2", "--refusals"
    )
    resumed = _run(
        torchrun,
        out / "resumed",
        *("--engine", "fsdp2", "--stage", "1"),
        *("--resume", str(out / "straight" / "checkpoint-2")),
    )
    return straight, resumed


def _check_half(run, engine: str) -> None:
    assert run["engine"] == engine
    mask = HFTMask.from_json(run["mask"])
    assert mask.trainable_numel == TRAINABLE and mask.total_numel == TOTAL
    assert all(v is None for v in mask.params().values())  # whole matrices only
    trained = set(mask.params())
    for rank in run["ranks"]:
        assert rank["frozen_identical"]
        assert set(rank["trainable_moved"]) == trained
    for name in run["frozen"]:  # gathered on rank 0, bit for bit
        assert torch.equal(run["start"][name], run["final"][name]), name
    assert len(run["frozen"]) == 9
    # no HFTOptimizer under an engine: the run is the stage, begun and ended once
    stage = mask.config.stage
    assert run["stage_events"] == [["stage_begin", stage], ["stage_end", stage]]


def _state_is_the_trainable_fraction(run, master: bool) -> None:
    """Optimizer state per rank: the trainable half split over 2 ranks (fp32 copy and two
    Adam moments), against full fine-tuning's TOTAL split the same way."""
    for rank in run["ranks"]:
        state = rank["state_bytes"]
        assert state["moments"] == 2 * 4 * TRAINABLE // 2, state
        if master:
            assert state["master"] == 4 * TRAINABLE // 2, state


def test_zero2_trl_sft_trains_the_half(zero2_sft):
    _check_half(zero2_sft, "DeepSpeed ZeRO-2")
    assert zero2_sft["distributed_type"] == "DistributedType.DEEPSPEED"
    assert {r["wrapped"] for r in zero2_sft["ranks"]} == {"DeepSpeedEngine"}
    _state_is_the_trainable_fraction(zero2_sft, master=True)


def test_zero2_trl_dpo_with_its_own_reference_trains_the_half(zero2_dpo):
    """Under ZeRO the reference is not shared with the policy (each engine partitions its
    own model): TRL builds it from the policy's path and prepares it itself."""
    _check_half(zero2_dpo, "DeepSpeed ZeRO-2")
    _state_is_the_trainable_fraction(zero2_dpo, master=True)


def test_zero2_refusals_are_one_line_before_training(zero2_sft):
    seen = zero2_sft["refusals"]
    assert seen["fused"].startswith(FUSED[1:])
    assert "set whole_tensors=True (hft_whole_tensors: true)" in seen["fused"]
    assert seen["redraw_every_epoch"].startswith(
        "HFT redraw_every_epoch is not supported under DeepSpeed ZeRO-2"
    )
    assert seen["next_stage"].startswith("HFT next_stage() is not supported under DeepSpeed ZeRO-2")
    assert all("\n" not in line for line in seen.values())


def test_zero3_partitioned_model_trains_the_half(zero3):
    straight, _ = zero3
    assert straight["partitioned_at_build"]  # zero.Init: the mask was drawn from ds_shape
    _check_half(straight, "DeepSpeed ZeRO-3")
    _state_is_the_trainable_fraction(straight, master=True)
    files = straight["checkpoints"]["checkpoint-2"]
    assert "hft_mask.json" in files and "global_step2" in files


def test_zero3_resume_is_bit_exact_with_the_checkpoints_half(zero3):
    straight, resumed = zero3
    assert HFTMask.from_json(resumed["mask"]) == HFTMask.from_json(straight["mask"])  # stage 0 kept
    for name, tensor in straight["final"].items():
        assert torch.equal(tensor, resumed["final"][name]), name


def test_fsdp2_trainer_trains_the_half(fsdp2):
    straight, _ = fsdp2
    assert straight["distributed_type"] == "DistributedType.FSDP"
    _check_half(straight, "FSDP2")
    _state_is_the_trainable_fraction(straight, master=False)
    files = straight["checkpoints"]["checkpoint-2"]
    assert "hft_mask.json" in files and "optimizer_0" in files  # DCP sharded checkpoint


def test_fsdp2_resume_from_sharded_checkpoint_is_bit_exact(fsdp2):
    straight, resumed = fsdp2
    assert HFTMask.from_json(resumed["mask"]) == HFTMask.from_json(straight["mask"])
    for name, tensor in straight["final"].items():
        assert torch.equal(tensor, resumed["final"][name]), name


def test_fsdp2_refusals(fsdp2):
    seen = fsdp2[0]["refusals"]
    assert seen["fused"].startswith("HFT under FSDP2 trains whole tensors only")
    assert seen["redraw_every_epoch"].startswith(
        "HFT redraw_every_epoch is not supported under FSDP2"
    )
    assert seen["next_stage"].startswith("HFT next_stage() is not supported under FSDP2")
