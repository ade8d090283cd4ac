"""The axolotl plugin under DeepSpeed ZeRO-2/3 and FSDP2: no HFTOptimizer, the engine's own.

The config checks run anywhere (no axolotl import). The end-to-end runs are the real
axolotl 0.19.0 training CLI on 2 CPU processes (gloo) in the axolotl virtualenv, through
``tests/distributed/workers/axolotl_sharded.py`` (what accelerate and axolotl need on a
GPU-less machine; a GPU run is ``accelerate launch -m axolotl.cli.train sft-zero2.yml``),
with the shipped ``integrations/axolotl/sft-{zero2,zero3,fsdp2}.yml``: the mask drawn once
(ZeRO-3: on the model partitioned at load), the frozen tensors bit-identical (gathered on
every rank), the optimizer state per rank exactly the trainable half's, ``hft_mask.json``
in the output and its checkpoint, stage_begin/stage_end once, a ZeRO-2 checkpoint resumed
bit-exact with its saved half, and a fused-projection family refused in one line before
training. DeepSpeed builds a small C++ op with g++ on its first run (cached).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from hft_plugins import HFTConfig, HFTError, HFTMask
from hft_plugins.integrations.axolotl import check_config, config_engine

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "integrations" / "axolotl"
DEEPSPEED = REPO / "integrations" / "deepspeed"
WORKER = REPO / "tests" / "distributed" / "workers" / "axolotl_sharded.py"
VENV = Path(os.environ.get("HFT_AXOLOTL_VENV", REPO / ".venv-axolotl"))


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
    engine = {"deepspeed", "fsdp_version", "fsdp_config"}
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
    for args in (["tiny-llama"], ["tiny-phi3", "--family", "phi3"]):
        made = subprocess.run(
            [python, "make_tiny_model.py", *args], cwd=work, env=_env(), capture_output=True
        )
        assert made.returncode == 0, made.stderr[-2000:]
    return work


def _train(work: Path, config: str) -> dict:
    done = _launch(work, config, "result.json", "tiny-llama")
    log = done.stdout + done.stderr
    assert done.returncode == 0, f"{config} failed:\n{log[-4000:]}"
    out = work / yaml.safe_load((work / config).read_text())["output_dir"]
    result = json.loads((work / "result.json").read_text())
    (work / "result.json").unlink()
    result["out"] = out
    return result


def _check_half(work: Path, result: dict, engine: str) -> HFTMask:
    from safetensors.torch import load_file

    assert result["engine"] == engine
    out = result["out"]
    mask = HFTMask.load(out / "hft_mask.json")
    assert HFTMask.load(out / "checkpoint-2" / "hft_mask.json") == mask
    assert mask.config == HFTConfig(stage=0)
    assert not any(s is not None for s in mask.params().values())  # whole matrices only
    trained = set(mask.params())
    t, total = mask.trainable_numel, result["numel"]
    assert 0 < t < total
    for rank in result["ranks"]:
        assert rank["frozen_identical"]  # gathered on every rank, vs the base model
        assert set(rank["frozen"]).isdisjoint(trained) and rank["frozen"]
        assert set(rank["trainable_moved"]) == trained
        # optimizer state per rank: the trainable half's share, 2 ranks, fp32 Adam
        state = rank["state_bytes"]
        if engine.startswith("DeepSpeed"):
            assert state == {"master": 4 * t // 2, "moments": 8 * t // 2}
        else:  # FSDP2: the sharded fp32 trainable params are the master
            assert state == {"master": 0, "moments": 8 * t // 2}
    assert result["stage_events"] == [["stage_begin", 0], ["stage_end", 0]]
    before = load_file(work / "tiny-llama" / "model.safetensors")
    after = load_file(out / "model.safetensors")  # ZeRO-3: gathered at save
    for name, value in before.items():
        if name not in trained:
            assert (value == after[name]).all(), f"frozen {name} changed"
    return mask


@pytest.mark.axolotl
@pytest.mark.slow
def test_zero2_trains_the_half_with_the_engines_optimizer(workdir):
    result = _train(workdir, _config(workdir, "sft-zero2.yml", "zero2", max_steps=4))
    _check_half(workdir, result, "DeepSpeed ZeRO-2")
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
def test_zero3_draws_the_mask_on_the_model_partitioned_at_load(workdir):
    result = _train(workdir, _config(workdir, "sft-zero3.yml", "zero3"))
    assert result["partitioned_at_load"]
    _check_half(workdir, result, "DeepSpeed ZeRO-3")


@pytest.mark.axolotl
@pytest.mark.slow
def test_fsdp2_trains_the_half_with_the_trainers_optimizer(workdir):
    result = _train(workdir, _config(workdir, "sft-fsdp2.yml", "fsdp2"))
    _check_half(workdir, result, "FSDP2")


@pytest.mark.axolotl
@pytest.mark.slow
def test_fused_projections_are_refused_in_one_line_before_training(workdir):
    config = _config(
        workdir,
        "sft-zero2.yml",
        "zero2-phi3",
        base_model="./tiny-phi3",
    )
    done = _launch(workdir, config)
    log = done.stdout + done.stderr
    assert done.returncode != 0
    line = "HFTError: HFT under DeepSpeed ZeRO-2 trains whole tensors only; this mask trains"
    assert line in log, log[-4000:]
    assert "set whole_tensors=True (hft_whole_tensors: true)" in log
    assert not (workdir / "outputs" / "zero2-phi3" / "checkpoint-2").exists()
