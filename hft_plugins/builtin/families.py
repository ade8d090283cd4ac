"""The built-in layouts: one :class:`Layout` per family the role sorter cannot read alone.

A plugin module like any third party's (loaded by name from
``hft_plugins.registry.DEFAULT_PLUGINS``). The families of the paper are named in full
(attention, feed-forward and norm modules); the others name only what the role sorter
(:mod:`hft_plugins.core.blocks`) cannot tell: their fused projections (and partner
output projection), their experts' storage, the categories their own names hide, and
what the sorter must be taught to read their blocks. How each fused projection splits
is in :mod:`hft_plugins.builtin.splits`. Each split is verified functionally by the
project's tests: scaling the unit named q by 2 and k by 1/2 leaves the model's output
unchanged, scaling q alone does not, and so on.
"""

from __future__ import annotations

from ..core.layouts import ExpertStorage, Fused, Layout
from ..registry import hookimpl
from .splits import (
    bigcode_qkv,
    codegen_qkv,
    consecutive,
    dbrx_qkv,
    ergo_qkv,
    falcon_qkv,
    halves,
    mamba2_in_proj,
    neox_qkv,
    per_head,
    phi3_qkv,
    thirds,
    whole,
)

__all__ = ["FAMILY_LAYOUTS"]


@hookimpl
def register_layouts(register):
    for layout in FAMILY_LAYOUTS:
        register(layout)


# a GLU feed-forward's first projection, gate | up (chunk(2): gate first)
_GATE_UP = Fused(consecutive("", halves, ("gate", "up")))

_LLAMA_LIKE = dict(
    attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    ffn=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
)

_PAPER_FAMILIES: tuple[Layout, ...] = (
    Layout(
        "llama",
        ("llama", "mistral", "qwen2", "gemma", "mixtral_dense"),
        norms=("input_layernorm", "post_attention_layernorm"),
        **_LLAMA_LIKE,
    ),
    Layout(
        "qwen3",
        ("qwen3",),
        norms=(
            "input_layernorm",
            "post_attention_layernorm",
            "self_attn.q_norm",
            "self_attn.k_norm",
        ),
        **_LLAMA_LIKE,
    ),
    Layout(
        "gemma2",
        ("gemma2",),
        norms=(
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ),
        **_LLAMA_LIKE,
    ),
    Layout(
        "olmo2",
        ("olmo2",),
        norms=(
            "post_attention_layernorm",
            "post_feedforward_layernorm",
            "self_attn.q_norm",
            "self_attn.k_norm",
        ),
        **_LLAMA_LIKE,
    ),
    Layout(
        "phi3",
        ("phi3",),
        attention=("self_attn.qkv_proj", "self_attn.o_proj"),
        ffn=("mlp.gate_up_proj", "mlp.down_proj"),
        norms=("input_layernorm", "post_attention_layernorm"),
        fused={
            "self_attn.qkv_proj": Fused(phi3_qkv),
            "mlp.gate_up_proj": _GATE_UP,
        },
    ),
    Layout(
        "gpt2",
        ("gpt2",),
        attention=("attn.c_attn", "attn.c_proj"),
        ffn=("mlp.c_fc", "mlp.c_proj"),
        norms=("ln_1", "ln_2"),
        fused={"attn.c_attn": Fused(consecutive("attn", thirds), weight_out_dim=1)},
    ),
    Layout(
        "gpt_neox",
        ("gpt_neox",),
        attention=("attention.query_key_value", "attention.dense"),
        ffn=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
        norms=("input_layernorm", "post_attention_layernorm"),
        fused={"attention.query_key_value": Fused(neox_qkv)},
    ),
    Layout(
        "opt",
        ("opt",),
        attention=(
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
        ),
        ffn=("fc1", "fc2"),
        norms=("self_attn_layer_norm", "final_layer_norm"),
    ),
    Layout(
        "bert",
        ("bert", "roberta"),
        attention=(
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ),
        ffn=("intermediate.dense", "output.dense"),
        norms=("attention.output.LayerNorm", "output.LayerNorm"),
    ),
)

