"""get_hft_model / HFTModel: PEFT's method names with half-size saves."""

import json
import os
import stat
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hft_plugins import HFTConfig, HFTError, HFTOptimizer, select
from hft_plugins.integrations.peft_style import AutoHFTModelForCausalLM, HFTModel, get_hft_model
from hft_plugins.testing import tiny_model
from tests.helpers import assert_half_trained, snapshot


def train_a_bit(model, steps=3):
    opt = HFTOptimizer(model.base_model, model.hft_mask, torch.optim.SGD, lr=0.1)
    ids = torch.randint(7, 90, (2, 10), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()


def test_forwards_like_the_model_and_falls_through():
    base = tiny_model()
    ids = torch.tensor([[5, 6, 7]])
    expected = base(input_ids=ids).logits
    model = get_hft_model(base, HFTConfig())
    assert torch.equal(model(input_ids=ids).logits, expected)
    assert model.config is base.config and model.get_input_embeddings() is base.model.embed_tokens


def test_print_trainable_parameters_in_peft_format(capsys):
    base = tiny_model("phi3")
    model = get_hft_model(base, HFTConfig())
    model.print_trainable_parameters()
    mask = select(base, HFTConfig())
    total = sum(p.numel() for p in base.parameters())
    n = mask.trainable_numel
    assert capsys.readouterr().out == (
        f"trainable params: {n:,d} || all params: {total:,d} || trainable%: {100 * n / total:.4f}\n"
    )


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2"])
def test_save_holds_exactly_the_trainable_tensors_and_restores(tmp_path, family):
    model = get_hft_model(tiny_model(family), HFTConfig(seed=2))
    train_a_bit(model)
    tuned = snapshot(model.base_model)
    model.save_pretrained(tmp_path / "hft")
    saved = load_file(tmp_path / "hft" / "hft_model.safetensors")
    plan = model.hft_mask.params()
    expected = set()
    for name, slices in plan.items():
        if slices is None:
            expected.add(name)
        else:
            expected |= {f"{name}[{slices.dim}:{a}:{b}]" for a, b in slices.ranges}
    assert set(saved) == expected
    assert sum(t.numel() for t in saved.values()) == model.hft_mask.trainable_numel

    restored = HFTModel.from_pretrained(tiny_model(family), tmp_path / "hft")
    for name, param in restored.base_model.named_parameters():
        assert torch.equal(param, tuned[name]), name
    assert restored.hft_mask == model.hft_mask


def _tensor_bytes(path):
    """Bytes of tensor data in a safetensors file (its size less the JSON header)."""
    raw = path.read_bytes()
    return len(raw) - 8 - struct.unpack("<Q", raw[:8])[0]


def test_save_is_the_trainable_fraction_of_a_full_save(tmp_path):
    base = tiny_model()
    model = get_hft_model(base, HFTConfig())
    model.save_pretrained(tmp_path / "hft")
    base.save_pretrained(tmp_path / "full")
    data = _tensor_bytes(tmp_path / "hft" / "hft_model.safetensors")
    full = _tensor_bytes(tmp_path / "full" / "model.safetensors")
    total = sum(p.numel() for p in base.parameters())
    assert full == total * 4  # tied lm_head is stored once
    assert (
        data == model.hft_mask.trainable_numel * 4 == full * model.hft_mask.trainable_numel // total
    )
    size = sum(f.stat().st_size for f in (tmp_path / "hft").iterdir())
    assert size - data < 64 * 1024  # config, mask, model card and safetensors header
    saved = json.loads((tmp_path / "hft" / "hft_config.json").read_text())
    assert saved == {**HFTConfig().to_dict(), "base_model_name_or_path": None}


def test_save_over_an_existing_directory_leaves_no_temporaries(tmp_path):
    model = get_hft_model(tiny_model(), HFTConfig())
    model.save_pretrained(tmp_path / "hft")
    train_a_bit(model, 1)
    model.save_pretrained(tmp_path / "hft")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hft"]
    restored = HFTModel.from_pretrained(tiny_model(), tmp_path / "hft")
    assert torch.equal(restored.lm_head.weight, model.lm_head.weight)


def test_disable_adapter_restores_the_base_values_temporarily():
    base = tiny_model()
    ids = torch.tensor([[5, 6, 7, 8]])
    before = base(input_ids=ids).logits.detach()
    model = get_hft_model(base, HFTConfig())
    train_a_bit(model)
    tuned = model(input_ids=ids).logits.detach()
    assert not torch.equal(tuned, before)
    with model.disable_adapter():
        assert torch.equal(model(input_ids=ids).logits, before)
    assert torch.equal(model(input_ids=ids).logits, tuned)


def test_merge_and_unload_gives_the_plain_tuned_model():
    base = tiny_model()
    model = get_hft_model(base, HFTConfig())
    train_a_bit(model)
    tuned = snapshot(base)
    plain = model.merge_and_unload()
    assert plain is base and all(p.requires_grad for p in plain.parameters())
    assert all(torch.equal(p, tuned[n]) for n, p in plain.named_parameters())


def test_peft_adapter_on_the_same_model_is_refused():
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(HFTError, match="cannot be combined with a PEFT adapter"):
        get_hft_model(peft_model, HFTConfig())


def test_bad_inputs(tmp_path):
    with pytest.raises(HFTError, match="HFTConfig, got dict"):
        get_hft_model(tiny_model(), {"ratio": 0.5})
    with pytest.raises(HFTError, match="already an HFTModel"):
        get_hft_model(get_hft_model(tiny_model()))
    with pytest.raises(HFTError, match="no HFT save in"):
        HFTModel.from_pretrained(tiny_model(), tmp_path)
    get_hft_model(tiny_model()).save_pretrained(tmp_path / "hft")
    with pytest.raises(HFTError, match="mask does not match the model"):
        HFTModel.from_pretrained(tiny_model(intermediate_size=48), tmp_path / "hft")


def test_hft_trainer_takes_an_hft_model(tmp_path):
    from hft_plugins.integrations.transformers import HFTTrainer
    from tests.helpers import lm_dataset, training_args

    model = get_hft_model(tiny_model("phi3"), HFTConfig(seed=1))
    before = snapshot(model.base_model)
    args = training_args(tmp_path, max_steps=3)
    trainer = HFTTrainer(model=model, args=args, train_dataset=lm_dataset())
    trainer.train()
    assert trainer.hft_mask == model.hft_mask
    assert_half_trained(model.hft_mask, before, model.base_model)


# ---- PEFT's conventions, name for name ---------------------------------------------------


def _files(directory):
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}


