"""Block kinds beyond the paper: routed and shared experts, routers, latent attention,
sinks, mamba mixers, dense and MoE blocks in one model, encoder-decoder stacks, and the
refusals for what cannot be sorted exactly."""

from collections import Counter

import pytest
import torch
from torch import nn

from hft_plugins import HFTConfig, HFTError, select
from hft_plugins.testing import tiny_model
from tests.helpers import unit_coverage

NEW_FAMILIES = ("mixtral", "qwen2_moe", "deepseek_v3", "gpt_oss", "jamba", "bart", "t5")


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_every_element_is_in_exactly_one_unit_and_each_category_is_half(family):
    model = tiny_model(family)
    mask = select(model, HFTConfig())
    for name, count in unit_coverage(mask, model).items():
        assert torch.all(count == 1), name
    blocks = {u.key for u in mask.partition.block_units()}
    block_params = {p.param for u in mask.partition.block_units() for p in u.parts}
    for unit in mask.partition.units:
        if unit.key not in blocks:
            assert not ({p.param for p in unit.parts} & block_params), unit.key
    fractions = mask.fractions()
    assert fractions["blocks"][0] * 2 == fractions["blocks"][1]
    assert "other" not in fractions


def _units(mask, block):
    return {u.name: u for u in mask.partition.block_units() if u.block == block}


