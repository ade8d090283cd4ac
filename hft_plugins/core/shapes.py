"""Parameter shapes: a tensor's full shape, a model's, their fingerprint, and comparing two.

A mask against the model it is applied to, a DPO reference against its policy, a base
model against the tuned one to half-reset: each names the first parameter that differs
(missing, of another shape, or extra) in one line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from .errors import HFTError

Shapes = Mapping[str, tuple[int, ...]]


def shape_of(param) -> tuple[int, ...]:
    """A parameter's full shape, also under DeepSpeed ZeRO-3 (which empties ``.shape``)."""
    return tuple(getattr(param, "ds_shape", None) or param.shape)


def fingerprint(shapes: Shapes) -> str:
    """A short hash of parameter names and shapes: which model a mask belongs to."""
    text = "\n".join(f"{name}:{list(shape)}" for name, shape in sorted(shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape (a sharded tensor's full shape), tied duplicates once."""
    return {name: shape_of(param) for name, param in model.named_parameters()}


@dataclass(frozen=True)
class Difference:
    """The first parameter where ``have`` differs from ``want``."""

    name: str
    have: tuple[int, ...] | None  # None: ``have`` lacks it
    want: tuple[int, ...] | None  # None: ``have`` has it, ``want`` does not


def first_difference(have: Shapes, want: Shapes, *, extra: bool = True) -> Difference | None:
    """The first of ``want``'s parameters (in its order) that ``have`` lacks or has in another
    shape; then, if ``extra``, the first (by name) that only ``have`` has. None: they match."""
    for name, shape in want.items():
        if name not in have:
            return Difference(name, None, tuple(shape))
        if tuple(have[name]) != tuple(shape):
            return Difference(name, tuple(have[name]), tuple(shape))
    more = sorted(set(have) - set(want)) if extra else []
    return Difference(more[0], tuple(have[more[0]]), None) if more else None


def check_same_shapes(
    have: Shapes, want: Shapes, *, missing: str, shape: str, extra: str | None = None
) -> None:
    """Raise :class:`HFTError` for the first difference of ``have`` from ``want``.

    The messages are templates with ``{name}`` (quoted), ``{have}`` and ``{want}`` (shapes
    as lists): ``missing`` when ``have`` lacks a parameter, ``shape`` when its shape differs,
    ``extra`` when ``have`` has one ``want`` lacks (None: extra parameters are allowed).
    """
    diff = first_difference(have, want, extra=extra is not None)
    if diff is None:
        return
    template = missing if diff.have is None else extra if diff.want is None else shape
    raise HFTError(
        template.format(
            name=repr(diff.name),
            have=list(diff.have) if diff.have is not None else None,
            want=list(diff.want) if diff.want is not None else None,
        )
    )
