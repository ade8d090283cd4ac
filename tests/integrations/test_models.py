"""Naming a model: directories, config.json, Hub ids (offline, from a cache) and GGUF files."""

from __future__ import annotations

import pytest
import torch

from hft_plugins import HFTError
from hft_plugins.integrations import models
from hft_plugins.testing import save_tiny
from tests.helpers import hub_snapshot, require_real_model

REVISION = "1234567890abcdef1234567890abcdef12345678"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    save_tiny(path, "llama")
    return path


@pytest.fixture(scope="module")
def hub_repo(tiny_dir):
    """The tiny model as the Hub repo hft-tests/tiny-llama, in the tests' own cache, with an
    hft_mask.json beside its weights."""
    from hft_plugins import select
    from hft_plugins.testing import tiny_model

    snapshot = hub_snapshot("hft-tests/tiny-llama", tiny_dir, REVISION)
    select(tiny_model("llama")).save(snapshot / "hft_mask.json")
    return "hft-tests/tiny-llama"


def test_resolve_tells_directories_configs_gguf_files_and_hub_ids(tiny_dir, tmp_path):
    assert models.resolve(str(tiny_dir)).source == str(tiny_dir)
    assert models.resolve(str(tiny_dir / "config.json")).source == str(tiny_dir)
    gguf = tmp_path / "m.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    ref = models.resolve(str(gguf))
    assert (ref.source, ref.gguf_file) == (str(tmp_path), "m.Q4_1.gguf")
    ref = models.resolve("org/name", revision="v1", token="t")
    assert (ref.source, ref.gguf_file, ref.revision, ref.token, ref.local) == (
        "org/name",
        None,
        "v1",
        "t",
        False,
    )
    ref = models.resolve("org/name/quant/m.gguf")
    assert (ref.source, ref.gguf_file) == ("org/name", "quant/m.gguf")


@pytest.mark.parametrize(
    "name, message",
    [
        ("./no-such-dir", "no model directory, config.json or .gguf file at ./no-such-dir"),
        ("/abs/missing.gguf", "no model directory, config.json or .gguf file at /abs/missing.gguf"),
        ("a/b/c", "'a/b/c' is neither a local path nor a Hub id (org/name)"),
        ("org//name", "'org//name' is neither a local path nor a Hub id (org/name)"),
    ],
)
def test_resolve_refuses_what_names_no_model(name, message):
    with pytest.raises(HFTError) as info:
        models.resolve(name)
    assert str(info.value) == message


def test_resolve_refuses_a_file_that_is_no_model(tmp_path):
    other = tmp_path / "weights.bin"
    other.write_bytes(b"")
    with pytest.raises(HFTError, match="is a file, but not a config.json or a .gguf file"):
        models.resolve(str(other))


def test_hub_id_loads_offline_from_the_cache(hub_repo, tiny_dir):
    from transformers import AutoModelForCausalLM

    config = models.load_config(hub_repo)
    assert config.model_type == "llama"
    model = models.load_model(hub_repo, revision=REVISION)
    local = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.state_dict().keys() == local.state_dict().keys()
    assert all(torch.equal(a, local.state_dict()[k]) for k, a in model.state_dict().items())
    assert models.load_tokenizer(hub_repo).eos_token is not None


def test_unknown_hub_repo_or_revision_is_one_line(hub_repo):
    with pytest.raises(HFTError) as info:
        models.load_config("hft-tests/no-such-repo")
    assert str(info.value).startswith("cannot load the config of hft-tests/no-such-repo: ")
    assert "\n" not in str(info.value)
    with pytest.raises(HFTError, match=r"of hft-tests/tiny-llama \(revision v9\): "):
        models.load_model(hub_repo, revision="v9")


def test_model_file_finds_a_file_beside_the_weights(hub_repo, tiny_dir):
    model = models.load_model(hub_repo)
    found = models.model_file(model, "hft_mask.json")
    assert found is not None and found.name == "hft_mask.json" and REVISION in str(found)
    assert models.model_file(model, "no-such-file.json") is None
    assert models.model_file(str(tiny_dir), "config.json") == tiny_dir / "config.json"
    assert models.model_file(str(tiny_dir), "hft_mask.json") is None


def test_a_file_offline_and_not_cached_is_taken_as_absent_saying_so_once(hub_repo, caplog):
    model = models.load_model(hub_repo)
    with caplog.at_level("WARNING", logger="hft_plugins.integrations.models"):
        for _ in range(2):
            assert models.model_file(model, "never-fetched.json") is None
    said = [r.getMessage() for r in caplog.records if r.name == "hft_plugins.integrations.models"]
    assert said == [
        "HFT: cannot tell whether hft-tests/tiny-llama has never-fetched.json: the Hub is "
        "offline and the cache does not have it; going on as if it has none"
    ]


