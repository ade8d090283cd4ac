"""The step benchmark (python -m hft_bench.step, hft bench step) and benchmarks/gpu.sh still
run: every method gets a row. No speed asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--hidden", "32", "--layers", "2", "--heads", "2", "--intermediate", "64", "--vocab", "96",
    "--steps", "1", "--warmup", "0", "--repeats", "1",
    "--compute-shape", "2x16", "--optimizer-shape", "1x8",
]  # fmt: skip


def _env():
    roots = [str(ROOT), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")]
    path = os.pathsep.join(filter(None, roots))
    return dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1")


def _run_step(tmp_path, *extra):
    out = tmp_path / "step.json"
    proc = subprocess.run(
        [sys.executable, "-m", "hft_bench.step", *TINY, *extra, "--json", str(out)],
        capture_output=True, text=True, env=_env(), timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, json.loads(out.read_text())


def test_step_reports_every_method_in_both_regimes(tmp_path):
    methods = ["fft", "frozen", "hft", "lora", "badam"]
    stdout, data = _run_step(tmp_path)
    assert data["notes"] == {}
    assert sorted(data["summary"]) == sorted(methods)
    for method in methods:
        assert set(data["summary"][method]["regimes"]) == {"compute", "optimizer"}
        assert data["summary"][method]["state_bytes"] > 0
    for regime in ("compute-bound", "optimizer-bound"):
        assert f"## {regime} regime" in stdout
    rows = [line.split() for line in stdout.splitlines()]
    table_methods = [fields[0] for fields in rows if len(fields) == 11]  # the measured-table rows
    for method in methods:
        assert table_methods.count(method) == 2  # one per regime
    assert "floor (HFT/FFT" in stdout and "target HFT/frozen <= 1.03" in stdout
    fraction = data["model"]["trainable_fraction"]
    state = data["summary"]["hft"]["state_bytes"] / data["summary"]["fft"]["state_bytes"]
    assert abs(state / fraction - 1) < 0.01  # HFT keeps state for the trainable part only


def test_step_targets_say_the_peak_was_not_measured_when_ffts_peak_did_not_rise(capsys):
    """On a tiny CPU model the peak RSS may not rise above the footprint: FFT's peak is 0."""
    from hft_bench.step.report import print_targets

    def regime(step_s, peak):
        return {"step_s": step_s, "fwd_bwd_s": step_s / 2, "opt_s": step_s / 2, "peak_bytes": peak}

    summary = {
        "fft": {"regimes": {"optimizer": regime(2.0, 0)}, "state_bytes": 800},
        "hft": {"regimes": {"optimizer": regime(1.0, 4096)}, "state_bytes": 400},
    }
    cost = {"forward_gflop": 1.0, "input_grad_gflop": 1.0, "weight_grad_gflop": 1.0}
    rows = {"fft": {**cost, "optimizer_mb": 2.0}, "hft": {**cost, "optimizer_mb": 1.0}}
    print_targets("optimizer", summary, rows, fraction=0.5)
    out = capsys.readouterr().out
    assert "target peak HFT/FFT <= 0.70: not measured" in out
    assert "target HFT/FFT <= 0.70 (30% faster): 0.500 MET" in out
    assert "within 1%: 0.5000 MET" in out


def test_hft_bench_step_takes_the_same_options_and_gives_them_to_the_workers():
    pytest.importorskip("hft_bench", reason="the hft-bench harness is not installed")
    import argparse

    from hft_bench.commands import add_bench_parser
    from hft_bench.step.options import finish, parse_args, to_argv

    parser = argparse.ArgumentParser(prog="hft")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    argv = [*TINY, "--arch", "gpt2", "--methods", "fft,hft", "--json", "out.json"]
    args = parser.parse_args(["bench", "step", *argv])
    assert args.run.__name__ == "run_step"
    again = to_argv(args)
    direct, via_hft = vars(parse_args(argv)), vars(finish(args))
    for key, value in direct.items():
        if key not in ("options", "worker"):
            assert via_hft[key] == value, key
    assert vars(parse_args(again)) | {"options": None} == direct | {"options": None}


