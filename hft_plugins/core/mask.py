"""The mask: which parameters (or slices of them) one stage trains.

A mask is the model's partition into units plus the set of unit keys that train. It
derives, per parameter, "whole", "ranges along a dim" or frozen; sets
``requires_grad``; prints a per-block table; and round-trips through JSON with
the config that drew it and a fingerprint of the model it belongs to.
"""

from __future__ import annotations

import json
import os
import random
import warnings
import weakref
from collections import defaultdict
from pathlib import Path

from torch import nn

from ..registry import notify
from . import catalog
from .atomic import atomic_write_text
from .config import HFTConfig
from .errors import HFTError
from .layouts import BLOCK_CATEGORIES, OUTER_CATEGORIES
from .partition import partition
from .shapes import check_same_shapes, fingerprint, shapes
from .units import Part, Partition, Slices, Unit

FORMAT = "hft-mask/1"
# a block fraction further than this from the ratio is reported when drawn
RATIO_TOLERANCE = 0.05
_OUTER_FLAGS = {"embed": "train_embeddings", "head": "train_head", "final_norm": "train_final_norm"}
# Per model: the mask applied last (mask_applied fires once per mask actually applied), and
# the warnings given (a run draws the same mask several times; it warns once).
_applied: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_warned: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _warn_once(model: nn.Module, message: str) -> None:
    try:
        seen = _warned.setdefault(model, set())
    except TypeError:  # not weakly referenceable: warn every time
        seen = set()
    if message not in seen:
        seen.add(message)
        warnings.warn(message, stacklevel=3)


def _tied_overrides(model: nn.Module, partitioned: Partition, config: HFTConfig) -> list[str]:
    """Where a tied tensor makes a train_head / train_embeddings setting moot: what applies."""
    by_param = {
        part.param: unit for unit in partitioned.units if unit.block is None for part in unit.parts
    }
    modules = dict(model.named_modules())
    notes = []
    for alias, name in sorted(partitioned.tied.items()):
        unit = by_param.get(name)
        if unit is None or unit.category not in ("embed", "head"):
            continue
        owner = modules.get(alias.rpartition(".")[0])
        role = "embed" if isinstance(owner, nn.Embedding) or "embed" in alias else "head"
        if role == unit.category:
            continue
        flag, governing = _OUTER_FLAGS[role], _OUTER_FLAGS[unit.category]
        wanted, actual = getattr(config, flag), getattr(config, governing)
        if wanted != actual:
            notes.append(
                f"{flag}={wanted} does not apply to {alias}: it is tied to {name}, which "
                f"{'trains' if actual else 'stays frozen'} as {governing}={actual} says"
            )
    return notes


def select(model: nn.Module, config: HFTConfig | None = None) -> HFTMask:
    """Draw the mask of ``config`` (default: the paper's rule at 0.5) for ``model``."""
    config = config or HFTConfig()
    if not isinstance(config, HFTConfig):
        raise HFTError(f"config must be an HFTConfig, got {type(config).__name__}")
    config.require_stage("select()")
    strategy = catalog.strategy(config.strategy)
    partitioned = partition(model, guess=config.guess_layout, whole_tensors=config.whole_tensors)
    if partitioned.guessed:
        _warn_once(
            model,
            f"guess_layout: {len(partitioned.guessed)} part(s) of {type(model).__name__} were "
            f"guessed, first: {partitioned.guessed[0]}",
        )
    if not partitioned.block_units():
        raise HFTError(f"no trainable matrices found in the blocks of {type(model).__name__}")
    rng = random.Random(f"hft:{config.strategy}:{config.seed}:{config.stage}")
    chosen = set(strategy(partitioned, config, rng))
    block_keys = {u.key for u in partitioned.block_units()}
    stray = chosen - block_keys
    if stray:
        raise HFTError(
            f"strategy {config.strategy!r} chose a unit that is no block matrix: "
            f"{sorted(stray)[0]!r}"
        )
    for unit in partitioned.units:
        if unit.block is None and getattr(config, _OUTER_FLAGS[unit.category]):
            chosen.add(unit.key)
    mask = HFTMask(config, partitioned, frozenset(chosen))
    done, total = mask.fractions()["blocks"]
    if abs(done / total - config.ratio) > RATIO_TOLERANCE:
        _warn_once(
            model,
            f"strategy {config.strategy!r} trains {done / total:.4f} of the blocks' parameters, "
            f"not the requested ratio {config.ratio} ({partitioned.num_blocks} blocks)",
        )
    for note in _tied_overrides(model, partitioned, config):
        _warn_once(model, note)
    return mask


