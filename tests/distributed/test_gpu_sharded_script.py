"""benchmarks/gpu_sharded.sh in its CPU smoke mode (HFT_BENCH_SMOKE=1): every row it runs on
a GPU machine (Llama and Mixtral shapes, ZeRO-3 and FSDP2, FFT and HFT) runs here, one CPU
process each, with the frozen check and the state bytes it reports."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_sharded_script_smoke_mode_on_cpu(tmp_path):
    """HFT's optimizer state is FFT's times the trainable fraction, for the dense and the
    MoE model; every frozen tensor bit-identical."""
    table = tmp_path / "gpu_sharded.txt"
    env = dict(os.environ, HFT_BENCH_SMOKE="1", PYTHON=sys.executable)
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_sharded.sh"), str(table)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    runs = [json.loads(line) for line in (tmp_path / "gpu_sharded.jsonl").read_text().splitlines()]
    keys = {(r["model"], r["engine"], r["mode"]) for r in runs}
    assert keys == {
        (model, engine, mode)
        for model in ("llama", "mixtral")
        for engine in ("zero3", "fsdp2")
        for mode in ("fft", "hft")
    }
    for model in ("llama", "mixtral"):
        for engine in ("zero3", "fsdp2"):
            fft, hft = (
                next(r for r in runs if (r["model"], r["engine"], r["mode"]) == (model, engine, m))
                for m in ("fft", "hft")
            )
            assert all(x["frozen_identical"] for x in hft["ranks"]) and hft["frozen_tensors"] > 0
            state = sum(hft["ranks"][0]["state_bytes"].values())
            full = sum(fft["ranks"][0]["state_bytes"].values())
            assert state * fft["params"] == full * hft["trainable"]  # the trainable fraction
    lines = table.read_text().splitlines()
    assert sum(line.startswith("mixtral  zero3") for line in lines) == 2  # FFT and HFT rows