@pytest.mark.slow
def test_step_on_gpt2_compares_sliced_and_full_weight_gradients(tmp_path):
    _, data = _run_step(tmp_path, "--arch", "gpt2", "--methods", "fft,hft,hft-fullgrad")
    assert sorted(data["summary"]) == ["fft", "hft", "hft-fullgrad"]
    model = data["model"]["regimes"]["compute"]
    assert model["hft"]["weight_grad_gflop"] < model["hft-fullgrad"]["weight_grad_gflop"]


def test_fused_times_the_projections_and_a_moe_block_with_and_without_the_sliced_backward():
    proc = subprocess.run(
        [sys.executable, "-m", "hft_bench.fused", "--hidden", "64", "--tokens", "32",
         "--repeats", "1"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line[:22].strip(): line[22:].split() for line in proc.stdout.splitlines()}
    moe = rows["MoE block fwd+bwd"]
    assert moe[0] in ("gate", "up") and all(float(v) > 0 for v in moe[1:])
    plain, sliced, ratio = (float(v) for v in moe[1:])
    rounding = ratio * (0.005 / plain + 0.005 / sliced) + 0.0005  # ms to 2 places, ratio to 3
    assert ratio == pytest.approx(sliced / plain, abs=rounding)
    projections = [ln for ln in proc.stdout.splitlines() if ln.startswith(("nn.Linear", "Conv1D"))]
    assert len(projections) == 4


@pytest.mark.slow
def test_step_on_moe_reports_fft_frozen_hft_and_skips_lora(tmp_path):
    stdout, data = _run_step(tmp_path, "--arch", "moe", "--methods", "fft,frozen,hft,lora")
    assert "MixtralForCausalLM" in stdout and "experts=8 top-2" in stdout
    assert sorted(data["summary"]) == ["fft", "frozen", "hft"]
    assert "--arch moe" in data["notes"]["lora"]
    rows = [line.split() for line in stdout.splitlines()]
    table_methods = [fields[0] for fields in rows if len(fields) == 11]
    for method in ("fft", "frozen", "hft"):
        assert table_methods.count(method) == 2
    assert stdout.count("lora          skipped: not run for --arch moe") == 2
    assert "target HFT/frozen <= 1.03" in stdout and "target state HFT/FFT" in stdout
    summary, fraction = data["summary"], data["model"]["trainable_fraction"]
    state = summary["hft"]["state_bytes"] / summary["fft"]["state_bytes"]
    assert abs(state / fraction - 1) < 0.01  # state for the trainable experts' rows only
    # this draw trains gate or up alone somewhere: hand-freezing keeps state for the whole tensor
    assert summary["frozen"]["state_bytes"] > summary["hft"]["state_bytes"]
    model = data["model"]["regimes"]["compute"]
    assert model["hft"]["weight_grad_gflop"] < model["frozen"]["weight_grad_gflop"]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
def test_gpu_script_runs_on_cpu_with_the_plain_torch_model(tmp_path):
    table = tmp_path / "gpu.txt"
    env = dict(_env(), HFT_BENCH_SMOKE="1", HFT_BENCH_MODEL="torch", PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(table)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = table.read_text()
    assert "LlamaLiteForCausalLM" in text and "dtype=bf16" in text
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert {"fft", "frozen", "hft"} <= set(data["summary"])


SHAPES_ONLY = [
    "--steps", "1", "--warmup", "0", "--repeats", "1",
    "--compute-shape", "2x16", "--optimizer-shape", "1x8",
]  # fmt: skip


def _tiny_llama_config(path, **overrides):
    from hft_plugins.testing import tiny_config

    tiny_config("llama", tie_word_embeddings=True, **overrides).save_pretrained(path)
    return path


def test_step_takes_the_shapes_of_a_named_model(tmp_path):
    config = _tiny_llama_config(tmp_path / "model", hidden_size=48, num_hidden_layers=3)
    out = tmp_path / "step.json"
    argv = ["--model", str(config), *SHAPES_ONLY, "--methods", "fft,frozen,hft"]
    proc = subprocess.run(
        [sys.executable, "-m", "hft_bench.step", *argv, "--json", str(out)],
        capture_output=True, text=True, env=_env(), timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert "hidden=48 layers=3 " in proc.stdout
    assert f"the shapes of --model {config} (fresh weights, tied embeddings)" in proc.stdout
    assert sorted(data["summary"]) == ["fft", "frozen", "hft"] and data["notes"] == {}
    state = data["summary"]["hft"]["state_bytes"] / data["summary"]["fft"]["state_bytes"]
    assert abs(state / data["model"]["trainable_fraction"] - 1) < 0.01


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--hidden", "32"], "--hidden: --model {m} sets the model; leave --hidden out"),
        (["--arch", "gpt2"], "--arch: --model {m} sets the model; leave --arch out"),
        (["--compute-shape", "1x4096"], "--model {m} takes at most 64 tokens"),
    ],
)
def test_step_refuses_what_contradicts_the_named_model(tmp_path, extra, message):
    from hft_bench.step.options import parse_args

    config = _tiny_llama_config(tmp_path, max_position_embeddings=64)
    with pytest.raises(SystemExit) as info:
        parse_args(["--model", str(config), *extra])
    assert str(info.value) == message.format(m=config)


def test_step_refuses_a_model_of_another_shape(tmp_path):
    from hft_bench.step.options import parse_args

    from hft_plugins.testing import tiny_config

    tiny_config("gpt2").save_pretrained(tmp_path)
    with pytest.raises(SystemExit) as info:
        parse_args(["--model", str(tmp_path)])
    assert str(info.value) == (
        f"--model {tmp_path} is a gpt2 model; the step benchmark takes the shapes of llama, "
        "mistral, qwen2 models"
    )


@pytest.mark.slow
def test_step_on_smollm2_has_its_shapes():
    from tests.helpers import require_real_model

    require_real_model()
    from hft_bench.step.build import build_model
    from hft_bench.step.options import parse_args

    args = parse_args(["--model", "smollm2"])
    dims = (args.hidden, args.layers, args.intermediate, args.heads, args.kv_heads, args.vocab)
    assert dims == (576, 30, 1536, 9, 3, 49_152)
    meta = build_model(args, device="meta")
    assert meta.lm_head.weight is meta.model.embed_tokens.weight
    assert sum(p.numel() for p in meta.parameters()) == 134_515_008


def test_memory_table_counts_the_real_shapes_and_applies_the_cost_model():
    """docs/distributed.md's memory tables: Ψ and T of the real shapes (meta device), and
    each engine's per-rank terms."""
    from hft_bench.memory_table import counts, models, per_rank, table

    config_class, kwargs = models()["Llama-2-7B"]
    assert counts(config_class, kwargs) == (6_738_415_616, 3_500_281_856)
    zero3 = per_rank("ZeRO-3", 8, total=800, trained=400)
    assert zero3 == {"params": 200.0, "grads": 100.0, "master": 200.0, "adam": 400.0}
    assert per_rank("ZeRO-2", 8, 800, 400)["params"] == 1600  # replicated bf16
    fsdp2 = per_rank("FSDP2", 8, 800, 400)
    assert fsdp2 == {"params": 300.0, "grads": 200.0, "master": 0.0, "adam": 400.0}
    rows = table(800, 400, [8])
    assert (
        rows[3] == "| ZeRO-2 | 8 | HFT | 0.0 | 0.0 | 0.0 | 0.0 | 0.0 | 0.50 | 0.77 |"
    )  # 2300 / 3000
