"""Sorting a whole model into units: :func:`partition`.

It finds the stacks of transformer blocks, gives each block the registered
:class:`~hft_plugins.core.layouts.Layout` that fits it, sorts what no layout names by
role (:mod:`hft_plugins.core.blocks`), and puts what lies outside the blocks into the
embed, head and final_norm units.
"""

from __future__ import annotations

from torch import nn

from . import catalog
from .blocks import BlockSorter, PlannedUnit, is_norm
from .errors import HFTError
from .layouts import Layout
from .shapes import shape_of
from .units import Part, Partition, Unit

__all__ = [
    "choose_layout",
    "find_block_stacks",
    "find_blocks",
    "merge_shared_tensors",
    "partition",
]


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
    return layout.names_modules and all(p in names for p in listed)


def choose_layout(model: nn.Module, block: nn.Module, layouts: list[Layout]) -> Layout | None:
    """The registered layout of the model's type that fits ``block``, else one that fits.

    Another type's layout is borrowed only without conventions of its own family: how a
    fused tensor splits is one family's (GPTBigCode's ``c_attn`` is not GPT-2's).
    """
    model_type = _model_type(model)
    for layout in layouts:
        if model_type in layout.model_types and _layout_fits(layout, block):
            return layout
    for layout in layouts:
        if not layout.is_family_specific and _layout_fits(layout, block):
            return layout
    return None


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def partition(model: nn.Module, *, guess: bool = False, whole_tensors: bool = False) -> Partition:
    """Sort every parameter of ``model`` into units of a category, block by block.

    Each block gets the registered layout that fits it, and what no layout names is
    sorted by role, as the layouts of the model's type teach. Anything that cannot be
    placed or halved raises one HFTError naming it, unless ``guess``: then it trains as
    its own units under "other" (or whole) and the partition lists what was guessed.
    With ``whole_tensors`` the units that share a tensor are merged into one
    (:func:`merge_shared_tensors`).
    """
    layouts = catalog.layouts()
    stacks = find_block_stacks(model)
    if not stacks:
        raise HFTError(
            f"no transformer blocks found in {type(model).__name__}; register a layout with the "
            "'register_layouts' hook of hft_plugins"
        )
    all_named = list(model.named_parameters(remove_duplicate=False))
    tied = _tied(all_named)
    shapes = {name: shape_of(p) for name, p in all_named if name not in tied}
    units, claimed, used, issues = _block_units(model, stacks, layouts, tied, shapes)
    if issues and not guess:
        raise HFTError(
            f"cannot sort {type(model).__name__} into HFT categories ({len(issues)} problem(s)); "
            f"{issues[0]}; register a layout with the 'register_layouts' hook of hft_plugins, "
            "or set guess_layout=True to train a guessed half (with a warning)"
        )
    num_blocks = sum(len(blocks) for _, blocks in stacks)
    units += _outer_units(model, all_named, tied, claimed, shapes)
    if whole_tensors:
        units = merge_shared_tensors(units, shapes)
    return Partition("+".join(used), units, num_blocks, shapes, tied, tuple(issues))


def merge_shared_tensors(units: list[Unit], shapes: dict[str, tuple[int, ...]]) -> list[Unit]:
    """The units with every group that shares a tensor merged into one unit of whole tensors.

    q, k and v of one fused ``qkv_proj`` become ``qkv_proj[q+k+v]``; the gate and up of
    routed experts' ``gate_up_proj`` become ``gate_up_proj[gate+up]``. The merged unit
    takes the first unit's place, so the order (and every other unit) is unchanged.
    Sharded engines step whole tensors, so only such a mask can keep its frozen half exact
    there. Slices of one tensor in two categories cannot be merged: one-line HFTError.
    """
    groups: dict[str, list[Unit]] = {}  # first unit's key -> the units merged into it
    owner: dict[str, str] = {}  # parameter name -> the group that holds it
    for unit in units:
        joined = {owner[p.param] for p in unit.parts if p.param in owner}
        key = min(joined, key=list(groups).index) if joined else unit.key
        members = groups.setdefault(key, [])
        for other in sorted(joined - {key}, key=list(groups).index):
            members += groups.pop(other)
        members.append(unit)
        for member in members:
            owner.update((p.param, key) for p in member.parts)
    return [
        _merged(members, shapes) if len(members) > 1 else members[0] for members in groups.values()
    ]