def test_a_model_without_a_gguf_mark_is_left_alone(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert models.plain_weights(model) is model
    assert model.name_or_path == str(tiny_dir)


def test_packed_gguf_weights_are_refused(tiny_dir):
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import GgufConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    model.hf_quantizer = type("Quantizer", (), {"quantization_config": GgufConfig("m.gguf")})()
    model.model.layers[0].mlp.up_proj.weight = torch.nn.Parameter(
        torch.zeros(2, dtype=torch.uint8), requires_grad=False
    )
    with pytest.raises(HFTError) as info:
        models.plain_weights(model)
    assert str(info.value) == (
        "this model keeps its GGUF weights quantized (torch.uint8 tensors); HFT trains float "
        "weights: load it with quantization_config=GgufConfig(dequantize=True)"
    )


@pytest.mark.slow
def test_a_gguf_model_loads_as_a_plain_model_that_trains_and_saves(tmp_path, caplog):
    from transformers import AutoModelForCausalLM
    from transformers.trainer_utils import validate_quantization_for_training

    gguf = require_real_model()
    with caplog.at_level("WARNING", logger="hft_plugins.integrations.models"):
        model = models.load_model(str(gguf), dtype=torch.float32)
    said = [r.getMessage() for r in caplog.records if r.name == "hft_plugins.integrations.models"]
    assert said == [
        f"HFT: {gguf.name} was dequantized to torch.float32 on load; training those weights "
        "and saving them as a normal checkpoint"
    ]
    assert model.name_or_path == str(gguf)
    assert not model.is_quantized and getattr(model, "hf_quantizer", None) is None
    assert not hasattr(model.config, "quantization_config")
    validate_quantization_for_training(model)  # the Trainer's check: raises for a GGUF model
    model.save_pretrained(tmp_path)
    assert "gguf" not in (tmp_path / "config.json").read_text()
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    assert models.model_file(model, "hft_mask.json") is None  # looked for beside the file


@pytest.mark.slow
def test_the_real_gguf_model_trains_its_half_through_hftsfttrainer(tmp_path, caplog):
    """SmolLM2-135M-Instruct loaded from its Q4_1 GGUF file as transformers users load it
    (``gguf_file=``; the Trainer refuses that model): 2 SFT steps with HFT, the frozen half
    bit-identical, every trainable tensor moved, a normal checkpoint saved."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from hft_plugins import HFTConfig
    from hft_plugins.integrations.trl import HFTSFTTrainer
    from tests.helpers import assert_half_trained, snapshot

    torch.manual_seed(0)
    gguf = require_real_model()
    with caplog.at_level("WARNING", logger="hft_plugins.integrations.models"):
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        pairs = [("Capital of France?", "Paris."), ("2+2?", "4."), ("Sky colour?", "Blue.")]
        rows = [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in pairs + pairs
        ]
        before = snapshot(model)
        trainer = HFTSFTTrainer(
            model=model,
            args=SFTConfig(
                output_dir=str(tmp_path),
                max_steps=2,
                per_device_train_batch_size=2,
                learning_rate=1e-4,
                max_length=64,
                use_cpu=True,
                bf16=False,
                report_to=[],
                save_strategy="no",
            ),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            hft_config=HFTConfig(),
        )
        trainer.train()
    said = [r for r in caplog.records if r.name == "hft_plugins.integrations.models"]
    assert len(said) == 1 and "was dequantized to torch.float32" in said[0].getMessage()
    assert trainer.state.global_step == 2
    assert_half_trained(trainer.hft_mask, before, model)
    trainer.save_model(str(tmp_path / "out"))
    assert "gguf" not in (tmp_path / "out" / "config.json").read_text()
    assert (tmp_path / "out" / "hft_mask.json").is_file()


def test_a_directory_without_config_json_is_refused_in_one_line(tmp_path):
    """transformers' own message for it ("Unrecognized model ... `model_type` key") hides
    what is missing; a GGUF file in the directory is named as the way to load it."""
    with pytest.raises(HFTError) as info:
        models.load_config(str(tmp_path))
    assert str(info.value) == f"no config.json in the model directory {tmp_path}"
    (tmp_path / "m.Q4_1.gguf").write_bytes(b"GGUF")
    with pytest.raises(HFTError) as info:
        models.load_model(str(tmp_path))
    assert str(info.value) == (
        f"no config.json in the model directory {tmp_path} (to load a GGUF file, name the "
        f"file: {tmp_path / 'm.Q4_1.gguf'})"
    )


def test_load_model_asks_transformers_to_dequantize_a_gguf_file(tmp_path):
    """Where transformers has a GGUF kernel it keeps the weights packed unless asked not to;
    load_model loads for training, so it asks for float weights."""
    from transformers.utils.quantization_config import GgufConfig

    gguf = tmp_path / "m.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    asked = {}

    class Recorder:
        @staticmethod
        def from_pretrained(source, **kwargs):
            asked.update(kwargs, source=source)
            return torch.nn.Linear(1, 1)

    models.load_model(str(gguf), auto_class=Recorder)
    assert asked["source"] == str(tmp_path) and asked["gguf_file"] == gguf.name
    config = asked["quantization_config"]
    assert isinstance(config, GgufConfig) and config.dequantize is True
