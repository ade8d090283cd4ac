"""Where each model family keeps its attention, feed-forward and norm parameters.

A :class:`Layout` names, per family, the block-relative modules of each category
and how fused projections split into logical matrices. :func:`resolve` turns a
model into :class:`Unit` s: the logical matrices a strategy draws from, each a list
of parameter parts (whole tensors, or row/column ranges of a fused tensor).
Built-in layouts register through the same ``register_layouts`` hook as plugins.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

from .errors import HFTError

BLOCK_CATEGORIES = ("attention", "ffn", "norm", "other")
OUTER_CATEGORIES = ("embed", "head", "final_norm")

Ranges = tuple[tuple[int, int], ...]
# (block module, model config or None, output features) -> logical name -> output ranges
Splitter = Callable[[nn.Module, object, int], dict[str, Ranges]]


@dataclass(frozen=True)
class Fused:
    """A projection whose output features hold several logical matrices."""

    split: Splitter
    weight_out_dim: int = 0  # nn.Linear keeps outputs in rows; GPT-2's Conv1D in columns


@dataclass(frozen=True)
class Layout:
    """One family's block structure, by block-relative module paths."""

    name: str
    model_types: tuple[str, ...]
    attention: tuple[str, ...]
    ffn: tuple[str, ...]
    norms: tuple[str, ...]
    fused: Mapping[str, Fused] = field(default_factory=dict)


@dataclass(frozen=True)
class Part:
    """A parameter, or ranges of it along ``dim``, that belongs to one unit."""

    param: str
    dim: int = 0
    ranges: Ranges | None = None  # None: the whole tensor

    def to_json(self) -> dict:
        data = {"param": self.param}
        if self.ranges is not None:
            data.update(dim=self.dim, ranges=[list(r) for r in self.ranges])
        return data

    @classmethod
    def from_json(cls, data: dict) -> Part:
        ranges = data.get("ranges")
        return cls(
            data["param"],
            int(data.get("dim", 0)),
            None if ranges is None else tuple((int(a), int(b)) for a, b in ranges),
        )


@dataclass(frozen=True)
class Unit:
    """A logical matrix (or norm): the thing a strategy trains or freezes whole."""

    key: str
    block: int | None
    category: str
    name: str
    parts: tuple[Part, ...]
    numel: int


@dataclass
class ModelLayout:
    """A model resolved into units, with what tied and what the blocks are."""

    layout: str
    units: list[Unit]
    num_blocks: int
    shapes: dict[str, tuple[int, ...]]
    tied: dict[str, str]  # alias parameter name -> the name it shares storage with

    def block_units(self) -> list[Unit]:
        return [u for u in self.units if u.block is not None]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.shapes)


def param_shape(param) -> tuple[int, ...]:
    """A parameter's full shape, also under DeepSpeed ZeRO-3 (which empties ``.shape``)."""
    return tuple(getattr(param, "ds_shape", None) or param.shape)


