"""Layouts of families whose fused projections split in their own way.

Each splitter below follows the forward of one family's attention or MLP in
transformers (5.24): how the fused output is viewed and chunked into q, k, v (or gate,
up). Sizes are read from the module that owns the projection (the attributes its own
forward uses), not from the model config: multimodal and nested configs (Fuyu's
``text_config``, DBRX's ``attn_config``) keep them elsewhere, and per-layer modules
are what actually run. Every split must cover the projection's outputs exactly once;
where the sizes do not add up (a config this code does not know), the splitter raises
an HFTError rather than guess.

Layouts name only the fused projections (and their partner output projection); the
rest of each block is sorted by role (:mod:`hft_plugins.core.blocks`). Each is verified
functionally in ``tests/test_family_layouts.py``: scaling the unit named q by 2 and k
by 1/2 leaves the model's output unchanged, scaling q alone does not, and so on.
"""

from __future__ import annotations

from ..core.blocks import ExpertLayout
from ..core.errors import HFTError
from ..core.layouts import Fused, Layout, Ranges
from ..registry import hookimpl

__all__ = ["FAMILY_LAYOUTS"]


@hookimpl
def register_layouts(register):
    for layout in FAMILY_LAYOUTS:
        register(layout)


def _finish(where: str, out_features: int, units: dict[str, list[tuple[int, int]]]):
    """``units`` as ranges, after checking they cover ``range(out_features)`` exactly once."""
    end = 0
    for a, b in sorted(r for ranges in units.values() for r in ranges):
        if a != end or b <= a:  # a gap, an overlap or an empty range
            end = -1
            break
        end = b
    if end != out_features:
        raise HFTError(
            f"{where}: the split read from the module does not cover its {out_features} "
            "outputs exactly once; this configuration is not supported"
        )
    return {name: tuple(ranges) for name, ranges in units.items()}


def _attr(module, *names):
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int):
            return value
    raise HFTError(f"{type(module).__name__} has none of {', '.join(names)}")


def _per_head(path: str, *heads_attrs: str, roles=("q", "k", "v")):
    """[head 0: q k v | head 1: q k v | ...], each piece one head wide (GPT-NeoX style:
    the output viewed as [heads, 3, head_dim] or [heads, 3 * head_dim])."""

    def split(block, config, out_features) -> dict[str, Ranges]:
        heads = _attr(block.get_submodule(path), *heads_attrs)
        size, rest = divmod(out_features, len(roles) * heads)
        if rest:
            raise HFTError(f"{path}: {out_features} outputs are not {len(roles)} x {heads} heads")
        width = len(roles) * size
        units = {
            role: [(h * width + i * size, h * width + (i + 1) * size) for h in range(heads)]
            for i, role in enumerate(roles)
        }
        return _finish(path, out_features, units)

    return split


def _consecutive(path: str, sizes, roles=("q", "k", "v")):
    """[q | k | v] one after the other; ``sizes(module, out_features)`` gives their widths."""

    def split(block, config, out_features) -> dict[str, Ranges]:
        widths = sizes(block.get_submodule(path), out_features)
        units, start = {}, 0
        for role, width in zip(roles, widths, strict=True):
            units[role] = [(start, start + width)]
            start += width
        if start != out_features:
            raise HFTError(f"{path}: widths {widths} do not add up to {out_features} outputs")
        return _finish(path, out_features, units)

    return split


def _thirds(module, out_features):
    third, rest = divmod(out_features, 3)
    if rest:
        raise HFTError(f"{out_features} outputs are not three equal parts")
    return (third, third, third)


def _halves(module, out_features):
    half, rest = divmod(out_features, 2)
    if rest:
        raise HFTError(f"{out_features} outputs are not two equal parts")
    return (half, half)