_OTHER_FAMILIES: tuple[Layout, ...] = (
    # q k v per head, as GPT-NeoX
    Layout(
        "bloom",
        ("bloom",),
        attention=("self_attention.query_key_value", "self_attention.dense"),
        fused={"self_attention.query_key_value": Fused(per_head("self_attention", "num_heads"))},
    ),
    Layout(
        "falcon",
        ("falcon",),
        attention=("self_attention.query_key_value", "self_attention.dense"),
        fused={"self_attention.query_key_value": Fused(falcon_qkv)},
    ),
    Layout(
        "persimmon",
        ("persimmon", "fuyu"),
        attention=("self_attn.query_key_value", "self_attn.dense"),
        fused={"self_attn.query_key_value": Fused(per_head("self_attn", "num_heads"))},
    ),
    Layout(
        "gpt_neox_japanese",
        ("gpt_neox_japanese",),
        attention=("attention.query_key_value", "attention.dense"),
        fused={"attention.query_key_value": Fused(per_head("attention", "num_attention_heads"))},
    ),
    Layout(
        "gpt_bigcode",
        ("gpt_bigcode",),
        attention=("attn.c_attn", "attn.c_proj"),
        fused={"attn.c_attn": Fused(bigcode_qkv)},
    ),
    Layout(
        "codegen",
        ("codegen",),
        attention=("attn.qkv_proj", "attn.out_proj"),
        fused={"attn.qkv_proj": Fused(codegen_qkv)},
    ),
    # q | k | v one after the other
    Layout(
        "mpt",
        ("mpt",),
        attention=("attn.Wqkv", "attn.out_proj"),
        fused={"attn.Wqkv": Fused(consecutive("attn", thirds))},
    ),
    Layout(
        "dbrx",
        ("dbrx",),
        attention=("norm_attn_norm.attn.Wqkv", "norm_attn_norm.attn.out_proj"),
        fused={"norm_attn_norm.attn.Wqkv": Fused(consecutive("norm_attn_norm.attn", dbrx_qkv))},
    ),
    # Ergo: q | k | v by heads; its residual gates mix a branch into the residual stream
    # per hidden dimension (scales, though their names say attention and feedforward)
    Layout(
        "ergo",
        ("ergo",),
        attention=("self_attn.qkv_proj", "self_attn.o_proj"),
        fused={"self_attn.qkv_proj": Fused(consecutive("self_attn", ergo_qkv))},
        categories={"attention_residual_gate": "scale", "feedforward_residual_gate": "scale"},
    ),
    Layout(
        "openai-gpt",
        ("openai-gpt",),
        attention=("attn.c_attn", "attn.c_proj"),
        fused={"attn.c_attn": Fused(consecutive("attn", thirds), weight_out_dim=1)},
    ),
    Layout(
        "got_ocr2_vision",
        ("got_ocr2", "got_ocr2_vision"),
        attention=("attn.qkv", "attn.proj"),
        fused={"attn.qkv": Fused(consecutive("attn", thirds))},
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
            "self_attention.kv_proj": Fused(consecutive("", halves, ("k", "v"))),
            "mlp.input_linear": Fused(consecutive("", halves, ("gate", "up")), weight_out_dim=1),
        },
    ),
    # MiniMax's lightning (linear) attention layers: [heads, 3 * head_dim] per head after
    # the activation; its sigmoid output gate is part of attention, not a router
    Layout(
        "minimax_lightning",
        ("minimax",),
        attention=("self_attn.qkv_proj", "self_attn.out_proj", "self_attn.output_gate"),
        fused={"self_attn.qkv_proj": Fused(per_head("self_attn", "num_attention_heads"))},
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
            "self_attn.kv_proj": Fused(whole("kv")),
            "self_attn.compressor.kv_proj": Fused(whole("kv")),
            "self_attn.compressor.indexer.kv_proj": Fused(whole("kv")),
        },
    ),
    Layout(
        "deepseek_v4_hca",
        ("deepseek_v4",),
        attention=("self_attn.kv_proj", "self_attn.compressor.kv_proj"),
        fused={
            "self_attn.kv_proj": Fused(whole("kv")),
            "self_attn.compressor.kv_proj": Fused(whole("kv")),
        },
    ),
    Layout(
        "deepseek_v4",
        ("deepseek_v4",),
        attention=("self_attn.kv_proj",),
        fused={"self_attn.kv_proj": Fused(whole("kv"))},
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
        experts={"feed_forward.experts": ExpertStorage(True, transposed=True, concatenated=True)},
    ),
    Layout(
        "longcat_flash",
        ("longcat_flash",),
        # LongcatFlashExperts.gate_up_proj is [experts + zero experts, 2F, hidden]:
        # F.linear(x, w[e]).chunk(2)
        experts={"mlp.experts": ExpertStorage(True, transposed=False, concatenated=True)},
    ),
)

# What the role sorter must be taught: module names that tell a category, and leaf
# projections that split by the sizes of the module holding them. These layouts name no
# modules of a block, so they are never chosen for one; they teach the sorter for every
# block of their model types.
_SORTER_LESSONS: tuple[Layout, ...] = (
    # Gemma 3n: AltUp routes between the residual streams; LAuReL is a low-rank residual
    # branch, of the feed-forward kind
    Layout(
        "gemma3n_roles",
        ("gemma3n", "gemma3n_text"),
        sorter_roles={"altup": "router", "laurel": "ffn"},
    ),
    # Mamba-2 mixers, and the hybrids built on them
    Layout(
        "mamba2_in_proj",
        ("mamba2", "bamba", "falcon_h1", "granitemoehybrid", "nemotron_h", "zamba2"),
        sorter_splits={"in_proj": mamba2_in_proj},
    ),
)

# the order layouts are tried in: the paper's families first
FAMILY_LAYOUTS: tuple[Layout, ...] = _PAPER_FAMILIES + _OTHER_FAMILIES + _SORTER_LESSONS
