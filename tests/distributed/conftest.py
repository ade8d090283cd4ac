"""Launch torchrun workers on CPU (gloo) with a free port each, so runs never collide."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKERS = Path(__file__).resolve().parent / "workers"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_torchrun(worker: str, *args: str, nproc: int = 2, timeout: int = 240) -> str:
    """Run ``workers/<worker>`` on ``nproc`` CPU processes; fail with its output if it fails."""
    env = {
        **os.environ,
        # the package and the harness (hft_bench) from this checkout
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")])
        ),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(WORKERS / worker),
        *args,
    ]
    done = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"{worker} failed with exit code {done.returncode}:\n{output[-6000:]}")
    return output


@pytest.fixture(scope="session")
def torchrun():
    return run_torchrun
