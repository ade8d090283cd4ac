"""The built-in layouts: the families of the paper and their close relatives.

A plugin module like any third party's (loaded by name from
``hft_plugins.registry.DEFAULT_PLUGINS``): each :class:`Layout` names a family's
block-relative attention, feed-forward and norm modules and how its fused projections
split. Families whose fused projections split in their own way are in
:mod:`hft_plugins.builtin.families`.
"""

from __future__ import annotations

from ..core.layouts import Fused, Layout, Splitter
from ..registry import hookimpl


@hookimpl
def register_layouts(register):
    for layout in BUILTIN_LAYOUTS:
        register(layout)


# ---- fused projections -------------------------------------------------------


def _even(names: tuple[str, ...]) -> Splitter:
    def split(block, config, out_features):
        size = out_features // len(names)
        return {n: ((i * size, (i + 1) * size),) for i, n in enumerate(names)}

    return split


def _phi3_qkv(block, config, out_features):
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    q = heads * head_dim
    kv = (out_features - q) // 2
    return {"q": ((0, q),), "k": ((q, q + kv),), "v": ((q + kv, out_features),)}


def _neox_qkv(block, config, out_features):
    # GPT-NeoX views the output as [heads, 3 * head_size] and chunks the last dim.
    heads = config.num_attention_heads
    size = out_features // (3 * heads)
    return {
        name: tuple((h * 3 * size + i * size, h * 3 * size + (i + 1) * size) for h in range(heads))
        for i, name in enumerate(("q", "k", "v"))
    }


_LLAMA_LIKE = dict(
    attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    ffn=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
)

BUILTIN_LAYOUTS: tuple[Layout, ...] = (
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
            "self_attn.qkv_proj": Fused(_phi3_qkv),
            "mlp.gate_up_proj": Fused(_even(("gate", "up"))),
        },
    ),
    Layout(
        "gpt2",
        ("gpt2",),
        attention=("attn.c_attn", "attn.c_proj"),
        ffn=("mlp.c_fc", "mlp.c_proj"),
        norms=("ln_1", "ln_2"),
        fused={"attn.c_attn": Fused(_even(("q", "k", "v")), weight_out_dim=1)},
    ),
    Layout(
        "gpt_neox",
        ("gpt_neox",),
        attention=("attention.query_key_value", "attention.dense"),
        ffn=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
        norms=("input_layernorm", "post_attention_layernorm"),
        fused={"attention.query_key_value": Fused(_neox_qkv)},
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
