"""Sorting one block's parameters into units by the role of the modules that hold them.

A registered layout names a family's modules; everything it does not name (and every
module of a family without a layout) is sorted here, from the names and classes along
each parameter's module path, the shallowest one that tells: a norm, attention, a
state-space or other sequence mixer, a feed-forward network, its routed experts (fused
3-D tensors split into gate/up/down by the metadata transformers attaches to them),
shared experts, the router. What cannot be told is reported as an issue, never guessed
silently: a parameter no rule places, a fused projection whose split is not known, a
large category that is a single matrix (no half of it can be drawn). A family's own
module names are taught by its layouts (``Layout.sorter_roles``, ``sorter_splits``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from .layouts import ExpertStorage, SorterSplit
from .shapes import shape_of
from .units import Part

_MIXER_WORDS = (
    "mamba",
    "ssm",
    "linear_attn",
    "linearattention",
    "deltanet",
    "rwkv",
    "recurrent",
    "rglru",
    "lstm",
    "shortconv",
    "hyena",
    "retention",
)
_MIXER_TOKENS = {"conv", "time_mix"}
_ATTENTION_WORDS = ("attn", "attention")
_FFN_WORDS = ("mlp", "ffn", "feed_forward", "feedforward", "expert", "moe", "densereludense")
_FFN_TOKENS = {"fc", "fc1", "fc2", "c_fc", "wi", "wo", "w1", "w2", "w3", "gate_proj", "up_proj"}
_FFN_TOKENS |= {"down_proj", "dense_h_to_4h", "dense_4h_to_h"}
_ROUTER_NAMES = {"gate", "router", "gating", "wg", "gate_network", "switch"}
_FUSED_ATTENTION = {"qkv", "qkv_proj", "c_attn", "query_key_value", "wqkv", "w_pack", "kv_proj"}
_FUSED_ATTENTION |= {"qkv_linear", "key_value", "kv", "in_proj", "qkv_a_proj"}
_FUSED_GATE_UP = {"gate_up_proj", "gate_up", "w12", "w13", "fc_gate_up"}
_NUMBER = re.compile(r"^\d+$")


@dataclass(frozen=True)
class PlannedUnit:
    """A unit of one block before its parameters are prefixed: block-relative names."""

    category: str
    name: str
    parts: tuple[Part, ...]  # with block-relative parameter names


def is_norm(name: str, module: nn.Module) -> bool:
    """A normalisation layer, by class or by its attribute name."""
    leaf = name.rsplit(".", 1)[-1].lower()
    return "norm" in type(module).__name__.lower() or "norm" in leaf or leaf.startswith("ln")


def _role(token: str, module: nn.Module, taught: Mapping[str, str]) -> str | None:
    """What one level of a module path says about the parameters below it, if anything.

    The attribute name speaks first (``feed_forward`` of an RWKV block is its FFN though
    its class is ``RwkvFeedForward``), a name a layout ``taught`` before any other; a
    generic one (``mixer``, ``layer.0``) defers to the class of the module it holds.
    """
    token, cls = token.lower(), type(module).__name__.lower()
    if "norm" in token:
        return None  # a norm's name (post_attention_layernorm) says nothing of what it holds
    generic = token in ("mixer", "block", "layer", "module") or _NUMBER.match(token)
    if cls.endswith(("decoderlayer", "encoderlayer")):
        cls = ""  # a whole block nested in a block (Zamba's shared transformer) says nothing
    if not generic:
        if token in taught:
            return taught[token]
        if any(w in token for w in _MIXER_WORDS) or token in _MIXER_TOKENS:
            return "mixer"
        if any(w in token for w in _ATTENTION_WORDS):
            return "attention"
        if any(w in token for w in _FFN_WORDS) or token in _FFN_TOKENS:
            return "ffn"
        if token.startswith(("intermediate", "output", "per_layer")):
            return "ffn"  # BERT's intermediate/output; Gemma's per-layer-input gate
    if any(w in cls for w in _ATTENTION_WORDS):
        linear = any(w in cls for w in ("linear", "deltanet", "lightning"))
        return "mixer" if linear else "attention"
    if any(w in cls for w in _FFN_WORDS) or cls.endswith("ff"):
        return "ffn"
    if any(w in cls for w in _MIXER_WORDS) or "mixer" in cls:
        return "mixer"
    return None


def _has_experts(block: nn.Module) -> bool:
    for name, param in block.named_parameters():
        if len(shape_of(param)) == 3 or "expert" in name.lower():
            return True
    return False


def _routes(pieces: list[str]) -> bool:
    """A router's path: ``mlp.gate``, ``mlp.router``, ``shared_expert_gate``; not a module
    inside an expert (``experts.0.gate`` is that expert's gate projection)."""
    for piece in pieces:
        if piece in _ROUTER_NAMES or (
            piece.endswith(("_gate", "router")) and not piece.startswith("expert")
        ):
            return True
        if "expert" in piece:
            return False
    return False


def _normalise(path: str) -> str:
    """Name each expert of a list or dict of experts '*': its matrices are units together."""
    pieces = path.split(".")
    for i in range(1, len(pieces)):
        if _NUMBER.match(pieces[i]) and "expert" in pieces[i - 1].lower():
            pieces[i] = "*"
        elif re.fullmatch(r"expert_?\d+", pieces[i].lower()) and "expert" in pieces[i - 1].lower():
            pieces[i] = "*"
    return ".".join(pieces)


class BlockSorter:
    """Sort the parameters of one block that a layout did not claim.

    ``experts``: how the block's expert modules store their tensors, by path, where they do
    not say; ``roles`` and ``splits``: what the layouts of the model's type teach.
    """

    def __init__(
        self,
        block: nn.Module,
        experts: Mapping[str, ExpertStorage],
        context: str = "",
        roles: Mapping[str, str] | None = None,
        splits: Mapping[str, SorterSplit] | None = None,
    ):
        self.block = block
        self.context = context  # the stack's name: XLM keeps "attentions" and "ffns" apart
        self.sections: dict[str, str] = {}  # unit name -> path of the module that told its role
        self.vouched: set[str] = set()  # units a registered layout planned
        self.expert_storage = experts
        self.roles = roles or {}
        self.splits = splits or {}
        self.modules = dict(block.named_modules())
        self.experts = _has_experts(block)
        self.units: dict[str, PlannedUnit] = {}
        self.issues: list[str] = []

    # ---- one module's role ------------------------------------------------

    def _role_and_section(self, path: str) -> tuple[str | None, str]:
        """The category, and the path of the module that told it (the attention, the FFN)."""
        module = self.modules[path]
        if is_norm(path, module):
            return "norm", path
        pieces = path.split(".") if path else []
        lowered = [p.lower() for p in pieces]
        shared = any(p.startswith("shared_expert") or p == "shared_mlp" for p in lowered)
        # (a shared expert's own router, shared_expert_gate, is a router: checked first)
        if self.experts and _routes(lowered) and self._outside_attention(pieces):
            return "router", path
        if shared:
            depth = next(
                i for i, p in enumerate(lowered) if p.startswith("shared_") or p == "shared"
            )
            return "shared_ffn", ".".join(pieces[: depth + 1])
        for depth in range(1, len(pieces) + 1):
            section = ".".join(pieces[:depth])
            found = _role(pieces[depth - 1], self.modules[section], self.roles)
            if found:
                return found, section
        if self.context:
            return _role(self.context, self.block, self.roles), ""
        return None, ""

    def _outside_attention(self, pieces: list[str]) -> bool:
        """No attention on the path: an attention's ``output_gate`` is no router."""
        return not any(
            _role(pieces[d - 1], self.modules[".".join(pieces[:d])], self.roles)
            in ("attention", "mixer")
            for d in range(1, len(pieces) + 1)
        )

    # ---- units ------------------------------------------------------------

    def add(self, category: str, name: str, parts: list) -> None:
        name = _normalise(name)
        if name in self.units:
            old = self.units[name]
            self.units[name] = PlannedUnit(category, name, old.parts + tuple(parts))
        else:
            self.units[name] = PlannedUnit(category, name, tuple(parts))

    def sort(self, params: dict[str, nn.Parameter]) -> None:
        """Place ``params`` (block-relative name -> parameter) into units, or report them."""
        by_owner: dict[str, list[str]] = {}
        for name in params:
            by_owner.setdefault(name.rpartition(".")[0], []).append(name)
        for path, names in by_owner.items():
            module = self.modules[path]
            category, section = self._role_and_section(path)
            for name in names:
                self.sections[_normalise(name.rpartition(".")[0])] = section
            if category is None and not path and all(len(shape_of(params[n])) <= 1 for n in names):
                category = "scale"  # vectors the block holds itself: residual scales, lambdas
                for name in names:
                    self.add(category, name, [Part(name)])
                continue
            if category is None:
                self.issues.append(f"no rule places parameter {names[0]!r}")
                for name in names:
                    self.add("other", name, [Part(name)])
                continue
            leaf = path.rpartition(".")[2].lower()
            has_children = any(True for _ in module.children())
            if any(len(shape_of(params[n])) == 3 for n in names) and category in (
                "ffn",
                "shared_ffn",
            ):
                self._experts(path, module, names, params, category)
            elif has_children or isinstance(module, nn.MultiheadAttention):
                self._loose(path, module, names, category)
            elif split := self._taught_split(path, module):
                for logical, ranges in split.items():
                    self.add(category, f"{path}[{logical}]", [Part(n, 0, ranges) for n in names])
            elif category == "attention" and isinstance(module, nn.Embedding):
                # a table of position biases (relative position buckets), not a projection
                self.add("scale", path, [Part(n) for n in names])
            else:
                if category == "attention" and leaf in _FUSED_ATTENTION:
                    self.issues.append(f"fused attention projection {path!r} has no known split")
                if category in ("ffn", "shared_ffn") and leaf in _FUSED_GATE_UP:
                    self.issues.append(f"fused gate/up projection {path!r} has no known split")
                for stem, group in _stems(path, names).items():
                    self.add(category, stem, [Part(n) for n in group])

    def _taught_split(self, path: str, module: nn.Module) -> dict | None:
        """The ranges of a leaf projection a layout taught to split (by the sizes of the module
        holding it); None where none was taught or those sizes do not describe it."""
        split = self.splits.get(path.rpartition(".")[2])
        weight = getattr(module, "weight", None)
        if split is None or weight is None or len(shape_of(weight)) != 2:
            return None
        return split(self.modules[path.rpartition(".")[0]], shape_of(weight)[0])

    def _loose(self, path: str, module: nn.Module, names: list[str], category: str) -> None:
        """Parameters a container module holds itself (sinks, A_log, in_proj_weight...).

        Vectors of an attention or FFN (gpt-oss sinks, gates, lambdas) are scales, not
        matrices; a mixer's own vectors (A_log, D, dt_bias) are its state-space parameters.
        """
        for name in names:
            leaf = name.rpartition(".")[2]
            vector = len(shape_of(self.block.get_parameter(name))) <= 1
            if vector and category in ("attention", "ffn", "shared_ffn"):
                self.add("scale", name, [Part(name)])
            elif category == "attention" and "in_proj" in leaf:
                self.issues.append(f"fused attention projection {name!r} has no known split")
                self.add(category, name, [Part(name)])
            else:
                self.add(category, name, [Part(name)])

    def _experts(self, path, module, names, params, category) -> None:
        """Routed experts stored as 3-D tensors [experts, ...]: one unit per logical matrix,
        each across all experts; a fused gate/up tensor splits as the module stores it."""
        storage = self.expert_storage.get(path) or ExpertStorage.of(module)
        biases = {n for n in names if n.endswith("_bias") and n[: -len("_bias")] in names}
        for name in names:
            if name in biases:
                continue
            bias = f"{name}_bias" if f"{name}_bias" in biases else None
            leaf = name.rpartition(".")[2]
            fused = leaf.lower() in _FUSED_GATE_UP or (storage and leaf == storage.fused_name)
            if len(shape_of(params[name])) != 3 or not fused:
                parts = [Part(name)] + ([Part(bias)] if bias else [])
                self.add(category, name, parts)
                continue
            if storage is None or not storage.has_gate:
                self.issues.append(
                    f"fused expert tensor {name!r} has no known gate/up layout "
                    "(no has_gate/is_transposed/is_concatenated metadata or registered layout)"
                )
                self.add(
                    category,
                    name,
                    [Part(name)] + ([Part(bias)] if bias else []),
                )
                continue
            out_dim = 2 if storage.transposed else 1
            width = shape_of(params[name])[out_dim]
            if storage.concatenated:
                pieces, step = {"gate": ((0, width // 2),), "up": ((width // 2, width),)}, 1
            else:  # interleaved: gate at even, up at odd output features
                pieces, step = {"gate": ((0, width),), "up": ((1, width),)}, 2
            for logical, ranges in pieces.items():
                parts = [Part(name, out_dim, ranges, step)]
                if bias:
                    parts.append(Part(bias, 1, ranges, step))
                self.add(category, f"{name}[{logical}]", parts)

    # ---- checks -----------------------------------------------------------

    def _check_fused_by_shape(self) -> None:
        """Fused projections under names no rule knows, told by their shapes: an attention
        of two matrices (q, k and v in one), or a two-matrix FFN whose first projects to
        twice the second's input (gate and up in one, a GLU)."""
        groups: dict[tuple[str, str], list[PlannedUnit]] = {}
        for unit in self.units.values():
            if unit.category in ("attention", "ffn", "shared_ffn"):
                section = self.sections.get(unit.name, unit.name.rpartition(".")[0])
                groups.setdefault((unit.category, section), []).append(unit)
        for (category, parent), units in groups.items():
            if any(u.name in self.vouched or "[" in u.name for u in units):
                continue  # a registered layout or a known split named its matrices
            shapes = [_matrix(self.block, u) for u in units]
            named = {u.name.rpartition(".")[2].lower() for u in units}
            if None in shapes or len(units) != 2 or named & (_FUSED_ATTENTION | _FUSED_GATE_UP):
                continue  # reported by name already
            if category == "attention":
                self.issues.append(
                    f"attention {parent!r} has two matrices: one must fuse q, k and v, "
                    "and its split is not known"
                )
            elif shapes[0][0] == 2 * shapes[1][1]:
                self.issues.append(
                    f"{units[0].name!r} projects to twice {units[1].name!r}'s input: a fused "
                    "gate/up projection whose split is not known"
                )

    def check(self, numel) -> None:
        """Report what no draw could halve: a large category that is one matrix, or an
        attention or GLU feed-forward whose matrices are fused without a known split."""
        by_category: dict[str, list[PlannedUnit]] = {}
        for unit in self.units.values():
            by_category.setdefault(unit.category, []).append(unit)
        self._check_fused_by_shape()
        total = sum(numel(u) for u in self.units.values()) or 1
        for category, units in by_category.items():
            if category in ("norm", "router", "scale"):
                for unit in units:  # small by nature: a large matrix here was misread
                    shapes = [shape_of(self.block.get_parameter(p.param)) for p in unit.parts]
                    limit = 0.4 if category == "router" else 0.05  # a router may be an MLP
                    if numel(unit) > limit * total and any(len(s) >= 2 for s in shapes):
                        self.issues.append(
                            f"{unit.name!r} was read as a {category} but holds "
                            f"{numel(unit) / total:.0%} of the block"
                        )
                continue
            if category == "other":
                continue
            size = sum(numel(u) for u in units)
            largest = max(units, key=numel)
            if size >= 0.1 * total and (len(units) == 1 or numel(largest) > 0.75 * size):
                self.issues.append(
                    f"{category} is dominated by one matrix {largest.name!r} "
                    f"({numel(largest) / size:.0%} of it): no half of it can be drawn"
                )


def _stems(path: str, names: list[str]) -> dict[str, list[str]]:
    """A leaf module's parameters by matrix: ``weight`` with ``bias``, ``x_weight`` with
    ``x_bias`` (an RG-LRU's two gates are two units)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        leaf = name.rpartition(".")[2]
        stem = re.sub(r"_?(weight|bias)$", "", leaf)
        groups.setdefault(f"{path}.{stem}" if stem else path, []).append(name)
    return groups


def _matrix(block: nn.Module, unit: PlannedUnit) -> tuple[int, ...] | None:
    """The shape of a unit's weight when it is one whole 2-D matrix, else None."""
    if len(unit.parts) > 2 or any(p.ranges is not None for p in unit.parts):
        return None
    shapes = [shape_of(block.get_parameter(p.param)) for p in unit.parts]
    matrices = [s[-2:] for s in shapes if len(s) in (2, 3)]  # an expert tensor: one expert's
    return matrices[0] if len(matrices) == 1 else None
