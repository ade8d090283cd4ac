"""The sharded census on one type of every layout kind: FSDP2 and DeepSpeed ZeRO-3, 2 CPU
processes (gloo), one torchrun launch per engine (``scripts/census_sharded.py``).

Each type's invariants are asserted from the census's JSON: a whole-tensor mask, frozen
tensors bit-identical on every rank, every trainable tensor moved, the Adam moments
exactly the trainable elements' and split over the ranks, the gathered state dict with
the model's names and shapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
# dense whole, fused qkv and gate_up, fused qkv (GPT-NeoX), Mixtral-style MoE, gpt-oss's
# interleaved gate|up experts, MLA, Mamba's in_proj, a hybrid (attention, Mamba, MoE)
SAMPLE = ("llama", "phi3", "gpt_neox", "mixtral", "gpt_oss", "deepseek_v3", "mamba2", "jamba")
ENGINES = ("fsdp2", "zero3")


@pytest.fixture(scope="module")
def census(tmp_path_factory):
    out = tmp_path_factory.mktemp("census_sharded") / "sharded.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")])
        ),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [sys.executable, str(SCRIPTS / "census_sharded.py"), "--types", *SAMPLE]
    done = subprocess.run(
        [*command, "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-6000:]
    return json.loads(out.read_text())


def _record(census, engine: str, model_type: str) -> dict:
    return next(r for r in census["engines"][engine] if r["type"] == model_type)


def test_one_launch_per_engine_checks_every_sample_type(census):
    assert census["summary"] == {
        e: {"supported": len(SAMPLE), "refused": 0, "not built": 0, "failed": 0} for e in ENGINES
    }
    for engine in ENGINES:
        assert [r["type"] for r in census["engines"][engine]] == sorted(SAMPLE)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model_type", SAMPLE)
def test_whole_tensor_half_trains_under_the_engine(census, engine, model_type):
    record = _record(census, engine, model_type)
    assert record["status"] == "supported", record["message"]
    assert record["sliced"] == []
    assert record["same_weights"]
    assert record["frozen_tensors"] > 0
    assert record["no_grad"] == [] and record["static"] == []  # token ids reach every tensor
    assert len(record["ranks"]) == 2
    for rank in record["ranks"]:
        assert rank["frozen_changed"] == []  # gathered whole, bit for bit
        assert rank["not_moved"] == []
        assert rank["engine_no_grad"] == []


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model_type", SAMPLE)
def test_optimizer_state_is_the_trainable_fraction_split_over_ranks(census, engine, model_type):
    record = _record(census, engine, model_type)
    trainable, total = record["trainable"], record["total"]
    assert 0 < trainable < total
    held = [rank["state_bytes"] for rank in record["ranks"]]
    moments = [h["moments"] for h in held]
    assert record["padding"] == 0  # no tensor of an odd size: ZeRO-3 pads none
    assert sum(moments) == 2 * 4 * trainable == record["expected_moments"]  # exp_avg(_sq)
    assert 0 < min(moments) and max(moments) < sum(moments)  # sharded, not replicated
    assert sum(moments) * total == record["fft_moments_bytes"] * trainable
    master = sum(h["master"] for h in held)
    assert master == (4 * trainable if engine == "zero3" else 0)  # DeepSpeed's fp32 copy


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model_type", SAMPLE)
def test_gathered_state_dict_has_the_models_names_and_shapes(census, engine, model_type):
    differences = [
        r["state_dict_differences"] for r in _record(census, engine, model_type)["ranks"]
    ]
    if engine == "zero3":  # DeepSpeed gathers the whole state dict on rank 0 only
        assert differences == [[], None]
    else:
        assert differences == [[], []]
