"""Selection invariants for random models, ratios, seeds and stages (hypothesis).

Two kinds of model: tiny Llama models of random shape (the registered layout)
and plain ``nn.Module`` stacks that only the structural fallback resolves.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from hft_plugins import HFTConfig, HFTMask, select
from hft_plugins.testing import FAMILIES, tiny_model

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Attention(nn.Module):
    def __init__(self, width: int, kv_width: int):
        super().__init__()
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, kv_width, bias=False)
        self.v = nn.Linear(width, kv_width, bias=False)
        self.o = nn.Linear(width, width, bias=False)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)


class Block(nn.Module):
    def __init__(self, width: int, kv_width: int, hidden: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, kv_width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, hidden)


class Stack(nn.Module):
    """A model no layout knows: the structural fallback has to sort it."""

    def __init__(self, blocks: int, width: int, kv_width: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(17, width)
        self.layers = nn.ModuleList(Block(width, kv_width, hidden) for _ in range(blocks))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 17, bias=False)


@st.composite
def llama_models(draw):
    heads = draw(st.sampled_from([2, 4]))
    kv_heads = draw(st.sampled_from([h for h in (1, 2, 4) if heads % h == 0]))
    head_dim = draw(st.sampled_from([4, 8]))
    return tiny_model(
        "llama",
        seed=draw(st.integers(0, 3)),
        num_hidden_layers=draw(st.integers(1, 6)),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=heads * head_dim,
        intermediate_size=draw(st.sampled_from([8, 24, 40])),
    )


@st.composite
def stacks(draw):
    width = draw(st.sampled_from([4, 8, 12]))
    return Stack(
        blocks=draw(st.integers(1, 7)),
        width=width,
        kv_width=draw(st.sampled_from([width // 2, width])),
        hidden=draw(st.sampled_from([4, 8, 20])),
    )


@st.composite
def family_models(draw):
    """Every built-in family, with a random number of blocks (fused q/k/v included)."""
    family = draw(st.sampled_from(FAMILIES))
    blocks = draw(st.integers(1, 5))
    depth = {"n_layer": blocks} if family == "gpt2" else {"num_hidden_layers": blocks}
    return tiny_model(family, seed=draw(st.integers(0, 3)), **depth)


models = st.one_of(llama_models(), stacks())
any_models = st.one_of(llama_models(), stacks(), family_models())
ratios = st.floats(0.05, 0.95, allow_nan=False)
seeds = st.integers(0, 2**31 - 1)
stages = st.integers(0, 50)


def _per_block(mask: HFTMask) -> dict[str, dict[int, tuple[int, int]]]:
    """category -> block -> (trained matrices, all matrices)."""
    counts: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for unit in mask.partition.block_units():
        cell = counts[unit.category][unit.block]
        cell[1] += 1
        cell[0] += unit.key in mask.trainable
    return {c: {b: tuple(v) for b, v in blocks.items()} for c, blocks in counts.items()}


@SETTINGS
@given(model=models, seed=seeds, stage=stages)
def test_paper_rule_per_block_at_half(model, seed, stage):
    """2/4 attention and 1/2 norms in every block; 2/3 FFN in half the blocks, 1/3 in the rest."""
    mask = select(model, HFTConfig(seed=seed, stage=stage))
    per_block = _per_block(mask)
    blocks = mask.partition.num_blocks
    assert set(per_block["attention"].values()) == {(2, 4)}
    assert set(per_block["norm"].values()) == {(1, 2)}
    ffn = sorted(per_block["ffn"].values())
    assert {n for _, n in ffn} == {3}
    assert {t for t, _ in ffn} <= {1, 2}
    assert sum(t == 2 for t, _ in ffn) == math.floor(blocks / 2 + 0.5)


@SETTINGS
@given(model=models, seed=seeds, stage=stages)
def test_half_is_exact_with_an_even_number_of_blocks(model, seed, stage):
    """Llama-shaped blocks (GQA included) at 0.5: exactly half of every category."""
    mask = select(model, HFTConfig(seed=seed, stage=stage))
    fractions = mask.fractions()
    assert fractions["attention"][0] * 2 == fractions["attention"][1]
    assert fractions["norm"][0] * 2 == fractions["norm"][1]
    if mask.partition.num_blocks % 2 == 0:
        assert fractions["ffn"][0] * 2 == fractions["ffn"][1]
        assert fractions["blocks"][0] * 2 == fractions["blocks"][1]


@SETTINGS
@given(model=any_models, ratio=ratios, seed=seeds, stage=stages)
def test_category_rule_at_any_ratio(model, ratio, seed, stage):
    """Each block trains floor(r*n) or one more of a category's n matrices; over the blocks
    the total is round(r*n*blocks) (blocks of other kinds, with another n, draw their own
    and pass on what their rounding left, so the category's total stays within one)."""
    mask = select(model, HFTConfig(ratio=ratio, seed=seed, stage=stage))
    for blocks in _per_block(mask).values():
        for trained_of_n in blocks.values():
            trained, n = trained_of_n
            assert trained in {math.floor(ratio * n), min(math.floor(ratio * n) + 1, n)}
        sizes = {n for _, n in blocks.values()}
        trained = [t for t, _ in blocks.values()]
        if len(sizes) == 1:
            (n,) = sizes
            low = math.floor(ratio * n)
            wanted = math.floor(ratio * n * len(blocks) + 0.5)
            top = min(low + 1, n) * len(blocks)
            assert sum(trained) == min(max(wanted, low * len(blocks)), top)
        else:
            assert abs(sum(trained) - ratio * sum(n for _, n in blocks.values())) <= len(sizes)


@SETTINGS
@given(model=any_models, ratio=ratios, seed=seeds, stage=stages)
def test_layer_rule_trains_whole_blocks(model, ratio, seed, stage):
    mask = select(model, HFTConfig(strategy="layer", ratio=ratio, seed=seed, stage=stage))
    state: dict[int, set[bool]] = defaultdict(set)
    for unit in mask.partition.block_units():
        state[unit.block].add(unit.key in mask.trainable)
    assert all(len(s) == 1 for s in state.values())
    trained = [b for b, s in state.items() if True in s]
    blocks = mask.partition.num_blocks
    assert len(trained) == min(max(math.floor(ratio * blocks + 0.5), 1), blocks)


@SETTINGS
@given(model=any_models, ratio=ratios, seed=seeds, stage=stages)
def test_matrix_rule_is_near_the_ratio(model, ratio, seed, stage):
    """The greedy draw stops within one matrix of the target size."""
    mask = select(model, HFTConfig(strategy="matrix", ratio=ratio, seed=seed, stage=stage))
    done, total = mask.fractions()["blocks"]
    largest = max(u.numel for u in mask.partition.block_units())
    assert abs(done - ratio * total) <= largest


@SETTINGS
@given(
    model=any_models,
    strategy=st.sampled_from(["category", "layer", "matrix"]),
    ratio=ratios,
    seed=seeds,
    stage=stages,
)
def test_same_seed_and_stage_draw_the_same_mask(model, strategy, ratio, seed, stage):
    config = HFTConfig(strategy=strategy, ratio=ratio, seed=seed, stage=stage)
    first, second = select(model, config), select(model, config)
    assert first == second
    assert first.params() == second.params()


@SETTINGS
@given(model=any_models, seed=seeds)
def test_outer_parameters_stay_trainable_and_out_of_the_draw(model, seed):
    mask = select(model, HFTConfig(seed=seed))
    outer = [u for u in mask.partition.units if u.block is None]
    assert outer and all(u.key in mask.trainable for u in outer)
    frozen_outer = select(
        model,
        HFTConfig(seed=seed, train_embeddings=False, train_head=False, train_final_norm=False),
    )
    assert not any(u.key in frozen_outer.trainable for u in outer)
    assert frozen_outer.trainable == mask.trainable - {u.key for u in outer}


@SETTINGS
@given(
    model=any_models,
    strategy=st.sampled_from(["category", "layer", "matrix"]),
    ratio=ratios,
    seed=seeds,
    stage=stages,
)
def test_json_round_trip_is_equal(model, strategy, ratio, seed, stage):
    mask = select(model, HFTConfig(strategy=strategy, ratio=ratio, seed=seed, stage=stage))
    again = HFTMask.from_json(json.loads(json.dumps(mask.to_json())))
    assert again == mask
    assert again.params() == mask.params()
    assert again.fractions() == mask.fractions()
    assert again.summary() == mask.summary()
    assert again.to_json() == mask.to_json()


@SETTINGS
@given(model=any_models, seed=seeds, stage=stages)
def test_apply_freezes_exactly_the_unselected_parameters(model, seed, stage):
    mask = select(model, HFTConfig(seed=seed, stage=stage))
    mask.apply(model)
    plan = mask.params()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(plan)
    trained = sum(
        p.numel() if plan[n] is None else p.numel() // p.shape[plan[n].dim] * plan[n].size
        for n, p in model.named_parameters()
        if n in plan
    )
    assert trained == mask.trainable_numel  # fused tensors count their trainable slices


@pytest.mark.parametrize("blocks", [2, 4, 8])
def test_stages_draw_different_halves(blocks):
    """Across many stages the draw is not stuck: several distinct masks appear."""
    torch.manual_seed(0)
    model = Stack(blocks, 8, 8, 8)
    masks = {select(model, HFTConfig(stage=s)).trainable for s in range(8)}
    assert len(masks) > 1
