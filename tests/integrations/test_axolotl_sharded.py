"""The axolotl plugin under DeepSpeed ZeRO-2/3 and FSDP2: no HFTOptimizer, the engine's own.

The config checks run anywhere (no axolotl import). The end-to-end runs are the real
axolotl 0.19.0 training CLI on 2 CPU processes (gloo) in the axolotl virtualenv, through
``tests/distributed/workers/axolotl_sharded.py`` (what accelerate and axolotl need on a
GPU-less machine; a GPU run is ``accelerate launch -m axolotl.cli.train sft-zero2.yml``),
with the shipped ``integrations/axolotl/sft-{zero2,zero3,fsdp2}.yml`` (``hft_whole_tensors:
true``): a tiny Llama under ZeRO-2, a Mixtral-shaped model (routed experts' 3-D
``gate_up_proj``) under ZeRO-3 and a Phi-3-shaped one (``qkv_proj``, ``gate_up_proj``)
under FSDP2. Each: the mask drawn once (ZeRO-3: on the model partitioned at load) with no
slices, the frozen tensors bit-identical (gathered on every rank), every trainable one
moved, the optimizer state per rank exactly the trainable half's, ``hft_mask.json`` in the
output and its checkpoint, stage_begin/stage_end once, and the saved model loading with
plain ``from_pretrained`` equal to the gathered final weights; a ZeRO-2 checkpoint resumed
bit-exact with its saved half, and the default (sliced) mask of a fused family refused in
one line before training. DeepSpeed builds a small C++ op with g++ on its first run (cached).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from hft_plugins import HFTConfig, HFTError, HFTMask
from hft_plugins.integrations.axolotl import check_config, config_engine

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "integrations" / "axolotl"
DEEPSPEED = REPO / "integrations" / "deepspeed"
WORKER = REPO / "tests" / "distributed" / "workers" / "axolotl_sharded.py"
VENV = Path(os.environ.get("HFT_AXOLOTL_VENV", REPO / ".venv-axolotl"))
FUSED_KINDS = ("qkv_proj", "gate_up_proj")  # q|k|v and gate|up (Mixtral: of all experts)


# ---- the config checks (no axolotl) -------------------------------------------------


def _one_line_error(cfg: dict) -> str:
    with pytest.raises(HFTError) as info:
        check_config(cfg)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize(
    ("cfg", "engine"),
    [
        ({"deepspeed": str(DEEPSPEED / "zero2.json")}, "DeepSpeed ZeRO-2"),
        ({"deepspeed": str(DEEPSPEED / "zero3.json")}, "DeepSpeed ZeRO-3"),
        ({"deepspeed": {"zero_optimization": {"stage": 3}}}, "DeepSpeed ZeRO-3"),
        ({"fsdp_version": 2, "fsdp_config": {"reshard_after_forward": True}}, "FSDP2"),
        ({"fsdp_config": {"fsdp_version": 2}}, "FSDP2"),
        ({}, None),
    ],
)
def test_engines_are_accepted(cfg, engine):
    assert config_engine(cfg) == engine
    assert check_config({"hft": True, **cfg}) == HFTConfig(stage=0)
    whole = {"hft": True, "hft_whole_tensors": True, **cfg}
    assert check_config(whole) == HFTConfig(stage=0, whole_tensors=True)


@pytest.mark.parametrize(
    ("cfg", "named"),
    [
        ({"deepspeed": {"zero_optimization": {"stage": 1}}}, "HFT under DeepSpeed ZeRO-1"),
        ({"deepspeed": {"train_batch_size": 8}}, "HFT under DeepSpeed ZeRO-0"),
        ({"fsdp_config": {"reshard_after_forward": True}}, "HFT under FSDP1"),
        ({"fsdp": ["full_shard"], "fsdp_version": 1}, "HFT under FSDP1"),
    ],
)
def test_unsupported_engines_are_refused_with_the_alternative(cfg, named):
    message = _one_line_error({"hft": True, **cfg})
    assert message.startswith(named + " is not supported")
    assert "ZeRO-2 or ZeRO-3" in message or "fsdp_version: 2" in message


def test_unreadable_deepspeed_file_is_left_to_the_trainer():
    assert config_engine({"deepspeed": "no/such/zero.json"}) == "DeepSpeed"
    assert check_config({"hft": True, "deepspeed": "no/such/zero.json"}) == HFTConfig(stage=0)


def test_engines_are_ignored_when_hft_is_off():
    assert check_config({"deepspeed": {"zero_optimization": {"stage": 1}}}) is None


@pytest.mark.parametrize("name", ["sft-zero2.yml", "sft-zero3.yml", "sft-fsdp2.yml"])
def test_shipped_sharded_yamls_differ_from_sft_only_in_engine_and_output(name):
    base = yaml.safe_load((SHIPPED / "sft.yml").read_text())
    cfg = yaml.safe_load((SHIPPED / name).read_text())
    assert cfg["hft_whole_tensors"] is True  # any family: fused tensors train whole
    engine = {"deepspeed", "fsdp_version", "fsdp_config", "hft_whole_tensors"}
    assert {k: v for k, v in cfg.items() if k not in engine | {"output_dir"}} == {
        k: v for k, v in base.items() if k != "output_dir"
    }
    assert cfg["output_dir"] == f"./outputs/{name[:-4]}"
    assert engine & set(cfg)


# ---- the real axolotl CLI, 2 CPU processes ------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        # the worker measures with the harness (hft_bench), which this virtualenv lacks
        PYTHONPATH=os.pathsep.join(
            p for p in (str(REPO), str(REPO / "benchmarks"), env.get("PYTHONPATH")) if p
        ),
        HF_HUB_OFFLINE="1",
        AXOLOTL_DO_NOT_TRACK="1",
        WANDB_DISABLED="true",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        # DeepSpeed's C++ op built for this virtualenv's torch, apart from the main one's:
        # one shared directory is rebuilt (minutes) each time the other venv runs
        TORCH_EXTENSIONS_DIR=str(Path.home() / ".cache" / "torch_extensions" / "axolotl-venv"),
    )
    return env


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(work: Path, config: str, result: str | None = None, base: str | None = None):
    args = [str(VENV / "bin" / "torchrun"), "--nproc_per_node", "2"]
    args += ["--master_port", str(_port()), str(WORKER), config]
    if result:
        args += [result, base]
    return subprocess.run(
        args, cwd=work, env=_env(), capture_output=True, text=True, timeout=600, check=False
    )


def _config(work: Path, shipped: str, name: str, **changes) -> str:
    cfg = yaml.safe_load((SHIPPED / shipped).read_text())
    if "deepspeed" in cfg:  # the shipped ../deepspeed/ path, from the copy
        cfg["deepspeed"] = str(DEEPSPEED / Path(cfg["deepspeed"]).name)
    cfg.update(
        output_dir=f"./outputs/{name}",
        dataset_prepared_path=f"./outputs/prepared-{name}",
        micro_batch_size=2,
        max_steps=2,
        save_steps=2,
    )
    cfg.update(changes)
    (work / f"{name}.yml").write_text(yaml.safe_dump(cfg))
    return f"{name}.yml"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    if not (VENV / "bin" / "axolotl").exists():
        pytest.skip(f"no axolotl virtualenv at {VENV} (run scripts/setup-axolotl-venv.sh)")
    done = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", "import deepspeed"], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip("deepspeed is not installed in the axolotl virtualenv")
    work = tmp_path_factory.mktemp("axolotl_sharded")
    shutil.copy(SHIPPED / "make_tiny_model.py", work)
    shutil.copytree(SHIPPED / "data", work / "data")
    python = str(VENV / "bin" / "python")
    for args in (["tiny-llama"], *(["tiny-" + f, "--family", f] for f in ("mixtral", "phi3"))):
        made = subprocess.run(
            [python, "make_tiny_model.py", *args], cwd=work, env=_env(), capture_output=True
        )
        assert made.returncode == 0, made.stderr[-2000:]
    return work


def _train(work: Path, config: str) -> dict:
    cfg = yaml.safe_load((work / config).read_text())
    done = _launch(work, config, "result.json", cfg["base_model"])
    log = done.stdout + done.stderr
    assert done.returncode == 0, f"{config} failed:\n{log[-4000:]}"
    result = json.loads((work / "result.json").read_text())
    result["final"] = torch.load(work / "final_weights.pt")
    (work / "result.json").unlink()
    (work / "final_weights.pt").unlink()
    result["out"] = work / cfg["output_dir"]
    result["base"] = work / cfg["base_model"]
    return result


def _weights(path: Path) -> dict:
    """name -> tensor as plain ``from_pretrained`` loads ``path`` (the model's own names)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    return {n: p.detach() for n, p in model.named_parameters()}


def _check_half(result: dict, engine: str) -> HFTMask:
    assert result["engine"] == engine
    out = result["out"]
    mask = HFTMask.load(out / "hft_mask.json")
    assert HFTMask.load(out / "checkpoint-2" / "hft_mask.json") == mask
    assert mask.config == HFTConfig(stage=0, whole_tensors=True)
    assert not any(s is not None for s in mask.params().values())  # whole tensors only
    trained = set(mask.params())
    t, total = mask.trainable_numel, result["numel"]
    assert 0 < t < total == mask.total_numel
    for rank in result["ranks"]:
        assert rank["frozen_identical"]  # gathered on every rank, vs the base model
        assert rank["frozen"] and set(rank["frozen"]) == set(result["final"]) - trained
        assert set(rank["trainable_moved"]) == trained
        # optimizer state per rank: the trainable half's share, 2 ranks, fp32 Adam
        state = rank["state_bytes"]
        if engine.startswith("DeepSpeed"):
            assert state == {"master": 4 * t // 2, "moments": 8 * t // 2}
        else:  # FSDP2: the sharded fp32 trainable params are the master
            assert state == {"master": 0, "moments": 8 * t // 2}
    assert result["stage_events"] == [["stage_begin", 0], ["stage_end", 0]]
    before = _weights(result["base"])
    after = _weights(out)  # ZeRO-3 / FSDP2: gathered at save
    assert {n: v.shape for n, v in after.items()} == {n: v.shape for n, v in before.items()}
    for name, value in after.items():
        assert torch.equal(value, result["final"][name]), f"saved {name} differs"
        if name not in trained:
            assert torch.equal(value, before[name]), f"frozen {name} changed"
    return mask


def _check_fused_whole(result: dict, mask: HFTMask) -> None:
    """Each kind of fused tensor is trained whole in one block and frozen whole in another
    (the category's half carried across blocks)."""
    trained = set(mask.params())
    kinds = [{n for n in result["final"] if kind in n} for kind in FUSED_KINDS]
    assert any(kinds)
    for names in kinds:
        assert not names or (names & trained and names - trained), names


@pytest.mark.axolotl
@pytest.mark.slow
def test_zero2_trains_the_half_with_the_engines_optimizer(workdir):
    result = _train(workdir, _config(workdir, "sft-zero2.yml", "zero2", max_steps=4))
    _check_half(result, "DeepSpeed ZeRO-2")
    assert (result["out"] / "checkpoint-2" / "global_step2").is_dir()  # ZeRO's own checkpoint
    # resumed from checkpoint-2 by a run that asks for stage 1: the checkpoint's half goes
    # on (its optimizer state covers that half), and the result is bit-identical
    from safetensors.torch import load_file

    resumed = _train(
        workdir,
        _config(
            workdir,
            "sft-zero2.yml",
            "zero2-resumed",
            max_steps=4,
            hft_stage=1,
            resume_from_checkpoint=str(result["out"] / "checkpoint-2"),
        ),
    )
    assert HFTMask.load(resumed["out"] / "hft_mask.json") == HFTMask.load(
        result["out"] / "hft_mask.json"
    )
    straight = load_file(result["out"] / "model.safetensors")
    for name, value in load_file(resumed["out"] / "model.safetensors").items():
        assert (value == straight[name]).all(), f"{name} differs after resume"


@pytest.mark.axolotl
@pytest.mark.slow
def test_zero3_trains_whole_experts_of_the_model_partitioned_at_load(workdir):
    config = _config(workdir, "sft-zero3.yml", "zero3-mixtral", base_model="./tiny-mixtral")
    result = _train(workdir, config)
    assert result["partitioned_at_load"]
    _check_fused_whole(result, _check_half(result, "DeepSpeed ZeRO-3"))


@pytest.mark.axolotl
@pytest.mark.slow
def test_fsdp2_trains_whole_fused_projections_with_the_trainers_optimizer(workdir):
    shipped = yaml.safe_load((SHIPPED / "sft-fsdp2.yml").read_text())["fsdp_config"]
    config = _config(
        workdir,
        "sft-fsdp2.yml",
        "fsdp2-phi3",
        base_model="./tiny-phi3",
        fsdp_config={**shipped, "transformer_layer_cls_to_wrap": "Phi3DecoderLayer"},
    )
    result = _train(workdir, config)
    _check_fused_whole(result, _check_half(result, "FSDP2"))


@pytest.mark.axolotl
@pytest.mark.slow
def test_fused_slices_are_refused_in_one_line_before_training(workdir):
    config = _config(
        workdir,
        "sft-zero2.yml",
        "zero2-phi3",
        base_model="./tiny-phi3",
        hft_whole_tensors=False,  # the default: q, k, v are slices of one qkv_proj
    )
    done = _launch(workdir, config)
    log = done.stdout + done.stderr
    assert done.returncode != 0
    line = "HFTError: HFT under DeepSpeed ZeRO-2 trains whole tensors only; this mask trains"
    assert line in log, log[-4000:]
    assert "set whole_tensors=True (hft_whole_tensors: true)" in log
    assert not (workdir / "outputs" / "zero2-phi3" / "checkpoint-2").exists()
