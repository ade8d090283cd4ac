"""What a mask is made of: units, their parts, and the ranges of a tensor a part holds.

A :class:`Unit` is a logical matrix (or norm): the thing a strategy trains or freezes
whole. Its :class:`Part` s are parameters, or :class:`Slices` of them (row or column
ranges of a fused tensor). A :class:`Partition` is a whole model sorted into units
(:func:`hft_plugins.core.partition.partition`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .layouts import Ranges
from .shapes import fingerprint

__all__ = ["Part", "Partition", "Slices", "Unit", "range_view"]


@dataclass(frozen=True)
class Slices:
    """Ranges of a tensor along one dim."""

    dim: int
    ranges: Ranges
    step: int = 1  # 2: every other index of each range (gate/up interleaved, as in gpt-oss)

    @property
    def size(self) -> int:
        """How many indices of ``dim`` the ranges cover."""
        return sum(len(range(a, b, self.step)) for a, b in self.ranges)


def range_key(name: str, dim: int, a: int, b: int, step: int = 1) -> str:
    """The name of range ``[a, b)`` of parameter ``name`` along ``dim``: ``name[dim:a:b]``,
    with ``:step`` when it is not 1 (optimizer state and HFT saves are keyed by it)."""
    return f"{name}[{dim}:{a}:{b}{f':{step}' if step != 1 else ''}]"


@dataclass(frozen=True)
class Part:
    """A parameter, or ranges of it along ``dim``, that belongs to one unit."""

    param: str
    dim: int = 0
    ranges: Ranges | None = None  # None: the whole tensor
    step: int = 1  # 2: every other index of each range (gate/up interleaved, as in gpt-oss)

    @property
    def slices(self) -> Slices | None:
        """The ranges as :class:`Slices`; None for the whole tensor."""
        return None if self.ranges is None else Slices(self.dim, self.ranges, self.step)

    def numel(self, shape: tuple[int, ...]) -> int:
        """How many elements of a parameter of ``shape`` the part holds."""
        size = 1
        for d, s in enumerate(shape):
            size *= self.slices.size if self.ranges is not None and d == self.dim else s
        return size

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
class Partition:
    """A model sorted into units, with what tied and what the blocks are."""

    sorted_by: str  # the layouts that sorted the blocks, "+"-joined; "structural": roles alone
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


def range_view(tensor, dim: int, start: int, stop: int, step: int = 1):
    """The view of ``tensor`` holding indices ``start, start + step, ... < stop`` of ``dim``."""
    index = [slice(None)] * tensor.dim()
    index[dim] = slice(start, stop, step)
    return tensor[tuple(index)]
