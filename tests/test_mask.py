import json

import pytest

from hft_plugins import HFTConfig, HFTError, HFTMask, apply_hft, select
from hft_plugins.testing import tiny_model


def test_apply_sets_requires_grad_by_plan():
    model = tiny_model("llama")
    mask = apply_hft(model, HFTConfig(seed=1))
    plan = mask.params()
    for name, param in model.named_parameters():
        assert param.requires_grad == (name in plan)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == mask.trainable_numel  # Llama has no fused tensors


def test_json_round_trip(tmp_path):
    model = tiny_model("gpt2")
    mask = select(model, HFTConfig(strategy="matrix", ratio=0.4, seed=2, stage=3))
    mask.save(tmp_path / "mask.json")
    loaded = HFTMask.load(tmp_path / "mask.json")
    assert loaded == mask
    assert loaded.params() == mask.params()
    assert loaded.config == HFTConfig(strategy="matrix", ratio=0.4, seed=2, stage=3)
    assert loaded.summary() == mask.summary()
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left beside it


def test_mask_for_another_model_names_first_mismatch():
    mask = select(tiny_model("llama"), HFTConfig())
    other = tiny_model("llama", intermediate_size=48)
    with pytest.raises(
        HFTError, match=r"parameter 'model.layers.0.mlp.gate_proj.weight' has shape \[48, 32\]"
    ):
        mask.apply(other)
    with pytest.raises(
        HFTError, match="parameter 'model.layers.4.input_layernorm.weight' is not in it"
    ):
        mask.apply(tiny_model("llama", num_hidden_layers=5))


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "corrupt HFT mask"),
        ('{"format": "other"}', "not an HFT mask"),
        ('{"format": "hft-mask/1", "shapes": {}}', "corrupt HFT mask: KeyError"),
    ],
)
def test_corrupt_mask_json(tmp_path, text, match):
    path = tmp_path / "mask.json"
    path.write_text(text)
    with pytest.raises(HFTError, match=match):
        HFTMask.load(path)


def test_mask_load_of_a_directory_is_one_line(tmp_path):
    with pytest.raises(HFTError, match=r"^cannot read HFT mask .*: Is a directory$"):
        HFTMask.load(tmp_path)


def test_edited_shapes_fail_the_fingerprint(tmp_path):
    data = select(tiny_model("llama"), HFTConfig()).to_json()
    data["shapes"]["model.norm.weight"] = [33]
    (tmp_path / "m.json").write_text(json.dumps(data))
    with pytest.raises(HFTError, match="fingerprint does not match"):
        HFTMask.load(tmp_path / "m.json")


def test_summary_shows_blocks_and_totals():
    text = select(tiny_model("llama"), HFTConfig()).summary()
    assert "strategy=category ratio=0.5 seed=0 stage=0 layout=llama blocks=4" in text
    assert "block fraction 0.500000 (ratio 0.5; exact)" in text
    assert text.count("2/4 ") == 4  # attention, every block


def _messages(action):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return [str(w.message) for w in caught]


def test_a_tied_head_says_which_flag_applies_once_per_model():
    model = tiny_model("llama", tie_word_embeddings=True)  # lm_head is embed_tokens
    head_off = HFTConfig(train_head=False)
    messages = _messages(lambda: [select(model, head_off) for _ in range(3)])
    assert messages == [
        "train_head=False does not apply to lm_head.weight: it is tied to "
        "model.embed_tokens.weight, which trains as train_embeddings=True says"
    ]
    mask = select(model, head_off)
    assert "model.embed_tokens.weight" in mask.params()  # so the head trains too
    messages = _messages(lambda: select(model, HFTConfig(train_embeddings=False)))
    assert messages == [
        "train_head=True does not apply to lm_head.weight: it is tied to "
        "model.embed_tokens.weight, which stays frozen as train_embeddings=False says"
    ]
    assert _messages(lambda: select(model, HFTConfig())) == []  # both trained: nothing moot
    untied = tiny_model("llama")
    assert _messages(lambda: select(untied, head_off)) == []


def test_an_unmet_ratio_warns_once_per_model():
    model = tiny_model("llama", num_hidden_layers=2)
    config = HFTConfig(strategy="layer", ratio=0.25)
    assert len(_messages(lambda: [select(model, config) for _ in range(3)])) == 1
    assert len(_messages(lambda: select(tiny_model("llama", num_hidden_layers=2), config))) == 1


def test_mask_applied_fires_once_per_mask_applied(fresh_registry):
    from hft_plugins import hookimpl, registry

    seen = []

    class Recorder:
        @hookimpl
        def mask_applied(self, model, mask):
            seen.append(mask.config.stage)

    registry.manager().register(Recorder())
    model = tiny_model("llama")
    first = select(model, HFTConfig())
    first.apply(model)
    select(model, HFTConfig()).apply(model)  # the same mask again: not a new application
    second = select(model, HFTConfig(stage=1))
    second.apply(model)
    first.apply(model)  # back to the first: applied anew
    for param in model.parameters():
        param.requires_grad_(True)
    first.apply(model)  # something changed what trains: applied anew
    assert seen == [0, 1, 0, 0]
