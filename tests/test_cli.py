import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hft_plugins import HFTConfig, HFTMask, select
from hft_plugins.cli import main
from hft_plugins.testing import tiny_model
from tests.helpers import hub_snapshot, require_real_model

ROOT = Path(__file__).resolve().parents[1]
REVISION = "abcdef0123456789abcdef0123456789abcdef01"
LLAMA_70B = dict(
    model_type="llama",
    architectures=["LlamaForCausalLM"],
    hidden_size=8192,
    intermediate_size=28672,
    num_hidden_layers=80,
    num_attention_heads=64,
    num_key_value_heads=8,
    vocab_size=32000,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
)


def run_hft(*args):
    return subprocess.run(
        [sys.executable, "-m", "hft_plugins", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    base = tiny_model("llama", seed=0)
    base.save_pretrained(root / "base")
    tuned = tiny_model("llama", seed=0)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(1.0)
    tuned.save_pretrained(root / "tuned")
    (root / "tuned" / "tokenizer.json").write_text("{}")
    return root


def test_inspect_saved_model_dir(saved_models, capsys):
    assert main(["inspect", str(saved_models / "base"), "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "layout=llama blocks=4" in out and "seed=2" in out
    assert "block fraction 0.500000 (ratio 0.5; exact)" in out


def test_inspect_70b_config_on_meta_device(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_70B))
    result = run_hft("inspect", str(tmp_path / "config.json"))
    assert result.returncode == 0, result.stderr
    assert "blocks=80" in result.stdout
    assert "block fraction 0.500000 (ratio 0.5; exact)" in result.stdout
    total = next(line for line in result.stdout.splitlines() if line.startswith("total"))
    assert "68,976,648,192" in total  # Llama-2-70B's parameter count, allocated nowhere


def test_reset_writes_half_reset_model(saved_models, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "half"
    assert (
        main(
            [
                "reset",
                "--base",
                str(saved_models / "base"),
                "--tuned",
                str(saved_models / "tuned"),
                "--out",
                str(out),
                "--seed",
                "1",
            ]
        )
        == 0
    )
    base = AutoModelForCausalLM.from_pretrained(saved_models / "base")
    tuned = AutoModelForCausalLM.from_pretrained(saved_models / "tuned")
    reset = AutoModelForCausalLM.from_pretrained(out)
    mask = select(reset, HFTConfig(seed=1))
    assert HFTMask.load(out / "hft_reset_mask.json") == mask
    drawn = {
        p.param for u in mask.partition.block_units() if u.key in mask.trainable for p in u.parts
    }
    b, t = dict(base.named_parameters()), dict(tuned.named_parameters())
    for name, param in reset.named_parameters():
        assert torch.equal(param, (b if name in drawn else t)[name]), name
    assert (out / "tokenizer.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["half"]  # no staging left beside it


def test_reset_refuses_to_clobber_and_mismatched_shapes(saved_models, tmp_path):
    out = tmp_path / "half"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["reset", "--base", str(saved_models / "base"), "--tuned", str(saved_models / "tuned")]
    result = run_hft(*args, "--out", str(out))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"hft: error: output directory {out} exists; pass --overwrite to replace it"
    )
    assert (out / "keep.txt").read_text() == "mine"

    tiny_model("llama", intermediate_size=48).save_pretrained(tmp_path / "other")
    result = run_hft(
        "reset",
        "--base",
        str(tmp_path / "other"),
        "--tuned",
        str(saved_models / "tuned"),
        "--out",
        str(tmp_path / "x"),
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "hft: error: base and tuned models differ at "
        "'model.layers.0.mlp.gate_proj.weight': [48, 32] vs [64, 32]"
    )
    assert not (tmp_path / "x").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half", "other"]


def test_plugins_lists_strategies_and_layouts(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "category                 [builtin]" in out
    assert "gpt_neox                 [builtin] model types: gpt_neox" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["inspect", "tiny:llama", "--ratio", "1.5"], "ratio must be in (0, 1), got 1.5"),
        (["inspect", "tiny:llama", "--strategy", "zzz"], "unknown strategy 'zzz'; available:"),
        (
            ["inspect", "/no/such/dir"],
            "no model directory, config.json or .gguf file at /no/such/dir",
        ),
        (
            ["inspect", str(ROOT / "docs")],
            f"no config.json in the model directory {ROOT / 'docs'}",
        ),
        (
            ["inspect", "hft-tests/not-cached"],
            "cannot load the config of hft-tests/not-cached: ",
        ),
        (["inspect", "tiny:foo"], "unknown tiny family 'foo'; known: llama"),
    ],
)
def test_bad_cli_input_one_line(args, message, capsys):
    assert main(args) == 2  # in process: the console script returns main()'s code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.fixture(scope="module")
def hub_models(saved_models):
    """The saved base and tuned models as Hub repos in the tests' own cache (offline)."""
    hub_snapshot("hft-tests/cli-base", saved_models / "base", REVISION)
    hub_snapshot("hft-tests/cli-tuned", saved_models / "tuned", REVISION)
    return "hft-tests/cli-base", "hft-tests/cli-tuned"


def test_inspect_takes_a_hub_id_with_its_revision(hub_models, saved_models, capsys):
    base, _ = hub_models
    assert main(["inspect", str(saved_models / "base"), "--seed", "2"]) == 0
    local = capsys.readouterr().out
    assert main(["inspect", base, "--revision", REVISION, "--seed", "2"]) == 0
    assert capsys.readouterr().out == local
    assert main(["inspect", base, "--revision", "v9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "hft: error: cannot load the config of hft-tests/cli-base (revision v9): "
    )
    assert err.count("\n") == 1


def test_reset_takes_hub_ids(hub_models, saved_models, tmp_path):
    base, tuned = hub_models
    local = ["--base", str(saved_models / "base"), "--tuned", str(saved_models / "tuned")]
    assert main(["reset", *local, "--out", str(tmp_path / "local")]) == 0
    hub = ["--base", base, "--tuned", tuned, "--tuned-revision", REVISION]
    assert main(["reset", *hub, "--out", str(tmp_path / "hub")]) == 0
    from safetensors.torch import load_file

    want = load_file(tmp_path / "local" / "model.safetensors")
    got = load_file(tmp_path / "hub" / "model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(v, got[k]) for k, v in want.items())
    assert (tmp_path / "hub" / "tokenizer.json").read_text() == "{}"  # from the snapshot


def test_reset_copies_the_tuned_models_other_files_but_no_other_weights(saved_models, tmp_path):
    """Weights in other formats and shard indexes of the tuned model would be the tuned, not
    the half-reset, weights: only its other files (the tokenizer) are copied."""
    import shutil

    tuned = tmp_path / "tuned"
    shutil.copytree(saved_models / "tuned", tuned)
    others = ["tf_model.h5", "flax_model.msgpack", "model.safetensors.index.json"]
    for name in others:
        (tuned / name).write_text("tuned weights")
    hub_snapshot("hft-tests/cli-tuned-formats", tuned, REVISION)
    for source, out in [(str(tuned), "local"), ("hft-tests/cli-tuned-formats", "hub")]:
        base = str(saved_models / "base")
        assert main(["reset", "--base", base, "--tuned", source, "--out", str(tmp_path / out)]) == 0
        assert (tmp_path / out / "tokenizer.json").read_text() == "{}"
        assert not [name for name in others if (tmp_path / out / name).exists()]


@pytest.mark.slow
def test_inspect_and_reset_take_a_gguf_file(tmp_path, capsys):
    gguf = require_real_model()
    assert main(["inspect", str(gguf)]) == 0
    out = capsys.readouterr().out
    assert "layout=llama blocks=30" in out and "block fraction 0.500000" in out
    out_dir = tmp_path / "half"
    assert main(["reset", "--base", str(gguf), "--tuned", str(gguf), "--out", str(out_dir)]) == 0
    assert "gguf" not in (out_dir / "config.json").read_text()  # a normal checkpoint
    assert (out_dir / "tokenizer.json").is_file()  # the tokenizer from the GGUF header
    assert not list(out_dir.glob("*.gguf"))