def _falcon_qkv(block, config, out_features) -> dict[str, Ranges]:
    """FalconAttention._split_heads, all three variants, read from the attention module."""
    attn = block.self_attention
    heads, head_dim = attn.num_heads, attn.head_dim
    if attn.new_decoder_architecture:
        # view [kv groups, heads/kv + 2, head_dim]: per group its q heads, then k, then v
        kv = attn.num_kv_heads
        per_group = heads // kv
        width = (per_group + 2) * head_dim
        units = {
            "q": [(g * width, g * width + per_group * head_dim) for g in range(kv)],
            "k": [
                (g * width + per_group * head_dim, g * width + (per_group + 1) * head_dim)
                for g in range(kv)
            ],
            "v": [(g * width + (per_group + 1) * head_dim, (g + 1) * width) for g in range(kv)],
        }
    elif not attn.multi_query:
        # view [heads, 3, head_dim]
        return _per_head("self_attention", "num_heads")(block, config, out_features)
    else:
        # view [heads + 2, head_dim]: all q heads, then one k head, then one v head
        q = heads * head_dim
        units = {"q": [(0, q)], "k": [(q, q + head_dim)], "v": [(q + head_dim, q + 2 * head_dim)]}
    return _finish("self_attention.query_key_value", out_features, units)


def _bigcode_qkv(block, config, out_features) -> dict[str, Ranges]:
    """GPTBigCodeAttention (self-attention): multi-query splits [q | k | v] by
    (embed_dim, kv_dim, kv_dim); multi-head views [heads, 3 * head_dim] per head."""
    attn = block.attn
    if attn.multi_query:
        widths = (attn.embed_dim, attn.kv_dim, attn.kv_dim)
        return _consecutive("attn", lambda m, n: widths)(block, config, out_features)
    return _per_head("attn", "num_heads")(block, config, out_features)


def _codegen_qkv(block, config, out_features) -> dict[str, Ranges]:
    """CodeGenAttention: the output viewed as [mp_num, 3 * local_dim], each group split
    into query, VALUE, key (in that order)."""
    attn = block.attn
    groups = attn.mp_num
    local, rest = divmod(out_features, 3 * groups)
    if rest:
        raise HFTError(f"attn.qkv_proj: {out_features} outputs are not 3 x {groups} groups")
    width = 3 * local
    units = {
        role: [(g * width + i * local, g * width + (i + 1) * local) for g in range(groups)]
        for role, i in (("q", 0), ("k", 2), ("v", 1))
    }
    return _finish("attn.qkv_proj", out_features, units)


def _dbrx_qkv(module, out_features):
    kv = module.num_key_value_heads * module.head_dim
    return (module.num_heads * module.head_dim, kv, kv)


def _ergo_qkv(module, out_features):
    """ErgoAttention views the output as [heads + 2 kv heads, head_dim]: q heads, k, v."""
    heads, kv = module.config.num_attention_heads, module.config.num_key_value_heads
    return (heads * module.head_dim, kv * module.head_dim, kv * module.head_dim)


def _whole(name: str):
    """One logical matrix that the role sorter mistakes for a fused one by its name."""

    def split(block, config, out_features) -> dict[str, Ranges]:
        return {name: ((0, out_features),)}

    return split


_GATE_UP = Fused(_consecutive("", _halves, ("gate", "up")))

