"""The paper's rule and its ablations, on every built-in architecture."""

from collections import Counter

import pytest
import torch
from torch import nn

from hft_plugins import HFTConfig, HFTError, select
from hft_plugins.testing import FAMILIES, tiny_model
from tests.helpers import unit_coverage

EXPECTED_LAYOUT = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "gemma": "llama",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "olmo2": "olmo2",
    "phi3": "phi3",
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
    "opt": "opt",
    "bert": "bert",
    "mixtral": "structural",
    "qwen2_moe": "llama+structural",
    "deepseek_v3": "structural",
    "gpt_oss": "structural",
    "jamba": "structural",
    "bart": "opt+opt(+structural)",
    "t5": "structural",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_category_rule_exact_half_on_every_family(family):
    model = tiny_model(family)
    mask = select(model, HFTConfig())
    assert mask.partition.sorted_by == EXPECTED_LAYOUT[family]
    fractions = mask.fractions()
    for category in ("attention", "ffn", "norm", "blocks"):
        done, total = fractions[category]
        assert done * 2 == total, (category, done, total)
    # everything outside the blocks stays trainable by default
    for category in ("embed", "head", "final_norm"):
        if category in fractions:
            assert fractions[category][0] == fractions[category][1]
    # every element of every parameter of the model is in exactly one unit (tied aliases
    # excluded): a whole tensor in one unit, or its ranges split among units
    params = dict(model.named_parameters())
    assert {part.param for unit in mask.partition.units for part in unit.parts} == set(params)
    units_of = unit_coverage(mask, model)
    for name, count in units_of.items():
        assert (count == 1).all(), (name, sorted(set(count.flatten().tolist())))


def test_category_rule_per_block_counts_on_llama():
    model = tiny_model("llama", num_hidden_layers=6)
    mask = select(model, HFTConfig(seed=4))
    per_block = Counter()
    for unit in mask.partition.block_units():
        if unit.key in mask.trainable:
            per_block[(unit.block, unit.category)] += 1
    for block in range(6):
        assert per_block[(block, "attention")] == 2
        assert per_block[(block, "norm")] == 1
    ffn = sorted(per_block[(b, "ffn")] for b in range(6))
    assert ffn == [1, 1, 1, 2, 2, 2]


def test_grouped_query_attention_still_exactly_half():
    model = tiny_model("llama", num_key_value_heads=1)  # k, v are a quarter of q, o
    for seed in range(5):
        done, total = select(model, HFTConfig(seed=seed)).fractions()["attention"]
        assert done * 2 == total


def test_fused_projections_split_into_logical_slices():
    mask = select(tiny_model("gpt2"), HFTConfig())
    c_attn = [u for u in mask.partition.block_units() if u.block == 0 and "c_attn" in u.name]
    assert [u.name for u in c_attn] == ["attn.c_attn[q]", "attn.c_attn[k]", "attn.c_attn[v]"]
    assert c_attn[1].parts[0].dim == 1  # Conv1D keeps outputs in columns
    assert c_attn[1].parts[0].ranges == ((32, 64),)
    neox = select(tiny_model("gpt_neox"), HFTConfig())
    q = next(u for u in neox.partition.block_units() if u.name.endswith("[q]"))
    assert q.parts[0].ranges == ((0, 8), (24, 32), (48, 56), (72, 80))  # per head


def test_tied_embeddings_are_reported():
    mask = select(tiny_model("gpt2"), HFTConfig())
    assert mask.partition.tied == {"lm_head.weight": "transformer.wte.weight"}
    assert "tied: lm_head.weight shares transformer.wte.weight" in mask.summary()


def test_same_seed_and_stage_same_mask_other_stage_differs():
    model = tiny_model("llama", num_hidden_layers=8)
    config = HFTConfig(seed=7)
    assert select(model, config) == select(model, config)
    assert select(model, config).trainable != select(model, config.next_stage()).trainable
    assert select(model, config).trainable != select(model, HFTConfig(seed=8)).trainable


@pytest.mark.parametrize("strategy", ["layer", "matrix"])
def test_ablations_honour_the_ratio(strategy):
    model = tiny_model("llama", num_hidden_layers=8)
    for ratio in (0.25, 0.5, 0.75):
        done, total = select(model, HFTConfig(strategy=strategy, ratio=ratio)).fractions()["blocks"]
        assert abs(done / total - ratio) < 0.07


def test_layer_strategy_trains_whole_blocks():
    mask = select(tiny_model("llama", num_hidden_layers=8), HFTConfig(strategy="layer"))
    blocks = {u.block for u in mask.partition.block_units() if u.key in mask.trainable}
    assert len(blocks) == 4
    for unit in mask.partition.block_units():
        assert (unit.key in mask.trainable) == (unit.block in blocks)


@pytest.mark.parametrize("ratio", [0.25, 0.75])
def test_category_rule_other_ratios(ratio):
    mask = select(tiny_model("llama", num_hidden_layers=8), HFTConfig(ratio=ratio))
    for category in ("attention", "ffn", "norm"):
        done, total = mask.fractions()[category]
        assert abs(done / total - ratio) <= 1 / 12, category


def test_outer_parts_follow_the_config():
    model = tiny_model("llama")
    mask = select(
        model, HFTConfig(train_embeddings=False, train_head=False, train_final_norm=False)
    )
    fractions = mask.fractions()
    assert fractions["embed"][0] == fractions["head"][0] == fractions["final_norm"][0] == 0
    assert fractions["total"][0] == fractions["blocks"][0]


def test_unknown_strategy_lists_available():
    with pytest.raises(
        HFTError, match="unknown strategy 'nope'; available: category, layer, matrix"
    ):
        select(tiny_model("llama"), HFTConfig(strategy="nope"))


def test_structural_fallback_for_an_unknown_model():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.ModuleDict({n: nn.Linear(8, 8) for n in "qkvo"})
            self.mlp_in, self.mlp_out = nn.Linear(8, 16), nn.Linear(16, 8)
            self.norm1, self.norm2 = nn.LayerNorm(8), nn.LayerNorm(8)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.blocks = nn.ModuleList(Block() for _ in range(4))
            self.out = nn.Linear(8, 10)

    mask = select(Net(), HFTConfig())
    assert mask.partition.sorted_by == "structural"
    counts = Counter(u.category for u in mask.partition.block_units() if u.block == 0)
    assert counts == {"attention": 4, "ffn": 2, "norm": 2}
    assert mask.fractions()["blocks"][0] * 2 == mask.fractions()["blocks"][1]


def test_model_without_blocks_is_a_clear_error():
    with pytest.raises(
        HFTError, match="no transformer blocks found in Sequential; register a layout"
    ):
        select(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)), HFTConfig())


def test_meta_device_model_selects_without_memory():
    from transformers import AutoModelForCausalLM

    from hft_plugins.testing import tiny_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            tiny_config(
                "llama",
                hidden_size=4096,
                head_dim=128,
                num_attention_heads=32,
                num_key_value_heads=8,
                intermediate_size=14336,
            )
        )
    done, total = select(model, HFTConfig()).fractions()["blocks"]
    assert done * 2 == total
