"""Where each model family keeps its attention, feed-forward and norm parameters.

A :class:`Layout` names, per family, the block-relative modules of each category
and how fused projections split into logical matrices. :func:`resolve` turns a
model into :class:`Unit` s: the logical matrices a strategy draws from, each a list
of parameter parts (whole tensors, or row/column ranges of a fused tensor).
The layouts themselves are plugins' (the built-ins in :mod:`hft_plugins.builtin`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

from .blocks import BLOCK_CATEGORIES, BlockSorter, ExpertLayout, PlannedUnit, is_norm
from .blocks import shape_of as param_shape
from .errors import HFTError

__all__ = [
    "BLOCK_CATEGORIES",
    "OUTER_CATEGORIES",
    "ExpertLayout",
    "Fused",
    "Layout",
    "ModelLayout",
    "Part",
    "Unit",
]

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
    """One family's block structure, by block-relative module paths.

    A layout may name only part of a block (its fused projections, say, or just how its
    experts store gate and up): the rest is sorted by role (:mod:`hft_plugins.core.blocks`).
    """

    name: str
    model_types: tuple[str, ...]
    attention: tuple[str, ...] = ()
    ffn: tuple[str, ...] = ()
    norms: tuple[str, ...] = ()
    fused: Mapping[str, Fused] = field(default_factory=dict)
    # experts module path -> how its 3-D tensors are stored, where the module does not say
    experts: Mapping[str, ExpertLayout] = field(default_factory=dict)
    # further module paths -> their category (shared_ffn, router, mixer, scale...)
    categories: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        unknown = sorted(set(self.categories.values()) - set(BLOCK_CATEGORIES[:-1]))
        if unknown:
            raise HFTError(
                f"layout {self.name!r}: unknown category {unknown[0]!r}; "
                f"known: {', '.join(BLOCK_CATEGORIES[:-1])}"
            )


@dataclass(frozen=True)
class Part:
    """A parameter, or ranges of it along ``dim``, that belongs to one unit."""

    param: str
    dim: int = 0
    ranges: Ranges | None = None  # None: the whole tensor
    step: int = 1  # 2: every other index of each range (gate/up interleaved, as in gpt-oss)

    def to_json(self) -> dict:
        data = {"param": self.param}
        if self.ranges is not None:
            data.update(dim=self.dim, ranges=[list(r) for r in self.ranges])
        if self.step != 1:
            data["step"] = self.step
        return data

    @classmethod
    def from_json(cls, data: dict) -> Part:
        ranges = data.get("ranges")
        return cls(
            data["param"],
            int(data.get("dim", 0)),
            None if ranges is None else tuple((int(a), int(b)) for a, b in ranges),
            int(data.get("step", 1)),
        )

    def size_along_dim(self) -> int:
        """How many indices of ``dim`` the ranges cover."""
        return sum(len(range(a, b, self.step)) for a, b in self.ranges or ())


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
    guessed: tuple[str, ...] = ()  # what guess_layout let through, one line each

    def block_units(self) -> list[Unit]:
        return [u for u in self.units if u.block is not None]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.shapes)


def fingerprint(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """A short hash of parameter names and shapes: which model a mask belongs to."""
    text = "\n".join(f"{name}:{list(shape)}" for name, shape in sorted(shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- resolving a model -------------------------------------------------------


def _block_like(module: nn.Module) -> bool:
    """A composite module: at least two submodules below it hold parameters."""
    holders = sum(
        1 for m in module.modules() if m is not module and any(True for _ in m.parameters(False))
    )
    return holders >= 2


def find_block_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The stacks of transformer blocks: outermost ModuleLists of composite modules.

    Encoder-decoder models have two (both count); a stack under a fifth of the largest's
    size (a list of adapters, say) is not one. Blocks may differ in class (Jamba mixes
    mamba and attention layers in one list).
    """
    candidates = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(map(_block_like, module)):
            size = sum(getattr(p, "ds_numel", None) or p.numel() for p in module.parameters())
            candidates.append((name, module, size))
    outer = [
        c for c in candidates if not any(c[0].startswith(f"{o[0]}.") for o in candidates if o[0])
    ]
    if not outer:
        return []
    largest = max(size for _, _, size in outer)
    return [(name, module) for name, module, size in outer if size and size >= largest / 5]


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The largest stack of blocks (see :func:`find_block_stacks`)."""
    stacks = find_block_stacks(model)
    if not stacks:
        return None
    return max(stacks, key=lambda s: sum(p.numel() for p in s[1].parameters()))


def _layout_fits(layout: Layout, block: nn.Module) -> bool:
    names = {n for n, _ in block.named_modules()}
    listed = (*layout.attention, *layout.ffn, *layout.norms, *layout.categories)
    return all(p in names for p in listed)


def choose_layout(model: nn.Module, block: nn.Module, layouts: list[Layout]) -> Layout | None:
    """The registered layout of the model's type that fits ``block``, else one that fits.

    Another type's layout is borrowed only without fused projections: how a fused tensor
    splits is one family's convention (GPTBigCode's ``c_attn`` is not GPT-2's).
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for layout in layouts:
        if model_type in layout.model_types and _layout_fits(layout, block):
            return layout
    for layout in layouts:
        if not (layout.fused or layout.experts or layout.categories) and _layout_fits(
            layout, block
        ):
            return layout
    return None