FAMILY_LAYOUTS: tuple[Layout, ...] = (
    # q k v per head, as GPT-NeoX
    Layout(
        "bloom",
        ("bloom",),
        attention=("self_attention.query_key_value", "self_attention.dense"),
        fused={"self_attention.query_key_value": Fused(_per_head("self_attention", "num_heads"))},
    ),
    Layout(
        "falcon",
        ("falcon",),
        attention=("self_attention.query_key_value", "self_attention.dense"),
        fused={"self_attention.query_key_value": Fused(_falcon_qkv)},
    ),
    Layout(
        "persimmon",
        ("persimmon", "fuyu"),
        attention=("self_attn.query_key_value", "self_attn.dense"),
        fused={"self_attn.query_key_value": Fused(_per_head("self_attn", "num_heads"))},
    ),
    Layout(
        "gpt_neox_japanese",
        ("gpt_neox_japanese",),
        attention=("attention.query_key_value", "attention.dense"),
        fused={"attention.query_key_value": Fused(_per_head("attention", "num_attention_heads"))},
    ),
    Layout(
        "gpt_bigcode",
        ("gpt_bigcode",),
        attention=("attn.c_attn", "attn.c_proj"),
        fused={"attn.c_attn": Fused(_bigcode_qkv)},
    ),
    Layout(
        "codegen",
        ("codegen",),
        attention=("attn.qkv_proj", "attn.out_proj"),
        fused={"attn.qkv_proj": Fused(_codegen_qkv)},
    ),
    # q | k | v one after the other
    Layout(
        "mpt",
        ("mpt",),
        attention=("attn.Wqkv", "attn.out_proj"),
        fused={"attn.Wqkv": Fused(_consecutive("attn", _thirds))},
    ),
    Layout(
        "dbrx",
        ("dbrx",),
        attention=("norm_attn_norm.attn.Wqkv", "norm_attn_norm.attn.out_proj"),
        fused={"norm_attn_norm.attn.Wqkv": Fused(_consecutive("norm_attn_norm.attn", _dbrx_qkv))},
    ),
    # Ergo: q | k | v by heads; its residual gates mix a branch into the residual stream
    # per hidden dimension (scales, though their names say attention and feedforward)
    Layout(
        "ergo",
        ("ergo",),
        attention=("self_attn.qkv_proj", "self_attn.o_proj"),
        fused={"self_attn.qkv_proj": Fused(_consecutive("self_attn", _ergo_qkv))},
        categories={"attention_residual_gate": "scale", "feedforward_residual_gate": "scale"},
    ),
    Layout(
        "openai-gpt",
        ("openai-gpt",),
        attention=("attn.c_attn", "attn.c_proj"),
        fused={"attn.c_attn": Fused(_consecutive("attn", _thirds), weight_out_dim=1)},
    ),
    Layout(
        "got_ocr2_vision",
        ("got_ocr2", "got_ocr2_vision"),
        attention=("attn.qkv", "attn.proj"),
        fused={"attn.qkv": Fused(_consecutive("attn", _thirds))},
    ),
    # JetMoE: q and o are attention experts (one unit each across experts), k | v fused;
    # its FFN experts' input_linear [experts, 2F, hidden] is gate | up (chunk(2))
    Layout(
        "jetmoe",
        ("jetmoe",),
        attention=(
            "self_attention.kv_proj",
            "self_attention.experts.input_linear",
            "self_attention.experts.output_linear",
        ),
        ffn=("mlp.input_linear",),
        fused={
            "self_attention.kv_proj": Fused(_consecutive("", _halves, ("k", "v"))),
            "mlp.input_linear": Fused(_consecutive("", _halves, ("gate", "up")), weight_out_dim=1),
        },
    ),
    # MiniMax's lightning (linear) attention layers: [heads, 3 * head_dim] per head after
    # the activation; its sigmoid output gate is part of attention, not a router
    Layout(
        "minimax_lightning",
        ("minimax",),
        attention=("self_attn.qkv_proj", "self_attn.out_proj", "self_attn.output_gate"),
        fused={"self_attn.qkv_proj": Fused(_per_head("self_attn", "num_attention_heads"))},
    ),
    # DeepSeek-V4: kv_proj is ONE matrix read as both key and value (K = V), and the
    # compressors' kv_proj one matrix per compressor (the CSA one produces the overlapping
    # series Ca | Cb that the reference keeps in one Linear); none of them is a q/k/v fusion
    Layout(
        "deepseek_v4_csa",
        ("deepseek_v4",),
        attention=(
            "self_attn.kv_proj",
            "self_attn.compressor.kv_proj",
            "self_attn.compressor.indexer.kv_proj",
        ),
        fused={
            "self_attn.kv_proj": Fused(_whole("kv")),
            "self_attn.compressor.kv_proj": Fused(_whole("kv")),
            "self_attn.compressor.indexer.kv_proj": Fused(_whole("kv")),
        },
    ),
    Layout(
        "deepseek_v4_hca",
        ("deepseek_v4",),
        attention=("self_attn.kv_proj", "self_attn.compressor.kv_proj"),
        fused={
            "self_attn.kv_proj": Fused(_whole("kv")),
            "self_attn.compressor.kv_proj": Fused(_whole("kv")),
        },
    ),
    Layout(
        "deepseek_v4",
        ("deepseek_v4",),
        attention=("self_attn.kv_proj",),
        fused={"self_attn.kv_proj": Fused(_whole("kv"))},
    ),
    # dense GLU feed-forwards with gate | up fused (chunk(2): gate first)
    Layout(
        "glm",
        (
            "glm",
            "glm4",
            "glm4v",
            "glm4v_text",
            "glm_ocr",
            "glm_ocr_text",
            "glm_image",
            "glm_image_text",
        ),
        ffn=("mlp.gate_up_proj", "mlp.down_proj"),
        fused={"mlp.gate_up_proj": _GATE_UP},
    ),
    # Its MoE layers' shared expert is such a GLU too, in the shared_ffn category as the
    # role sorter puts other families' shared experts.
    Layout(
        "minimax_m3_vl",
        ("minimax_m3_vl", "minimax_m3_vl_text"),
        fused={"mlp.shared_experts.gate_up_proj": _GATE_UP},
        categories={
            "mlp.shared_experts.gate_up_proj": "shared_ffn",
            "mlp.shared_experts.down_proj": "shared_ffn",
        },
    ),
    Layout(
        "minimax_m3_vl_dense",
        ("minimax_m3_vl", "minimax_m3_vl_text"),
        ffn=("mlp.gate_up_proj", "mlp.down_proj"),
        fused={"mlp.gate_up_proj": _GATE_UP},
    ),
    # GLU feed-forwards whose first projection is gate | up (chunk(2) or view(..., 2, -1)):
    # Granite's shared MLP, Moshi's gating MLP, ModernBERT's Wi (act(input) * gate)
    Layout(
        "granitemoe_shared_mlp",
        ("granitemoehybrid", "granitemoeshared"),
        fused={"shared_mlp.input_linear": _GATE_UP},
        categories={
            "shared_mlp.input_linear": "shared_ffn",
            "shared_mlp.output_linear": "shared_ffn",
        },
    ),
    Layout("moshi", ("moshi",), ffn=("mlp.fc1", "mlp.fc2"), fused={"mlp.fc1": _GATE_UP}),
    Layout(
        "modernbert_decoder",
        ("modernbert-decoder",),
        ffn=("mlp.Wi", "mlp.Wo"),
        fused={"mlp.Wi": _GATE_UP},
    ),
    # Zamba's hybrid layers project the shared transformer's output with `linear` into the
    # mamba layer's input: a matrix of that layer's sequence mixing
    Layout("zamba_hybrid", ("zamba",), categories={"linear": "mixer"}),
    # Zamba2's shared transformer: gate_up_proj is gate | up (chunk(2) after its adapter)
    Layout(
        "zamba2_hybrid",
        ("zamba2",),
        ffn=("shared_transformer.feed_forward.gate_up_proj",),
        fused={"shared_transformer.feed_forward.gate_up_proj": _GATE_UP},
        categories={"linear": "mixer"},
    ),
    # routed experts whose 3-D tensors carry no has_gate/is_transposed/is_concatenated
    Layout(
        "llama4",
        ("llama4", "llama4_text"),
        # Llama4TextExperts.gate_up_proj is [experts, hidden, 2F]: bmm(x, w), chunk(2)
        experts={"feed_forward.experts": ExpertLayout(True, transposed=True, concatenated=True)},
    ),
    Layout(
        "longcat_flash",
        ("longcat_flash",),
        # LongcatFlashExperts.gate_up_proj is [experts + zero experts, 2F, hidden]:
        # F.linear(x, w[e]).chunk(2)
        experts={"mlp.experts": ExpertLayout(True, transposed=False, concatenated=True)},
    ),
)