def test_save_pretrained_takes_peft_keyword_arguments(tmp_path):
    model = get_hft_model(tiny_model(), HFTConfig())
    model.save_pretrained(
        tmp_path / "hft",
        safe_serialization=True,
        selected_adapters=None,
        save_embedding_layers="auto",
        is_main_process=True,
        max_shard_size="5GB",
    )
    HFTModel.from_pretrained(tiny_model(), tmp_path / "hft")
    model.save_pretrained(tmp_path / "other-rank", is_main_process=False)
    assert not (tmp_path / "other-rank").exists()  # only the main process writes, as PEFT


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"safe_serialization": False}, "safe_serialization=False: HFT saves only safetensors"),
        ({"selected_adapters": ["other"]}, "selected_adapters=['other']: an HFTModel has one"),
        ({"save_embedding_layers": False}, "save_embedding_layers=False would leave out"),
        (
            {"path_initial_model_for_weight_conversion": "init"},
            "path_initial_model_for_weight_conversion is for PiSSA",
        ),
    ],
)
def test_save_pretrained_refuses_what_it_cannot_honour(tmp_path, kwargs, message):
    model = get_hft_model(tiny_model(), HFTConfig())
    with pytest.raises(HFTError) as err:
        model.save_pretrained(tmp_path / "hft", **kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not (tmp_path / "hft").exists()


def test_save_pretrained_of_a_given_state_dict(tmp_path):
    """The Trainer hands a gathered state dict (FSDP, DeepSpeed): the save takes its tensors."""
    model = get_hft_model(tiny_model(), HFTConfig())
    train_a_bit(model, 1)
    state = {k: v.clone() + 1 for k, v in model.state_dict().items()}  # keys 'base_model.'...
    model.save_pretrained(tmp_path / "hft", state_dict=state)
    restored = HFTModel.from_pretrained(tiny_model(), tmp_path / "hft")
    for name in model.hft_mask.params():
        assert torch.equal(restored.base_model.get_parameter(name), state[f"base_model.{name}"])


def test_from_pretrained_takes_a_path_and_is_trainable_like_peft(tmp_path):
    from hft_plugins.testing import save_tiny

    save_tiny(tmp_path / "base")
    tuned = get_hft_model(tiny_model(), HFTConfig(seed=4))
    train_a_bit(tuned)
    tuned.save_pretrained(tmp_path / "hft")

    frozen = HFTModel.from_pretrained(str(tmp_path / "base"), tmp_path / "hft")  # PEFT's default
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert frozen.get_nb_trainable_parameters()[0] == 0
    for name, param in tuned.base_model.named_parameters():
        assert torch.equal(frozen.base_model.get_parameter(name), param), name

    trainable = HFTModel.from_pretrained(
        str(tmp_path / "base"), str(tmp_path / "hft"), is_trainable=True
    )
    plan = trainable.hft_mask.params()
    assert all(p.requires_grad == (n in plan) for n, p in trainable.base_model.named_parameters())
    assert trainable.get_nb_trainable_parameters()[0] == tuned.hft_mask.trainable_numel


def test_from_pretrained_refuses_what_it_cannot_honour(tmp_path):
    get_hft_model(tiny_model()).save_pretrained(tmp_path / "hft")
    with pytest.raises(HFTError, match="adapter_name='other': an HFTModel has one"):
        HFTModel.from_pretrained(tiny_model(), tmp_path / "hft", adapter_name="other")
    with pytest.raises(HFTError, match=r"config= \(stage 1, seed 0\) differs from the saved mask"):
        HFTModel.from_pretrained(tiny_model(), tmp_path / "hft", config=HFTConfig(stage=1))
    with pytest.raises(
        HFTError, match="no model directory, config.json or .gguf file at .*/nowhere"
    ):
        HFTModel.from_pretrained(str(tmp_path / "nowhere"), tmp_path / "hft")


def test_saved_config_records_the_base_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from hft_plugins.testing import save_tiny

    save_tiny(tmp_path / "base")
    model = get_hft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), HFTConfig())
    model.save_pretrained(tmp_path / "hft")
    saved = json.loads((tmp_path / "hft" / "hft_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(tmp_path / "base")
    assert {k: saved[k] for k in HFTConfig().to_dict()} == HFTConfig().to_dict()
    get_hft_model(tiny_model()).save_pretrained(tmp_path / "in-code")  # built in code: no path
    saved = json.loads((tmp_path / "in-code" / "hft_config.json").read_text())
    assert saved["base_model_name_or_path"] is None


def test_push_to_hub_uploads_only_the_hft_save(tmp_path, monkeypatch):
    import huggingface_hub

    uploads = []

    def create_repo(self, repo_id, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        uploads.append((repo_id, {f: (folder / f).read_bytes() for f in _files(folder)}))
        return "https://huggingface.co/me/tiny-hft/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    model = get_hft_model(tiny_model(), HFTConfig())
    model.push_to_hub("me/tiny-hft", commit_message="stage 0")
    model.save_pretrained(tmp_path / "local")
    [(repo, files)] = uploads
    assert repo == "me/tiny-hft"
    assert set(files) == _files(tmp_path / "local")  # exactly what save_pretrained writes
    assert "model.safetensors" not in files
    data = files["hft_model.safetensors"]
    assert len(data) - 8 - struct.unpack("<Q", data[:8])[0] == model.hft_mask.trainable_numel * 4


def test_get_base_model_unload_and_merge_and_unload():
    base = tiny_model()
    original = snapshot(base)
    model = get_hft_model(base, HFTConfig())
    assert model.get_base_model() is base
    train_a_bit(model)
    assert model.merge_and_unload(progressbar=False, safe_merge=True) is base

    base = tiny_model()
    model = get_hft_model(base, HFTConfig())
    train_a_bit(model)
    plain = model.unload()  # PEFT: the base model without the adapter's changes
    assert plain is base and all(p.requires_grad for p in plain.parameters())
    assert all(torch.equal(p, original[n]) for n, p in plain.named_parameters())


def test_a_missing_attribute_names_hftmodel():
    model = get_hft_model(tiny_model(), HFTConfig())
    with pytest.raises(AttributeError, match="'HFTModel' object has no attribute 'no_such_thing'"):
        model.no_such_thing  # noqa: B018
    assert not hasattr(model, "no_such_thing")


def test_save_directories_respect_the_umask(tmp_path):
    model = get_hft_model(tiny_model(), HFTConfig())
    old = os.umask(0o022)
    try:
        model.save_pretrained(tmp_path / "a" / "hft")
        model.save_pretrained(tmp_path / "a" / "hft")  # over an earlier save
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "a" / "hft").stat().st_mode) == 0o755
    for f in (tmp_path / "a" / "hft").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f.name


def test_saving_into_a_directory_keeps_what_else_is_there(tmp_path):
    """A tokenizer, notes or checkpoints already in the directory survive a save, and a second."""
    from hft_plugins.testing import tiny_tokenizer

    out = tmp_path / "out"
    tiny_tokenizer().save_pretrained(out)
    (out / "notes.txt").write_text("keep me")
    (out / "checkpoint-1").mkdir()
    (out / "checkpoint-1" / "optimizer.pt").write_bytes(b"state")
    before = {f: (out / f).read_bytes() for f in _files(out)}
    model = get_hft_model(tiny_model(), HFTConfig())
    model.save_pretrained(out)
    train_a_bit(model, 1)
    model.save_pretrained(out)
    assert all((out / f).read_bytes() == data for f, data in before.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries beside it
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    restored = HFTModel.from_pretrained(tiny_model(), out)
    assert torch.equal(restored.lm_head.weight, model.lm_head.weight)


def test_from_pretrained_of_a_hub_repo(tmp_path, monkeypatch):
    import huggingface_hub

    model = get_hft_model(tiny_model(), HFTConfig(seed=3))
    train_a_bit(model, 1)
    model.save_pretrained(tmp_path / "snapshot")
    asked = []

    def snapshot_download(repo_id, **kwargs):
        asked.append((repo_id, kwargs["revision"], sorted(kwargs["allow_patterns"])))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    restored = HFTModel.from_pretrained(tiny_model(), "me/tiny-hft", revision="v1")
    assert asked == [
        (
            "me/tiny-hft",
            "v1",
            sorted(["README.md", "hft_config.json", "hft_mask.json", "hft_model.safetensors"]),
        )
    ]
    assert torch.equal(restored.lm_head.weight, model.lm_head.weight)
    monkeypatch.undo()  # offline: the Hub is out of reach, and the error says so in one line
    with pytest.raises(HFTError, match="no HFT save in me/absent: not a local directory") as err:
        HFTModel.from_pretrained(tiny_model(), "me/absent")
    assert "\n" not in str(err.value)


def test_get_hft_model_takes_a_gguf_loaded_model(tmp_path):
    """Its quantized mark is cleared (else save_pretrained and the Trainer refuse it): the
    save and the round trip are those of a plain model."""
    from tests.helpers import mark_as_gguf

    model = get_hft_model(mark_as_gguf(tiny_model()), HFTConfig(seed=2))
    assert not model.is_quantized and not hasattr(model.config, "quantization_config")
    before = snapshot(model.base_model)
    train_a_bit(model)
    assert_half_trained(model.hft_mask, before, model.base_model)
    model.save_pretrained(tmp_path / "hft")
    restored = HFTModel.from_pretrained(mark_as_gguf(tiny_model()), tmp_path / "hft")
    assert not restored.is_quantized
    for name, param in model.base_model.named_parameters():
        assert torch.equal(restored.base_model.get_parameter(name), param), name


def _same_tensors(a, b):
    named = dict(b.base_model.named_parameters())
    assert named.keys() == dict(a.base_model.named_parameters()).keys()
    for name, param in a.base_model.named_parameters():
        assert torch.equal(param, named[name]), name


def test_auto_loads_the_base_model_the_save_names(tmp_path):
    """PEFT's AutoPeftModelForCausalLM pattern: the base from base_model_name_or_path (a
    directory or a Hub id, offline from the cache), the saved half on top."""
    from transformers import AutoModelForCausalLM

    from hft_plugins.integrations import models
    from hft_plugins.testing import save_tiny
    from tests.helpers import hub_snapshot

    save_tiny(tmp_path / "base")
    hub_snapshot("hft-tests/auto-base", tmp_path / "base")
    for name, base in [
        ("local", AutoModelForCausalLM.from_pretrained(tmp_path / "base")),
        ("hub", models.load_model("hft-tests/auto-base")),
    ]:
        tuned = get_hft_model(base, HFTConfig(seed=5))
        before = snapshot(base)
        train_a_bit(tuned)
        assert_half_trained(tuned.hft_mask, before, base)  # so the saved half differs
        tuned.save_pretrained(tmp_path / name)
        auto = AutoHFTModelForCausalLM.from_pretrained(tmp_path / name)
        assert isinstance(auto, HFTModel) and not auto.training
        assert auto.base_model.name_or_path == base.name_or_path
        _same_tensors(auto, HFTModel.from_pretrained(base.name_or_path, tmp_path / name))
        _same_tensors(auto, tuned)
    trainable = AutoHFTModelForCausalLM.from_pretrained(tmp_path / "hub", is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] == trainable.hft_mask.trainable_numel


def test_auto_refuses_a_save_without_a_loadable_base_in_one_line(tmp_path):
    get_hft_model(tiny_model()).save_pretrained(tmp_path / "in-code")
    with pytest.raises(HFTError) as err:
        AutoHFTModelForCausalLM.from_pretrained(tmp_path / "in-code")
    assert str(err.value) == (
        f"the HFT save in {tmp_path / 'in-code'} names no base model (it was built in code): "
        f"load it with HFTModel.from_pretrained(base_model, '{tmp_path / 'in-code'}')"
    )
    config = json.loads((tmp_path / "in-code" / "hft_config.json").read_text())
    config["base_model_name_or_path"] = "/no/such/base"
    (tmp_path / "in-code" / "hft_config.json").write_text(json.dumps(config))
    with pytest.raises(HFTError) as err:
        AutoHFTModelForCausalLM.from_pretrained(tmp_path / "in-code")
    assert str(err.value) == (
        f"the base model of the HFT save in {tmp_path / 'in-code'}: no model directory, "
        "config.json or .gguf file at /no/such/base"
    )
    with pytest.raises(HFTError) as err:
        AutoHFTModelForCausalLM.from_pretrained(tmp_path / "nowhere")
    assert str(err.value) == f"no HFT save in {tmp_path / 'nowhere'}: hft_config.json is missing"
    with pytest.raises(HFTError, match="not built directly"):
        AutoHFTModelForCausalLM()


@pytest.mark.slow
def test_auto_loads_a_gguf_base(tmp_path):
    """A save of a GGUF-loaded model names the .gguf file as its base; Auto loads it again."""
    from hft_plugins.integrations import models
    from tests.helpers import require_real_model

    gguf = require_real_model()
    tuned = get_hft_model(models.load_model(str(gguf)), HFTConfig(seed=1))
    with torch.no_grad():
        for name, view in tuned.hft_mask.params().items():
            if view is None:
                tuned.base_model.get_parameter(name).add_(0.01)
    tuned.save_pretrained(tmp_path / "hft")
    saved = json.loads((tmp_path / "hft" / "hft_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(gguf)
    auto = AutoHFTModelForCausalLM.from_pretrained(tmp_path / "hft")
    _same_tensors(auto, tuned)
