"""HFT under DeepSpeed ZeRO-2/3 and the Trainer's FSDP2, 2 CPU processes (gloo).

Each run is ``workers/trainer_sharded.py`` with the shipped ``integrations/deepspeed``
configs: the mask drawn on the (ZeRO-3: partitioned at build or load) model, the engine's
plain optimizer over the trainable whole tensors, frozen tensors gathered and compared,
the optimizer state per rank measured, the Trainer's ``save_model`` output loaded with
plain ``from_pretrained``, a sharded checkpoint resumed bit-exact (by a trainer built for
the next stage: the checkpoint's half is the one resumed), and every engine limitation
refused in one line before training.

The fused families run with ``whole_tensors=True``: a Mixtral-shaped model (routed
experts' 3-D ``gate_up_proj``) and a Phi-3-shaped one (``qkv_proj``, ``gate_up_proj``),
each through TRL's SFT (``--hft_whole_tensors``) and DPO (``hft_config=``) under ZeRO-3
and FSDP2; the tiny Llama runs the HF Trainer under ZeRO-2. Seven launches in all.

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
FUSED_KINDS = ("qkv_proj", "gate_up_proj")  # q|k|v and gate|up (Mixtral: of all experts)
SLICES = "trains whole tensors only; this mask trains slices of "
WHOLE_TENSORS = "set whole_tensors=True (hft_whole_tensors: true)"


def _run(torchrun, out, *args):
    torchrun("trainer_sharded.py", str(out), *args, timeout=400)
    result = json.loads((out / "result.json").read_text())
    result["final"] = torch.load(out / "final_weights.pt")
    result["start"] = torch.load(out / "start_weights.pt")
    result["out"] = out
    return result


def _straight_and_resumed(torchrun, out, *args, refusals=()):
    """Trained for 4 steps saving at step 2, and resumed from that checkpoint by a run that
    asks for stage 1 (the checkpoint's stage-0 half must go on)."""
    straight = _run(torchrun, out / "straight", *args, "--save-steps", "2", *refusals)
    resumed = _run(
        torchrun,
        out / "resumed",
        *args,
        *("--stage", "1", "--resume", str(out / "straight" / "checkpoint-2")),
    )
    return straight, resumed


@pytest.fixture(scope="module")
def zero2(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("zero2")
    return _run(torchrun, out, "--engine", "zero2", "--refusals")


@pytest.fixture(scope="module")
def zero3_mixtral_sft(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("zero3_mixtral_sft")
    args = ("--engine", "zero3", "--trainer", "sft", "--family", "mixtral", "--whole-tensors")
    return _straight_and_resumed(torchrun, out, *args)


@pytest.fixture(scope="module")
def zero3_phi3_dpo(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("zero3_phi3_dpo")
    args = ("--engine", "zero3", "--trainer", "dpo", "--family", "phi3", "--whole-tensors")
    return _run(torchrun, out, *args, "--steps", "2")


@pytest.fixture(scope="module")
def fsdp2_phi3_sft(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("fsdp2_phi3_sft")
    args = ("--engine", "fsdp2", "--trainer", "sft", "--family", "phi3", "--whole-tensors")
    return _straight_and_resumed(torchrun, out, *args, refusals=("--refusals",))


@pytest.fixture(scope="module")
def fsdp2_mixtral_dpo(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("fsdp2_mixtral_dpo")
    args = ("--engine", "fsdp2", "--trainer", "dpo", "--family", "mixtral", "--whole-tensors")
    return _run(torchrun, out, *args, "--steps", "2")


def _check_half(run, engine: str) -> HFTMask:
    """The mask trains whole tensors; every frozen one is bit-identical on every rank and
    gathered on rank 0, every trainable one moved, and the run is one stage."""
    assert run["engine"] == engine
    mask = HFTMask.from_json(run["mask"])
    assert all(v is None for v in mask.params().values())  # no slices
    assert mask.total_numel == run["numel"] and 0 < mask.trainable_numel < run["numel"]
    trained = set(mask.params())
    assert run["frozen"] and set(run["frozen"]) == set(run["start"]) - trained
    for rank in run["ranks"]:
        assert rank["frozen_identical"]
        assert set(rank["trainable_moved"]) == trained
    for name in run["frozen"]:  # gathered on rank 0, bit for bit
        assert torch.equal(run["start"][name], run["final"][name]), name
    # no HFTOptimizer under an engine: the run is the stage, begun and ended once
    stage = mask.config.stage
    assert run["stage_events"] == [["stage_begin", stage], ["stage_end", stage]]
    _check_saved(run, mask)
    return mask


def _check_saved(run, mask: HFTMask) -> None:
    """The Trainer's save_model output loads with plain from_pretrained, under the names and
    shapes training started from, equal to the gathered final weights."""
    from transformers import AutoModelForCausalLM

    saved = run["out"] / "saved"
    loaded = dict(AutoModelForCausalLM.from_pretrained(saved).named_parameters())
    assert {n: t.shape for n, t in loaded.items()} == {n: t.shape for n, t in run["start"].items()}
    for name, tensor in run["final"].items():
        assert torch.equal(loaded[name], tensor), name
    assert HFTMask.load(saved / "hft_mask.json") == mask


def _check_fused_whole(run, mask: HFTMask) -> None:
    """whole_tensors: each kind of fused tensor is trained whole in one block and frozen
    whole in another (the category's half carried across blocks)."""
    assert mask.config.whole_tensors
    trained = set(mask.params())
    kinds = 0
    for kind in FUSED_KINDS:
        names = {n for n in run["start"] if kind in n}
        kinds += bool(names)
        assert not names or (names & trained and names - trained), kind
    assert kinds


def _state_is_the_trainable_fraction(run, mask: HFTMask, master: bool) -> None:
    """Optimizer state per rank: the trainable tensors split over 2 ranks (two fp32 Adam
    moments, and ZeRO's fp32 master copy; FSDP2's fp32 shards are the master)."""
    trainable = mask.trainable_numel
    for rank in run["ranks"]:
        assert rank["state_bytes"] == {
            "master": 4 * trainable // 2 if master else 0,
            "moments": 2 * 4 * trainable // 2,
        }


def _check_resumed(straight, resumed) -> None:
    """The engine checkpoint and its hft_mask.json resume bit-exact, with the saved half."""
    assert HFTMask.from_json(resumed["mask"]) == HFTMask.from_json(straight["mask"])  # stage 0
    for name, tensor in straight["final"].items():
        assert torch.equal(tensor, resumed["final"][name]), name
    _check_half(resumed, straight["engine"])


def test_zero2_trainer_trains_the_half(zero2):
    mask = _check_half(zero2, "DeepSpeed ZeRO-2")
    assert mask.trainable_numel == TRAINABLE and mask.total_numel == TOTAL
    assert len(zero2["frozen"]) == 9
    assert zero2["distributed_type"] == "DistributedType.DEEPSPEED"
    assert {r["wrapped"] for r in zero2["ranks"]} == {"DeepSpeedEngine"}
    _state_is_the_trainable_fraction(zero2, mask, master=True)


def test_zero2_refusals_are_one_line_before_training(zero2):
    seen = zero2["refusals"]
    assert seen["fused_gpt2"].startswith(f"HFT under DeepSpeed ZeRO-2 {SLICES}4 ")
    assert seen["fused_phi3"].startswith(f"HFT under DeepSpeed ZeRO-2 {SLICES}")
    assert WHOLE_TENSORS in seen["fused_gpt2"] and WHOLE_TENSORS in seen["fused_phi3"]
    assert seen["redraw_every_epoch"].startswith(
        "HFT redraw_every_epoch is not supported under DeepSpeed ZeRO-2"
    )
    assert seen["next_stage"].startswith("HFT next_stage() is not supported under DeepSpeed ZeRO-2")
    assert all("\n" not in line for line in seen.values())


def test_zero3_mixtral_sft_trains_whole_experts(zero3_mixtral_sft):
    straight, _ = zero3_mixtral_sft
    assert straight["partitioned_at_build"]  # zero.Init: the mask was drawn from ds_shape
    mask = _check_half(straight, "DeepSpeed ZeRO-3")
    _check_fused_whole(straight, mask)
    _state_is_the_trainable_fraction(straight, mask, master=True)
    files = straight["checkpoints"]["checkpoint-2"]
    assert "hft_mask.json" in files and "global_step2" in files


def test_zero3_resume_is_bit_exact_with_the_checkpoints_half(zero3_mixtral_sft):
    _check_resumed(*zero3_mixtral_sft)


def test_zero3_phi3_dpo_trains_whole_fused_projections(zero3_phi3_dpo):
    """Under ZeRO the reference is not shared with the policy (each engine partitions its
    own model): TRL builds it from the policy's path and prepares it itself."""
    assert zero3_phi3_dpo["partitioned_at_build"]  # from_pretrained under zero.Init
    mask = _check_half(zero3_phi3_dpo, "DeepSpeed ZeRO-3")
    _check_fused_whole(zero3_phi3_dpo, mask)
    _state_is_the_trainable_fraction(zero3_phi3_dpo, mask, master=True)


def test_fsdp2_phi3_sft_trains_whole_fused_projections(fsdp2_phi3_sft):
    straight, _ = fsdp2_phi3_sft
    assert straight["distributed_type"] == "DistributedType.FSDP"
    mask = _check_half(straight, "FSDP2")
    _check_fused_whole(straight, mask)
    _state_is_the_trainable_fraction(straight, mask, master=False)
    files = straight["checkpoints"]["checkpoint-2"]
    assert "hft_mask.json" in files and "optimizer_0" in files  # DCP sharded checkpoint


def test_fsdp2_resume_from_sharded_checkpoint_is_bit_exact(fsdp2_phi3_sft):
    _check_resumed(*fsdp2_phi3_sft)


def test_fsdp2_refusals(fsdp2_phi3_sft):
    seen = fsdp2_phi3_sft[0]["refusals"]
    assert seen["fused_gpt2"].startswith(f"HFT under FSDP2 {SLICES}")
    assert seen["fused_phi3"].startswith(f"HFT under FSDP2 {SLICES}")
    assert WHOLE_TENSORS in seen["fused_phi3"]
    assert seen["redraw_every_epoch"].startswith(
        "HFT redraw_every_epoch is not supported under FSDP2"
    )
    assert seen["next_stage"].startswith("HFT next_stage() is not supported under FSDP2")


def test_fsdp2_mixtral_dpo_trains_whole_experts(fsdp2_mixtral_dpo):
    assert fsdp2_mixtral_dpo["distributed_type"] == "DistributedType.FSDP"
    mask = _check_half(fsdp2_mixtral_dpo, "FSDP2")
    _check_fused_whole(fsdp2_mixtral_dpo, mask)
    _state_is_the_trainable_fraction(fsdp2_mixtral_dpo, mask, master=False)
