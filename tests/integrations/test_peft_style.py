"""get_hft_model / HFTModel: PEFT's method names with half-size saves."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file

from hft_plugins import HFTConfig, HFTError, HFTOptimizer, select
from hft_plugins.integrations.peft_style import HFTModel, get_hft_model
from hft_plugins.tiny import tiny_model
from tests.integrations._common import snapshot


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
    assert size - data < 64 * 1024  # config, mask and safetensors header
    assert json.loads((tmp_path / "hft" / "hft_config.json").read_text()) == HFTConfig().to_dict()


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
    from transformers import TrainingArguments

    from hft_plugins.integrations.transformers import HFTTrainer
    from tests.integrations._common import assert_half_trained, lm_dataset

    model = get_hft_model(tiny_model("phi3"), HFTConfig(seed=1))
    before = snapshot(model.base_model)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, learning_rate=1e-2, report_to=[], use_cpu=True
    )
    trainer = HFTTrainer(model=model, args=args, train_dataset=lm_dataset())
    trainer.train()
    assert trainer.hft_mask == model.hft_mask
    assert_half_trained(model.hft_mask, before, model.base_model)