def resolve(model: nn.Module, layouts: list[Layout], *, guess: bool = False) -> ModelLayout:
    """Sort every parameter of ``model`` into units of a category, block by block.

    Each block gets the registered layout that fits it, and what no layout names is
    sorted by role (:mod:`hft_plugins.core.blocks`). Anything that cannot be placed or
    halved raises one HFTError naming it, unless ``guess``: then it trains as its own
    units under "other" (or whole) and the model layout lists what was guessed.
    :func:`hft_plugins.core.catalog.resolve` passes the registered layouts.
    """
    stacks = find_block_stacks(model)
    if not stacks:
        raise HFTError(
            f"no transformer blocks found in {type(model).__name__}; register a layout with the "
            "'register_layouts' hook of hft_plugins"
        )
    config = getattr(model, "config", None)

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
    used: list[str] = []
    issues: list[str] = []
    index = 0
    for stack_name, blocks in stacks:
        for local, block in enumerate(blocks):
            block_prefix = f"{stack_name}.{local}."
            layout = choose_layout(model, block, layouts)
            planned, block_issues, name = _plan_block(
                block, block_prefix, layout, config, tied, claimed, stack_name.rpartition(".")[2]
            )
            if name not in used:
                used.append(name)
            issues += [f"block {index}: {issue}" for issue in block_issues]
            for unit in planned:
                parts = tuple(
                    Part(f"{block_prefix}{p.param}", p.dim, p.ranges, p.step) for p in unit.parts
                )
                claimed.update(p.param for p in parts)
                units.append(_unit(index, unit.category, unit.name, parts, shapes))
            index += 1
    if issues and not guess:
        raise HFTError(
            f"cannot sort {type(model).__name__} into HFT categories ({len(issues)} problem(s)); "
            f"{issues[0]}; register a layout with the 'register_layouts' hook of hft_plugins, "
            "or set guess_layout=True to train a guessed half (with a warning)"
        )

    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    norm_params = {
        id(p) for n, m in model.named_modules() if is_norm(n, m) for p in m.parameters(False)
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
    return ModelLayout("+".join(used), units, index, shapes, tied, tuple(issues))


def _plan_block(block, block_prefix, layout, config, tied, claimed, context):
    """(planned units, issues, layout name) of one block."""
    own = {
        n: p
        for n, p in block.named_parameters()
        if f"{block_prefix}{n}" not in tied and f"{block_prefix}{n}" not in claimed
    }
    planned: list[PlannedUnit] = []
    taken: set[str] = set()
    if layout is not None:
        modules = dict(block.named_modules())
        plan = [("attention", p) for p in layout.attention]
        plan += [("ffn", p) for p in layout.ffn] + [("norm", p) for p in layout.norms]
        plan += [(category, p) for p, category in layout.categories.items()]
        for category, path in plan:
            stem = f"{path}." if path else ""
            mine = [
                f"{stem}{n}"
                for n, _ in modules[path].named_parameters(recurse=False)
                if f"{stem}{n}" in own
            ]
            if not mine:
                continue
            taken.update(mine)
            fused = layout.fused.get(path)
            if fused is None:
                planned.append(PlannedUnit(category, path, tuple(Part(n) for n in mine)))
                continue
            weight = own.get(f"{stem}weight")
            if weight is None:
                raise HFTError(
                    f"layout {layout.name!r} splits {path!r}, which has no 'weight' parameter"
                )
            out_features = param_shape(weight)[fused.weight_out_dim]
            for logical, ranges in fused.split(block, config, out_features).items():
                parts = tuple(
                    Part(n, fused.weight_out_dim if n.endswith(".weight") else 0, ranges)
                    for n in mine
                )
                planned.append(PlannedUnit(category, f"{path}[{logical}]", parts))
    sorter = BlockSorter(
        block,
        lambda n, dim=0, ranges=None, step=1: Part(n, dim, ranges, step),
        layout.experts if layout is not None else {},
        context,
    )
    rest = {n: p for n, p in own.items() if n not in taken}
    if rest:
        sorter.sort(rest)
    sorter.units = {**{u.name: u for u in planned}, **sorter.units}
    sorter.vouched = {u.name for u in planned}
    own_shapes = {n: param_shape(p) for n, p in own.items()}
    sorter.check(lambda u: _numel(u.parts, own_shapes))
    if layout is not None and not rest:
        name = layout.name
    elif layout is not None:
        name = f"{layout.name}(+structural)"
    else:
        name = "structural"
    return list(sorter.units.values()), sorter.issues, name


def _inside(name: str, word: str) -> bool:
    return any(word in piece.lower() for piece in name.split(".")[:-1])


def _numel(parts, shapes) -> int:
    numel = 0
    for part in parts:
        shape = shapes[part.param]
        size = 1
        for d, s in enumerate(shape):
            size *= part.size_along_dim() if part.ranges is not None and d == part.dim else s
        numel += size
    return numel


def _unit(block, category, path, parts, shapes) -> Unit:
    key = path if block is None else f"block.{block}.{path}"
    return Unit(key, block, category, path, tuple(parts), _numel(parts, shapes))
