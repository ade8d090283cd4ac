"""How the built-in families' fused projections split into q, k, v (or gate, up).

Each splitter follows the forward of one family's attention, MLP or mixer in
transformers (5.24): how the fused output is viewed and chunked. Sizes are read from
the module that owns the projection (the attributes its own forward uses), not from the
model config: multimodal and nested configs (Fuyu's ``text_config``, DBRX's
``attn_config``) keep them elsewhere, and per-layer modules are what actually run. Every
split must cover the projection's outputs exactly once; where the sizes do not add up (a
config this code does not know), the splitter raises an HFTError rather than guess.
The layouts that use them are in :mod:`hft_plugins.builtin.families`.
"""

from __future__ import annotations

from ..core.errors import HFTError
from ..core.layouts import Ranges

__all__ = [
    "bigcode_qkv",
    "codegen_qkv",
    "consecutive",
    "dbrx_qkv",
    "ergo_qkv",
    "exact_cover",
    "falcon_qkv",
    "halves",
    "mamba2_in_proj",
    "neox_qkv",
    "per_head",
    "phi3_qkv",
    "thirds",
    "whole",
]


def exact_cover(where: str, out_features: int, units: dict[str, list[tuple[int, int]]]):
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


def _heads_of(where: str, out_features: int, heads: int, roles) -> dict[str, Ranges]:
    """[head 0: q k v | head 1: q k v | ...], each piece one head wide."""
    size, rest = divmod(out_features, len(roles) * heads)
    if rest:
        raise HFTError(f"{where}: {out_features} outputs are not {len(roles)} x {heads} heads")
    width = len(roles) * size
    units = {
        role: [(h * width + i * size, h * width + (i + 1) * size) for h in range(heads)]
        for i, role in enumerate(roles)
    }
    return exact_cover(where, out_features, units)


def per_head(path: str, *heads_attrs: str, roles=("q", "k", "v")):
    """Per head, q k v (the output viewed as [heads, 3, head_dim] or [heads, 3 * head_dim]),
    the number of heads read from the first of ``heads_attrs`` the module has."""

    def split(block, config, out_features) -> dict[str, Ranges]:
        heads = _attr(block.get_submodule(path), *heads_attrs)
        return _heads_of(path, out_features, heads, roles)

    return split


def neox_qkv(block, config, out_features) -> dict[str, Ranges]:
    """GPTNeoXAttention views the output as [heads, 3 * head_size]: per head, q k v."""
    heads, rest = divmod(out_features, 3 * _attr(block.attention, "head_size"))
    if rest:
        raise HFTError(f"attention: {out_features} outputs are not a multiple of 3 heads")
    return _heads_of("attention", out_features, heads, ("q", "k", "v"))


def consecutive(path: str, sizes, roles=("q", "k", "v")):
    """[q | k | v] one after the other; ``sizes(module, out_features)`` gives their widths."""

    def split(block, config, out_features) -> dict[str, Ranges]:
        widths = sizes(block.get_submodule(path), out_features)
        units, start = {}, 0
        for role, width in zip(roles, widths, strict=True):
            units[role] = [(start, start + width)]
            start += width
        if start != out_features:
            raise HFTError(f"{path}: widths {widths} do not add up to {out_features} outputs")
        return exact_cover(path, out_features, units)

    return split


def thirds(module, out_features):
    third, rest = divmod(out_features, 3)
    if rest:
        raise HFTError(f"{out_features} outputs are not three equal parts")
    return (third, third, third)


def halves(module, out_features):
    half, rest = divmod(out_features, 2)
    if rest:
        raise HFTError(f"{out_features} outputs are not two equal parts")
    return (half, half)


def phi3_qkv(block, config, out_features) -> dict[str, Ranges]:
    """Phi3Attention: [q | k | v], q as wide as the config's heads."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    q = heads * head_dim
    kv = (out_features - q) // 2
    return {"q": ((0, q),), "k": ((q, q + kv),), "v": ((q + kv, out_features),)}


def falcon_qkv(block, config, out_features) -> dict[str, Ranges]:
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
        return per_head("self_attention", "num_heads")(block, config, out_features)
    else:
        # view [heads + 2, head_dim]: all q heads, then one k head, then one v head
        q = heads * head_dim
        units = {"q": [(0, q)], "k": [(q, q + head_dim)], "v": [(q + head_dim, q + 2 * head_dim)]}
    return exact_cover("self_attention.query_key_value", out_features, units)


def bigcode_qkv(block, config, out_features) -> dict[str, Ranges]:
    """GPTBigCodeAttention (self-attention): multi-query splits [q | k | v] by
    (embed_dim, kv_dim, kv_dim); multi-head views [heads, 3 * head_dim] per head."""
    attn = block.attn
    if attn.multi_query:
        widths = (attn.embed_dim, attn.kv_dim, attn.kv_dim)
        return consecutive("attn", lambda m, n: widths)(block, config, out_features)
    return per_head("attn", "num_heads")(block, config, out_features)


def codegen_qkv(block, config, out_features) -> dict[str, Ranges]:
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
    return exact_cover("attn.qkv_proj", out_features, units)


def dbrx_qkv(module, out_features):
    kv = module.num_key_value_heads * module.head_dim
    return (module.num_heads * module.head_dim, kv, kv)


def ergo_qkv(module, out_features):
    """ErgoAttention views the output as [heads + 2 kv heads, head_dim]: q heads, k, v."""
    heads, kv = module.config.num_attention_heads, module.config.num_key_value_heads
    return (heads * module.head_dim, kv * module.head_dim, kv * module.head_dim)


def whole(name: str):
    """One logical matrix that the role sorter mistakes for a fused one by its name."""

    def split(block, config, out_features) -> dict[str, Ranges]:
        return {name: ((0, out_features),)}

    return split


def mamba2_in_proj(mixer, out_features) -> dict[str, Ranges] | None:
    """A Mamba-2 mixer's in_proj outputs [z | x, B, C (the conv input) | dt], read from the
    mixer's own sizes; None where they do not add up to the projection."""
    sizes = [getattr(mixer, k, None) for k in ("intermediate_size", "n_groups", "ssm_state_size")]
    heads = getattr(mixer, "num_heads", None)
    if None in sizes or heads is None:
        return None
    inner, groups, state = sizes
    conv = inner + 2 * groups * state
    if out_features != inner + conv + heads:
        return None
    return {
        "z": ((0, inner),),
        "xBC": ((inner, inner + conv),),
        "dt": ((inner + conv, out_features),),
    }
