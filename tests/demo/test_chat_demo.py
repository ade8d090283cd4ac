"""`hft demo` end to end on the real model (SmolLM2-135M-Instruct), at a reduced size.

Two TRL runs of 2 steps each (SFTTrainer, HFTSFTTrainer) from the converted cache; the
JSON must hold what the demo claims: the frozen half bit-identical, HFT's trainable share
exactly the mask's, both runs learned the held-out task, HFT's optimizer state the
trainable share of FFT's, every shown prompt answered by all three models.
"""

import argparse
import json

import pytest
from hft_bench import chat_eval, commands

from tests.helpers import require_real_model

pytestmark = pytest.mark.slow


def test_real_model_demo_end_to_end(tmp_path, capsys):
    require_real_model()
    parser = argparse.ArgumentParser(prog="hft")
    commands.add_demo_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "demo"
    args = parser.parse_args(
        ["demo", "--steps", "2", "--batch-size", "4", "--heldout", "6", "--answer-tokens", "6"]
        + ["--lr", "1e-4", "--threads", "1", "--out", str(out)]
    )
    assert args.run(args) == 0
    result = json.loads((out / "results.json").read_text())
    assert (out / "demo.png").stat().st_size > 0
    fft, hft = result["runs"]["fft"], result["runs"]["hft"]

    assert hft["frozen_bit_identical"] is True and hft["frozen_params"] > 0
    assert hft["frozen_params"] + hft["trainable_params"] == hft["total_params"]
    assert hft["trainable_params"] == hft["requires_grad_params"]  # SmolLM2 has no fused tensors
    assert fft["requires_grad_params"] == fft["total_params"]
    assert hft["total_params"] == hft["mask_total_params"] == fft["total_params"]
    assert hft["trainable_fraction"] == hft["trainable_params"] / hft["total_params"]
    assert hft["block_fraction"] == 0.5  # the paper's rule on 30 Llama blocks: exact
    assert fft["trainable_fraction"] == 1.0

    # AdamW keeps two fp32 moments per trained parameter (plus a step count per tensor)
    assert fft["optimizer_state_bytes"] > hft["optimizer_state_bytes"] > 0
    assert hft["optimizer_state_bytes"] == pytest.approx(
        fft["optimizer_state_bytes"] * hft["trainable_fraction"], rel=1e-4
    )
    assert all(r[k] > 0 for r in (fft, hft) for k in ("seconds_per_step", "cpu_seconds_per_step"))

    ev = result["eval"]
    for run in ("fft", "hft"):  # learned: held-out words, never trained on
        assert ev[run]["task_heldout_nll"] < ev["base"]["task_heldout_nll"]
    assert 0 < ev["base"]["drift_nll"] < 2  # the base scores its own greedy answers
    assert ev["base"]["facts_greedy_right"] == 1.0  # facts are kept only where it is right
    assert sum(f["base_right"] for f in result["facts"]) >= len(chat_eval.FACTS) // 2
    for model in ("base", "fft", "hft"):
        answers = ev[model]["answers"]
        assert len(answers) == len(result["shown"]) and all(a.strip() for a in answers)

    printed = capsys.readouterr().out
    assert "bit-identical" in printed and "held-out task NLL" in printed
    assert all(shown["prompt"] in printed for shown in result["shown"])
