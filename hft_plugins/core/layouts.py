"""What a plugin declares about a model family: its :class:`Layout`.

A layout names, per family, the block-relative modules of each category, how fused
projections split into logical matrices, how routed experts store their tensors, and
what the role sorter (:mod:`hft_plugins.core.blocks`) must be taught to read the
family's own module names. The built-in layouts are in :mod:`hft_plugins.builtin.families`;
:func:`hft_plugins.core.partition.partition` applies them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

from .errors import HFTError

__all__ = [
    "BLOCK_CATEGORIES",
    "OUTER_CATEGORIES",
    "ExpertStorage",
    "Fused",
    "Layout",
    "Ranges",
    "SorterSplit",
    "Splitter",
]

# Categories of block units; "other" holds what was not placed (accepted only with guess_layout).
BLOCK_CATEGORIES = ("attention", "ffn", "shared_ffn", "router", "mixer", "scale", "norm", "other")
OUTER_CATEGORIES = ("embed", "head", "final_norm")

Ranges = tuple[tuple[int, int], ...]
# (block module, model config or None, output features) -> logical name -> output ranges
Splitter = Callable[[nn.Module, object, int], dict[str, Ranges]]
# (the module holding the projection, output features) -> logical name -> output ranges,
# or None where the module's sizes do not describe this projection
SorterSplit = Callable[[nn.Module, int], "dict[str, Ranges] | None"]


@dataclass(frozen=True)
class Fused:
    """A projection whose output features hold several logical matrices."""

    split: Splitter
    weight_out_dim: int = 0  # nn.Linear keeps outputs in rows; GPT-2's Conv1D in columns


@dataclass(frozen=True)
class ExpertStorage:
    """How a module of routed experts stores its 3-D tensors (transformers' metadata)."""

    has_gate: bool = True  # gate and up fused in one tensor; else ``up_proj`` alone
    transposed: bool = False  # [experts, in, out] rather than [experts, out, in]
    concatenated: bool = True  # gate then up; False: interleaved (gate at even outputs)
    fused_name: str = "gate_up_proj"  # the tensor holding gate and up

    @classmethod
    def of(cls, module: nn.Module) -> ExpertStorage | None:
        """The metadata transformers' ``use_experts_implementation`` attaches, if any."""
        values = [
            getattr(module, k, None) for k in ("has_gate", "is_transposed", "is_concatenated")
        ]
        if any(v is None for v in values):
            return None
        return cls(*values)


@dataclass(frozen=True)
class Layout:
    """One family's block structure, by block-relative module paths.

    A layout may name only part of a block (its fused projections, say, or just how its
    experts store gate and up): the rest is sorted by role (:mod:`hft_plugins.core.blocks`).
    It is chosen for a block that has every module of its ``attention``, ``ffn``, ``norms``
    and ``categories``, its own model type's first. What it teaches the role
    sorter (``sorter_roles``, ``sorter_splits``) applies to every block of its model types,
    whichever layout is chosen there; a layout that only teaches is never chosen.
    """

    name: str
    model_types: tuple[str, ...]
    attention: tuple[str, ...] = ()
    ffn: tuple[str, ...] = ()
    norms: tuple[str, ...] = ()
    fused: Mapping[str, Fused] = field(default_factory=dict)
    # experts module path -> how its 3-D tensors are stored, where the module does not say
    experts: Mapping[str, ExpertStorage] = field(default_factory=dict)
    # further module paths -> their category (shared_ffn, router, mixer, scale...)
    categories: Mapping[str, str] = field(default_factory=dict)
    # module names -> the category of everything below a module of that name
    sorter_roles: Mapping[str, str] = field(default_factory=dict)
    # names of leaf projections -> how they split, read from the module that holds them
    sorter_splits: Mapping[str, SorterSplit] = field(default_factory=dict)

    def __post_init__(self):
        known = BLOCK_CATEGORIES[:-1]
        declared = {**self.categories, **self.sorter_roles}
        unknown = sorted(set(declared.values()) - set(known))
        if unknown:
            raise HFTError(
                f"layout {self.name!r}: unknown category {unknown[0]!r}; known: {', '.join(known)}"
            )

    @property
    def names_modules(self) -> bool:
        """Whether it names module paths of a block (else it only teaches the sorter)."""
        return bool(
            self.attention
            or self.ffn
            or self.norms
            or self.fused
            or self.experts
            or self.categories
        )

    @property
    def is_family_specific(self) -> bool:
        """Whether it holds a family's own conventions, which another family never borrows."""
        return bool(
            self.fused or self.experts or self.categories or self.sorter_roles or self.sorter_splits
        )