class HFTMask:
    """A drawn half: units of a model and which of them train."""

    def __init__(self, config: HFTConfig, partition: Partition, trainable: frozenset[str]):
        self.config = config
        self.partition = partition
        self.trainable = trainable

    # ---- what trains -------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return self.partition.fingerprint

    def params(self) -> dict[str, Slices | None]:
        """Trainable parameter name -> None (whole) or the trainable Slices.

        Worked out once per mask (applying it, the optimizer and the sliced backward all
        ask); a new dict each call.
        """
        cached = self.__dict__.get("_plan")
        if cached is None or cached[0] is not self.trainable or cached[1] is not self.partition:
            cached = self._plan = (self.trainable, self.partition, self._work_out_params())
        return dict(cached[2])

    def _work_out_params(self) -> dict[str, Slices | None]:
        pieces: dict[str, list[Part]] = defaultdict(list)
        for unit in self.partition.units:
            if unit.key in self.trainable:
                for part in unit.parts:
                    pieces[part.param].append(part)
        plan: dict[str, Slices | None] = {}
        for name, parts in pieces.items():
            if any(p.ranges is None for p in parts):
                plan[name] = None
                continue
            dim = parts[0].dim
            size = self.partition.shapes[name][dim]
            if all(p.step == 1 for p in parts):
                merged = _merge([r for p in parts for r in p.ranges])
                plan[name] = None if merged == ((0, size),) else Slices(dim, merged)
                continue
            covered = {i for p in parts for a, b in p.ranges for i in range(a, b, p.step)}
            if len(covered) == size:
                plan[name] = None
            elif len({p.step for p in parts}) == 1:
                ranges = tuple(sorted(r for p in parts for r in p.ranges))
                plan[name] = Slices(dim, ranges, parts[0].step)
            else:
                raise HFTError(f"units of {name!r} mix strided and plain slices; cannot train both")
        return plan

    def is_trainable(self, unit: Unit) -> bool:
        return unit.key in self.trainable

    def fractions(self) -> dict[str, tuple[int, int]]:
        """Category (and 'blocks', 'total') -> (trainable, all) parameter counts."""
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for unit in self.partition.units:
            keys = [unit.category, "total"] + (["blocks"] if unit.block is not None else [])
            for key in keys:
                counts[key][1] += unit.numel
                if unit.key in self.trainable:
                    counts[key][0] += unit.numel
        return {k: (v[0], v[1]) for k, v in counts.items()}

    @property
    def trainable_numel(self) -> int:
        return self.fractions()["total"][0]

    @property
    def total_numel(self) -> int:
        return self.fractions()["total"][1]

    # ---- applying ----------------------------------------------------------

    def check(self, model: nn.Module) -> None:
        """Raise if ``model`` is not the model this mask was drawn for."""
        check_same_shapes(
            shapes(model),
            self.partition.shapes,
            missing="mask does not match the model: parameter {name} is missing",
            shape="mask does not match the model: parameter {name} has shape {have}, "
            "the mask expects {want}",
            extra="mask does not match the model: parameter {name} is not in it",
        )

    def apply(self, model: nn.Module) -> nn.Module:
        """Set ``requires_grad``: True where any part trains (slices need HFTOptimizer).

        The ``mask_applied`` hook fires when this changes what trains or is another mask
        than the one applied last: applying the same mask again (a trainer, then the
        optimizer it builds) is one application.
        """
        self.check(model)
        plan = self.params()
        changed = False
        for name, param in model.named_parameters():
            if param.requires_grad != (name in plan):
                param.requires_grad_(name in plan)
                changed = True
        try:
            again = not changed and _applied.get(model) == self
            _applied[model] = self
        except TypeError:  # not weakly referenceable
            again = False
        if not again:
            notify("mask_applied", model=model, mask=self)
        return model

    # ---- reporting ---------------------------------------------------------

    def summary(self) -> str:
        """A per-block table of what trains, then totals per category."""
        c = self.config
        by_block: dict[int, list[Unit]] = defaultdict(list)
        for unit in self.partition.block_units():
            by_block[unit.block].append(unit)
        present = {u.category for u in self.partition.block_units()}
        columns = [cat for cat in BLOCK_CATEGORIES if cat in present]
        rows = [("block", *columns, "trained")]
        for block in sorted(by_block):
            units = by_block[block]
            cells = [str(block)]
            for cat in columns:
                mine = [u.name for u in units if u.category == cat]
                names = [
                    _short(u.name, mine)
                    for u in units
                    if u.category == cat and u.key in self.trainable
                ]
                total = sum(u.category == cat for u in units)
                cells.append(f"{len(names)}/{total} " + ",".join(names) if total else "-")
            done = sum(u.numel for u in units if u.key in self.trainable)
            cells.append(f"{done / max(sum(u.numel for u in units), 1):.4f}")
            rows.append(tuple(cells))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            f"HFT mask: strategy={c.strategy} ratio={c.ratio} seed={c.seed} stage={c.stage} "
            f"layout={self.partition.sorted_by} blocks={self.partition.num_blocks}"
        ]
        for row in rows:
            middle = zip(row[1:-1], widths[1:-1], strict=True)
            lines.append(
                f"{row[0]:>{widths[0]}}  "
                + "  ".join(f"{cell:<{w}}" for cell, w in middle)
                + f"  {row[-1]:>{widths[-1]}}"
            )
        fractions = self.fractions()
        lines.append("category     trainable / all        fraction")
        for cat in (*BLOCK_CATEGORIES, "blocks", *OUTER_CATEGORIES, "total"):
            if cat in fractions:
                done, total = fractions[cat]
                lines.append(f"{cat:<12} {done:>12,} / {total:<12,} {done / total:.4f}")
        done, total = fractions["blocks"]
        gap = done / total - c.ratio
        if abs(gap) < 1e-12:
            verdict = "exact"
        else:
            within = "within" if abs(gap) <= RATIO_TOLERANCE else "beyond"
            verdict = f"{gap:+.6f} from it, {within} the {RATIO_TOLERANCE} tolerance"
        lines.append(f"block fraction {done / total:.6f} (ratio {c.ratio}; {verdict})")
        for alias, name in sorted(self.partition.tied.items()):
            lines.append(f"tied: {alias} shares {name}; it trains when {name} does")
        for guess in self.partition.guessed:
            lines.append(f"guessed: {guess}")
        return "\n".join(lines)

    # ---- JSON --------------------------------------------------------------

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "layout": self.partition.sorted_by,
            "num_blocks": self.partition.num_blocks,
            "fingerprint": self.fingerprint,
            "shapes": {n: list(s) for n, s in self.partition.shapes.items()},
            "tied": self.partition.tied,
            "guessed": list(self.partition.guessed),
            "units": [
                {
                    "key": u.key,
                    "block": u.block,
                    "category": u.category,
                    "name": u.name,
                    "numel": u.numel,
                    "parts": [p.to_json() for p in u.parts],
                    "trainable": u.key in self.trainable,
                }
                for u in self.partition.units
            ],
        }

    @classmethod
    def from_json(cls, data: dict) -> HFTMask:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise HFTError(f"not an HFT mask: expected format {FORMAT!r}")
        try:
            saved_shapes = {n: tuple(int(x) for x in s) for n, s in data["shapes"].items()}
            if fingerprint(saved_shapes) != data["fingerprint"]:
                raise HFTError("corrupt HFT mask: its fingerprint does not match its shapes")
            units = [
                Unit(
                    u["key"],
                    u["block"],
                    u["category"],
                    u["name"],
                    tuple(Part.from_json(p) for p in u["parts"]),
                    int(u["numel"]),
                )
                for u in data["units"]
            ]
            trainable = frozenset(u["key"] for u in data["units"] if u["trainable"])
            partitioned = Partition(
                data["layout"],
                units,
                int(data["num_blocks"]),
                saved_shapes,
                dict(data["tied"]),
                tuple(data.get("guessed", ())),
            )
            config = HFTConfig.from_dict(data["config"])
        except HFTError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HFTError(f"corrupt HFT mask: {type(exc).__name__}: {exc}") from None
        return cls(config, partitioned, trainable)

    def save(self, path: str | os.PathLike) -> None:
        """Write the mask as JSON atomically (a temporary file beside it, then rename)."""
        atomic_write_text(Path(path), json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> HFTMask:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise HFTError(f"no HFT mask at {path}") from None
        except OSError as exc:  # a directory, no permission...
            raise HFTError(f"cannot read HFT mask {path}: {exc.strerror or exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HFTError(f"corrupt HFT mask {path}: {exc}") from None
        return cls.from_json(data)

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, HFTMask)
            and self.config == other.config
            and self.fingerprint == other.fingerprint
            and self.trainable == other.trainable
        )

    def __repr__(self) -> str:
        done, total = self.fractions()["blocks"]
        return (
            f"HFTMask(strategy={self.config.strategy!r}, stage={self.config.stage}, "
            f"blocks trainable {done}/{total})"
        )

    def trainable_parts(self) -> dict[str, tuple[Part, ...] | None]:
        """Trainable parameter name -> None (a unit trains it whole) or its trainable units'
        parts, in order and not merged (unlike :meth:`params`).

        A unit's ranges are fixed for a model, so optimizer state kept per unit range
        survives a redraw that changes which of the unit's neighbours train.
        """
        parts: dict[str, list[Part]] = defaultdict(list)
        for unit in self.partition.units:
            if unit.key in self.trainable:
                for part in unit.parts:
                    parts[part.param].append(part)
        return {
            name: None
            if any(p.ranges is None for p in found)
            else tuple(sorted(found, key=lambda p: (p.dim, p.ranges)))
            for name, found in parts.items()
        }


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[list[int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return tuple((a, b) for a, b in merged)


def _short(name: str, siblings: list[str]) -> str:
    """The last piece of a unit's name, or the last two where that is ambiguous (a decoder
    block's self- and cross-attention both have a ``q``)."""
    last = name.rsplit(".", 1)[-1]
    if sum(s.rsplit(".", 1)[-1] == last for s in siblings) > 1:
        return ".".join(name.rsplit(".", 2)[-2:])
    return last