def test_routed_experts_split_into_gate_up_down_across_all_experts():
    model = tiny_model("mixtral")
    mask = select(model, HFTConfig())
    units = _units(mask, 0)
    experts = {n: u for n, u in units.items() if "experts" in n}
    assert set(experts) == {
        "mlp.experts.gate_up_proj[gate]",
        "mlp.experts.gate_up_proj[up]",
        "mlp.experts.down_proj",
    }
    e, two_f, h = model.model.layers[0].mlp.experts.gate_up_proj.shape
    gate = experts["mlp.experts.gate_up_proj[gate]"].parts[0]
    assert (gate.dim, gate.ranges, gate.step) == (1, ((0, two_f // 2),), 1)
    assert all(u.category == "ffn" for u in experts.values())
    assert units["mlp.gate"].category == "router"
    per_block = Counter(u.block for u in mask.partition.block_units() if u.key in mask.trainable)
    assert set(per_block) == {0, 1, 2, 3}
    # FFN: 2 of 3 in half of the blocks, 1 of 3 in the others, as for a dense FFN
    ffn = Counter(
        u.block
        for u in mask.partition.block_units()
        if u.category == "ffn" and u.key in mask.trainable
    )
    assert sorted(ffn.values()) == [1, 1, 2, 2]


def test_interleaved_gate_up_with_biases_and_sinks():
    model = tiny_model("gpt_oss")
    mask = select(model, HFTConfig())
    units = _units(mask, 0)
    gate = units["mlp.experts.gate_up_proj[gate]"]
    up = units["mlp.experts.gate_up_proj[up]"]
    width = model.model.layers[0].mlp.experts.gate_up_proj.shape[2]
    assert [(p.param.rsplit(".", 1)[1], p.dim, p.ranges, p.step) for p in gate.parts] == [
        ("gate_up_proj", 2, ((0, width),), 2),
        ("gate_up_proj_bias", 1, ((0, width),), 2),
    ]
    assert up.parts[0].ranges == ((1, width),) and up.parts[0].step == 2
    assert units["self_attn.sinks"].category == "scale"
    assert units["mlp.router"].category == "router"
    plan = mask.params()
    for name, slices in plan.items():
        if slices is not None and "gate_up_proj" in name:
            assert slices.step == 2 and slices.size == width // 2


def test_dense_and_moe_blocks_each_draw_their_own_half():
    """first_k_dense_replace: blocks 0-1 are dense, 2-3 MoE; no KeyError, each kind half."""
    model = tiny_model("deepseek_v3")
    mask = select(model, HFTConfig())
    dense, moe = _units(mask, 0), _units(mask, 2)
    assert "mlp.gate_proj" in dense and "mlp.experts.down_proj" in moe
    assert {n for n, u in dense.items() if u.category == "attention"} == {
        "self_attn.q_a_proj",
        "self_attn.q_b_proj",
        "self_attn.kv_a_proj_with_mqa",
        "self_attn.kv_b_proj",
        "self_attn.o_proj",
    }
    assert dense["self_attn.q_a_layernorm"].category == "norm"
    assert moe["mlp.shared_experts.gate_proj"].category == "shared_ffn"
    for blocks in ((0, 1), (2, 3)):
        done = total = 0
        for unit in mask.partition.block_units():
            if unit.block in blocks and unit.category == "ffn":
                total += unit.numel
                done += unit.numel * (unit.key in mask.trainable)
        assert done * 2 == total, blocks


def test_shared_expert_and_its_gate_with_interleaved_dense_layers():
    model = tiny_model("qwen2_moe")  # mlp_only_layers=[0, 2]
    mask = select(model, HFTConfig())
    assert "mlp.gate_proj" in _units(mask, 0)
    moe = _units(mask, 1)
    assert moe["mlp.shared_expert.up_proj"].category == "shared_ffn"
    assert moe["mlp.shared_expert_gate"].category == "router"
    assert moe["mlp.gate"].category == "router"


def test_mamba_layers_are_mixers_beside_attention_layers():
    model = tiny_model("jamba")
    mask = select(model, HFTConfig())
    categories = {
        b: Counter(u.category for u in mask.partition.block_units() if u.block == b)
        for b in range(4)
    }
    assert categories[0]["mixer"] > 0 and categories[0]["attention"] == 0
    assert categories[1]["attention"] == 4 and categories[1]["mixer"] == 0
    assert categories[1]["router"] == 1  # expert layers: period 2, offset 1


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_encoder_and_decoder_blocks_both_draw_halves(family):
    model = tiny_model(family)
    mask = select(model, HFTConfig())
    assert mask.partition.num_blocks == 4
    stacks = Counter(
        u.parts[0].param.split(".layers.")[0].split(".block.")[0]
        for u in mask.partition.block_units()
    )
    assert len(stacks) == 2
    decoder = _units(mask, 3)
    cross = [n for n in decoder if ("encoder_attn." in n or "EncDecAttention." in n)]
    assert len(cross) == 4 and all(decoder[n].category == "attention" for n in cross)
    assert not any(u.category == "head" for u in mask.partition.units if "layers" in u.name)


def test_gpt_bigcode_never_borrows_gpt2_thirds():
    """GPTBigCode's c_attn is q then one k/v head: GPT-2's equal thirds would be wrong."""
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    config = GPTBigCodeConfig(n_embd=32, n_layer=2, n_head=4, vocab_size=96, multi_query=True)
    model = GPTBigCodeForCausalLM(config)
    try:
        mask = select(model, HFTConfig())
    except HFTError as exc:
        assert "c_attn" in str(exc) and "\n" not in str(exc)
        return
    assert "gpt2" not in mask.partition.sorted_by.split("+")


# ---- what cannot be sorted exactly is refused in one line ---------------------------


class _Net(nn.Module):
    def __init__(self, make_block, blocks: int = 2):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.layers = nn.ModuleList(make_block() for _ in range(blocks))
        self.head = nn.Linear(8, 10)


class _FusedAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.ModuleDict({"Wqkv": nn.Linear(8, 24), "out": nn.Linear(8, 8)})
        self.mlp = nn.ModuleDict({"up": nn.Linear(8, 16), "down": nn.Linear(16, 8)})
        self.norm = nn.LayerNorm(8)


def test_fused_attention_of_unknown_split_is_refused_or_guessed_with_a_warning():
    with pytest.raises(HFTError) as caught:
        select(_Net(_FusedAttention), HFTConfig())
    message = str(caught.value)
    assert "'attn.Wqkv' has no known split" in message and "register_layouts" in message
    assert "guess_layout=True" in message and "\n" not in message
    with pytest.warns(UserWarning, match="guess_layout: 2 part"):
        mask = select(_Net(_FusedAttention), HFTConfig(guess_layout=True))
    assert "guessed: block 0: fused attention projection 'attn.Wqkv'" in mask.summary()


class _TwoMatrixAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.ModuleDict({"inp": nn.Linear(8, 24), "outp": nn.Linear(8, 8)})
        self.mlp = nn.ModuleDict({"up": nn.Linear(8, 16), "down": nn.Linear(16, 8)})


class _FusedGLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.ModuleDict({n: nn.Linear(8, 8) for n in "qkvo"})
        self.mlp = nn.ModuleDict({"wi": nn.Linear(8, 32), "wo": nn.Linear(16, 8)})


class _Unplaced(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.ModuleDict({n: nn.Linear(8, 8) for n in "qkvo"})
        self.mlp = nn.ModuleDict({"up": nn.Linear(8, 16), "down": nn.Linear(16, 8)})
        self.mystery = nn.Linear(8, 8)


class _Dominated(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.ModuleDict({n: nn.Linear(8, 8) for n in "qkvo"})
        self.mlp = nn.ModuleDict({"big": nn.Linear(8, 512), "small": nn.Linear(2, 2)})


@pytest.mark.parametrize(
    "block, expected",
    [
        (_TwoMatrixAttention, "attention 'attention' has two matrices"),
        (_FusedGLU, "'mlp.wi' projects to twice 'mlp.wo''s input"),
        (_Unplaced, "no rule places parameter 'mystery.weight'"),
        (_Dominated, "ffn is dominated by one matrix 'mlp.big'"),
    ],
)
def test_what_cannot_be_halved_exactly_is_refused_in_one_line(block, expected):
    with pytest.raises(HFTError) as caught:
        select(_Net(block), HFTConfig())
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_unplaced_parameters_train_as_other_when_guessing():
    with pytest.warns(UserWarning, match="guess_layout"):
        mask = select(_Net(_Unplaced), HFTConfig(guess_layout=True))
    assert {u.category for u in mask.partition.block_units() if "mystery" in u.name} == {"other"}


def test_a_ratio_the_strategy_cannot_meet_warns_with_what_it_trains():
    with pytest.warns(UserWarning, match=r"strategy 'layer' trains 0\.5000 .* ratio 0\.25"):
        select(tiny_model("llama", num_hidden_layers=2), HFTConfig(strategy="layer", ratio=0.25))


class _ListExperts(nn.Module):
    """Experts as a list of MLPs whose gate projection is called ``gate``, and a router."""

    def __init__(self):
        super().__init__()
        self.attention = nn.ModuleDict({n: nn.Linear(8, 8) for n in "qkvo"})
        expert = lambda: nn.ModuleDict(  # noqa: E731
            {"gate": nn.Linear(8, 16), "up": nn.Linear(8, 16), "down": nn.Linear(16, 8)}
        )
        self.moe = nn.ModuleDict(
            {"router": nn.Linear(8, 4), "experts": nn.ModuleList(expert() for _ in range(4))}
        )
        self.norm = nn.LayerNorm(8)


def test_a_list_of_experts_draws_each_matrix_across_all_experts():
    mask = select(_Net(_ListExperts), HFTConfig())
    units = _units(mask, 0)
    assert units["moe.router"].category == "router"
    for name in ("gate", "up", "down"):
        unit = units[f"moe.experts.*.{name}"]
        assert unit.category == "ffn" and len(unit.parts) == 8  # weight and bias of 4 experts


class _NormNamedMatrix(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.ModuleDict({n: nn.Linear(8, 8) for n in "qkvo"})
        self.mlp = nn.ModuleDict({"up": nn.Linear(8, 16), "down": nn.Linear(16, 8)})
        self.norm_proj = nn.Linear(8, 64)


def test_a_matrix_named_like_a_norm_is_refused():
    with pytest.raises(HFTError, match="'norm_proj' was read as a norm but holds"):
        select(_Net(_NormNamedMatrix), HFTConfig())


def test_an_attention_output_gate_is_no_router_in_an_moe_block():
    class GatedAttentionMoE(nn.Module):
        def __init__(self):
            super().__init__()
            names = ("q_proj", "k_proj", "v_proj", "o_proj", "output_gate")
            self.self_attn = nn.ModuleDict({n: nn.Linear(8, 8) for n in names})
            self.mlp = _ListExperts().moe

    mask = select(_Net(GatedAttentionMoE), HFTConfig())
    units = _units(mask, 0)
    assert units["self_attn.output_gate"].category == "attention"
    assert units["mlp.router"].category == "router"


def test_a_layout_may_put_modules_in_any_category_and_names_bad_ones():
    from hft_plugins.core.layouts import Layout

    with pytest.raises(HFTError, match="layout 'x': unknown category 'expert'; known: attention"):
        Layout("x", ("x",), categories={"mlp": "expert"})