def fingerprint(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """A short hash of parameter names and shapes: which model a mask belongs to."""
    text = "\n".join(f"{name}:{list(shape)}" for name, shape in sorted(shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


# ---- resolving a model -------------------------------------------------------


def _is_norm(name: str, module: nn.Module) -> bool:
    lowered = name.rsplit(".", 1)[-1].lower()
    return "norm" in type(module).__name__.lower() or "norm" in lowered or lowered.startswith("ln")


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The largest ModuleList of same-class children holding parameters: the blocks."""
    best = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(getattr(p, "ds_numel", None) or p.numel() for p in module.parameters())
        if size and (best is None or size > best[2]):
            best = (name, module, size)
    return None if best is None else (best[0], best[1])


def _modules_with_params(block: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in block.named_modules() if any(True for _ in m.parameters(False))]


def _structural_layout(block: nn.Module) -> Layout:
    """A layout guessed from names: norms by type/name, attention by path, the rest FFN."""
    attention, ffn, norms = [], [], []
    for name, module in _modules_with_params(block):
        if _is_norm(name, module):
            norms.append(name)
        elif "attn" in name.lower() or "attention" in name.lower():
            attention.append(name)
        else:
            ffn.append(name)
    return Layout("structural", (), tuple(attention), tuple(ffn), tuple(norms))


def _layout_fits(layout: Layout, block: nn.Module) -> bool:
    names = {n for n, _ in block.named_modules()}
    return all(p in names for p in (*layout.attention, *layout.ffn, *layout.norms))


def choose_layout(model: nn.Module, block: nn.Module, layouts: list[Layout]) -> Layout:
    """The registered layout for the model's type, else one that fits, else structural."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for layout in layouts:
        if model_type in layout.model_types and _layout_fits(layout, block):
            return layout
    for layout in layouts:
        if _layout_fits(layout, block):
            return layout
    return _structural_layout(block)


def resolve(model: nn.Module, layouts: list[Layout] | None = None) -> ModelLayout:
    """Sort every parameter of ``model`` into units of a category."""
    if layouts is None:
        from .plugins import layouts as registered

        layouts = registered()
    found = find_blocks(model)
    if found is None:
        raise HFTError(
            f"no transformer blocks found in {type(model).__name__}; register a layout with the "
            "'register_layouts' hook of hft_plugins"
        )
    blocks_name, blocks = found
    layout = choose_layout(model, blocks[0], layouts)
    config = getattr(model, "config", None)
    prefix = f"{blocks_name}." if blocks_name else ""

    all_named = list(model.named_parameters(remove_duplicate=False))
    canonical: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, param in all_named:
        if id(param) in canonical:
            tied[name] = canonical[id(param)]
        else:
            canonical[id(param)] = name
    shapes = {name: param_shape(p) for name, p in all_named if name not in tied}

    units: list[Unit] = []
    claimed: set[str] = set()
    for index, block in enumerate(blocks):
        block_prefix = f"{prefix}{index}."
        modules = dict(block.named_modules())
        plan = [("attention", p) for p in layout.attention]
        plan += [("ffn", p) for p in layout.ffn] + [("norm", p) for p in layout.norms]
        listed = {p for _, p in plan}
        plan += [
            ("other", n)
            for n, _ in _modules_with_params(block)
            if n not in listed and not any(n.startswith(f"{p}.") for p in listed)
        ]
        for category, path in plan:
            module = modules[path]
            stem = f"{block_prefix}{path}." if path else block_prefix
            own = [(f"{stem}{n}", p) for n, p in module.named_parameters(recurse=False)]
            own = [(n, p) for n, p in own if n not in tied and n not in claimed]
            if not own:
                continue
            claimed.update(n for n, _ in own)
            fused = layout.fused.get(path)
            if fused is None:
                units.append(_unit(index, category, path, [Part(n) for n, _ in own], shapes))
                continue
            weight = dict(own)[f"{block_prefix}{path}.weight"]
            out_features = param_shape(weight)[fused.weight_out_dim]
            for logical, ranges in fused.split(block, config, out_features).items():
                parts = [
                    Part(n, fused.weight_out_dim if n.endswith(".weight") else 0, ranges)
                    for n, _ in own
                ]
                units.append(_unit(index, category, f"{path}[{logical}]", parts, shapes))

    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    norm_params = {
        id(p) for n, m in model.named_modules() if _is_norm(n, m) for p in m.parameters(False)
    }
    for name, param in all_named:
        if name in tied or name in claimed:
            continue
        if id(param) in embeddings:
            category = "embed"
        elif id(param) in norm_params and not _inside(name, "embed"):
            category = "final_norm"
        elif _inside(name, "embed"):
            category = "embed"  # e.g. BERT's embeddings.LayerNorm
        else:
            category = "head"
        units.append(_unit(None, category, name, [Part(name)], shapes))
    return ModelLayout(layout.name, units, len(blocks), shapes, tied)


def _inside(name: str, word: str) -> bool:
    return any(word in piece.lower() for piece in name.split(".")[:-1])


def _unit(block, category, path, parts, shapes) -> Unit:
    numel = 0
    for part in parts:
        shape = shapes[part.param]
        if part.ranges is None:
            size = 1
            for s in shape:
                size *= s
        else:
            rest = 1
            for d, s in enumerate(shape):
                if d != part.dim:
                    rest *= s
            size = rest * sum(b - a for a, b in part.ranges)
        numel += size
    key = path if block is None else f"block.{block}.{path}"
    return Unit(key, block, category, path, tuple(parts), numel)