def _merged(members: list[Unit], shapes) -> Unit:
    first = members[0]
    categories = sorted({u.category for u in members})
    if len(categories) > 1:
        raise HFTError(
            f"whole_tensors cannot merge {', '.join(u.key for u in members)}: they share a tensor "
            f"but belong to categories {' and '.join(categories)}"
        )
    params = list(dict.fromkeys(p.param for u in members for p in u.parts))
    stems = {u.name.partition("[")[0] for u in members}
    if len(stems) == 1:
        roles = "+".join(u.name.partition("[")[2].rstrip("]") or u.name for u in members)
        name = f"{stems.pop()}[{roles}]"
    else:
        name = "+".join(u.name for u in members)
    return _unit(first.block, first.category, name, [Part(p) for p in params], shapes)


def _tied(named: list[tuple[str, nn.Parameter]]) -> dict[str, str]:
    """Alias parameter name -> the first name of the tensor it shares."""
    canonical: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, param in named:
        if id(param) in canonical:
            tied[name] = canonical[id(param)]
        else:
            canonical[id(param)] = name
    return tied


def _block_units(model, stacks, layouts, tied, shapes):
    """(units, the parameters they claim, what sorted the blocks, issues) of every block."""
    config = getattr(model, "config", None)
    own = [layout for layout in layouts if _model_type(model) in layout.model_types]
    roles = {k: v for layout in own for k, v in layout.sorter_roles.items()}
    splits = {k: v for layout in own for k, v in layout.sorter_splits.items()}
    units: list[Unit] = []
    claimed: set[str] = set()
    used: list[str] = []
    issues: list[str] = []
    index = 0
    for stack_name, blocks in stacks:
        context = stack_name.rpartition(".")[2]
        for local, block in enumerate(blocks):
            block_prefix = f"{stack_name}.{local}."
            layout = choose_layout(model, block, layouts)
            experts = layout.experts if layout is not None else {}
            sorter = BlockSorter(block, experts, context, roles, splits)
            planned, name = _plan_block(block, block_prefix, layout, config, tied, claimed, sorter)
            if name not in used:
                used.append(name)
            issues += [f"block {index}: {issue}" for issue in sorter.issues]
            for unit in planned:
                parts = tuple(
                    Part(f"{block_prefix}{p.param}", p.dim, p.ranges, p.step) for p in unit.parts
                )
                claimed.update(p.param for p in parts)
                units.append(_unit(index, unit.category, unit.name, parts, shapes))
            index += 1
    return units, claimed, used, issues


def _outer_units(model, named, tied, claimed, shapes) -> list[Unit]:
    """One unit per parameter outside the blocks: embed, final_norm or head."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    norm_params = {
        id(p) for n, m in model.named_modules() if is_norm(n, m) for p in m.parameters(False)
    }
    units = []
    for name, param in named:
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
    return units


def _plan_block(block, block_prefix, layout, config, tied, claimed, sorter):
    """(planned units, name of what sorted it) of one block; problems go to ``sorter.issues``."""
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
            out_features = shape_of(weight)[fused.weight_out_dim]
            for logical, ranges in fused.split(block, config, out_features).items():
                parts = tuple(
                    Part(n, fused.weight_out_dim if n.endswith(".weight") else 0, ranges)
                    for n in mine
                )
                planned.append(PlannedUnit(category, f"{path}[{logical}]", parts))
    rest = {n: p for n, p in own.items() if n not in taken}
    if rest:
        sorter.sort(rest)
    sorter.units = {**{u.name: u for u in planned}, **sorter.units}
    sorter.vouched = {u.name for u in planned}
    own_shapes = {n: shape_of(p) for n, p in own.items()}
    sorter.check(lambda u: _numel(u.parts, own_shapes))
    if layout is not None and not rest:
        name = layout.name
    elif layout is not None:
        name = f"{layout.name}(+structural)"
    else:
        name = "structural"
    return list(sorter.units.values()), name


def _inside(name: str, word: str) -> bool:
    return any(word in piece.lower() for piece in name.split(".")[:-1])


def _numel(parts, shapes) -> int:
    return sum(part.numel(shapes[part.param]) for part in parts)


def _unit(block, category, path, parts, shapes) -> Unit:
    key = path if block is None else f"block.{block}.{path}"
    return Unit(key, block, category, path, tuple(parts), _numel(parts, shapes))
