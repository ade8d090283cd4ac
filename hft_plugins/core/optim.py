"""A torch optimizer that keeps state only for the trainable half.

Whole trainable tensors go to the wrapped optimizer as they are. A partly trainable
tensor (a slice of a fused projection) goes to it one trainable range at a time, so the
wrapped optimizer's moments have the range's shape. A contiguous range (rows) is handed
over as a view: updates land in place. A row range of routed experts' 3-D tensor is one
contiguous block per expert, handed over as that many views. Any other range (GPT-2's
column slices, gpt-oss's interleaved gate and up, a shard of FSDP2's) is handed over as a
contiguous copy that :meth:`HFTOptimizer.step` refreshes from the parameter and writes
back, because torch's fused kernels write past the bounds of non-contiguous views. Frozen
tensors and frozen slices are never handed to the wrapped optimizer, so no decay or
momentum reaches them.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
import weakref
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..registry import notify
from . import sliced_grad
from .errors import HFTError
from .mask import HFTMask
from .units import Part, Slices, range_key, range_view

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # torch built without distributed support: no DTensors exist

    class DTensor:
        """Never instantiated: keeps the isinstance checks false."""


FORMAT = "hft-optimizer/2"  # state keyed by parameter name, and by each unit's range
# The HF Trainer's rule (Trainer.get_decay_parameter_names): no decay for these.
_NO_DECAY_PATTERNS = [
    re.compile(p)
    for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
]


@dataclass
class _Entry:
    """One tensor the wrapped optimizer steps, for a whole parameter or a range of it.

    ``part`` is that piece of the parameter as a plain tensor (of this rank's shard under
    FSDP2, so torch's foreach and fused kernels never see DTensors and plain tensors
    together). ``tensor`` is what the wrapped optimizer holds: the parameter itself, or
    ``part`` when contiguous, else a contiguous copy of it (see :meth:`HFTOptimizer.step`).
    ``local`` is the range, one of this process's tensor (its shard), for a range;
    ``expert`` the index along dim 0 of that range's view, for one expert's block of it.
    """

    key: str  # the state key: the parameter's name, with its range for a range
    name: str  # the parameter's name
    param: nn.Parameter
    part: torch.Tensor
    tensor: torch.Tensor
    local: Slices | None
    expert: int | None = None

    @property
    def copied(self) -> bool:
        return self.tensor is not self.part

    def grad_of(self, grad: torch.Tensor) -> torch.Tensor:
        """This entry's part of the parameter's (local) gradient: a view, no copy."""
        grad = _local(grad)
        return grad if self.local is None else _view(grad, self.local, self.expert)


def _view(tensor: torch.Tensor, one_range: Slices, expert: int | None = None) -> torch.Tensor:
    """The view of ``tensor`` that a one-range :class:`Slices` selects."""
    ((start, stop),) = one_range.ranges
    view = range_view(tensor, one_range.dim, start, stop, one_range.step)
    return view if expert is None else view[expert]


def _entry(
    key: str, name: str, param: nn.Parameter, local: Slices | None, expert: int | None = None
) -> _Entry:
    """A contiguous piece is stepped in place; any other through a contiguous copy, since
    torch's fused kernels write past the bounds of a non-contiguous tensor."""
    if local is None and not isinstance(param, DTensor) and param.is_contiguous():
        return _Entry(key, name, param, param, param, None)
    part = _local(param).detach()
    if local is not None:
        part = _view(part, local, expert)
    tensor = part if part.is_contiguous() else part.clone(memory_format=torch.contiguous_format)
    return _Entry(key, name, param, part, tensor, local, expert)


def _range_entries(key: str, name: str, param: nn.Parameter, local: Slices) -> list[_Entry]:
    """One entry for a range, or one per expert (``key[e]``) for a row range of a 3-D
    experts tensor: each expert's rows are contiguous there, so stepping them in place
    saves copying the whole range in and out at every step. FSDP2's shards keep one
    entry, so that every rank has the same state keys."""
    if (
        param.dim() == 3
        and local.dim == 1
        and local.step == 1
        and not isinstance(param, DTensor)
        and param.is_contiguous()
    ):
        return [_entry(f"{key}[{e}]", name, param, local, e) for e in range(param.shape[0])]
    return [_entry(key, name, param, local)]


def qualified_name(obj) -> str:
    """``module.QualName`` of a class: bitsandbytes' ``AdamW`` must not read as torch's."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{name}" if module and name else repr(obj)


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameter names the HF Trainer excludes from weight decay: biases and norms."""
    names = set()
    for module_name, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{pname}" if module_name else pname
            if isinstance(module, nn.LayerNorm) or any(
                p.search(full.lower()) for p in _NO_DECAY_PATTERNS
            ):
                names.add(full)
    return names


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a DTensor (FSDP2 shards), the tensor itself otherwise."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _local_ranges(name: str, param: torch.Tensor, parts: tuple[Part, ...]):
    """(state key, the range in this process's tensor) per trainable unit range.

    Ranges are the units' own, not merged, so a unit's key (``name[dim:start:stop]``, with
    ``:step`` for a strided range) and state stay the same whichever of its neighbours
    train. A DTensor sharded by FSDP2 holds one box of the full tensor; each range is cut
    to the part inside it (possibly empty) so the update lands in the local shard. Keys
    name the full-tensor range, so every rank's optimizer state has the same keys.
    """
    ranges = sorted((p.dim, a, b, p.step) for p in parts for a, b in p.ranges)
    dim, taken = ranges[0][0], set()
    for d, a, b, step in ranges:
        if d != dim or not taken.isdisjoint(range(a, b, step)):
            raise HFTError(
                f"the units of {name} have overlapping ranges or ranges along different dims; "
                "HFTOptimizer needs disjoint ranges along one dim"
            )
        taken.update(range(a, b, step))
    start, stop = 0, param.shape[dim]
    if isinstance(param, DTensor):
        kinds = {type(p) for p in param.placements}
        if not kinds <= {Shard, Replicate}:
            raise HFTError(
                f"{name} is a DTensor placed as {list(param.placements)}; sliced HFT masks "
                "support only Shard and Replicate placements (FSDP2's default)"
            )
        shape, offset = compute_local_shape_and_global_offset(
            param.shape, param.device_mesh, param.placements
        )
        start, stop = offset[dim], offset[dim] + shape[dim]
    found = []
    for _, a, b, step in ranges:
        first = a if a >= start else a + -(-(start - a) // step) * step  # first index here
        last = min(b, stop)
        local = ((first - start, last - start),) if first < last else ((0, 0),)
        key = range_key(name, dim, a, b, step)
        found.append((key, Slices(dim, local, step if first < last else 1)))
    return found


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of tensor state ``optimizer`` holds in this process (a sharded tensor: its shard)."""
    if isinstance(optimizer, HFTOptimizer):
        optimizer = optimizer.inner
    return sum(
        _local(v).numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if torch.is_tensor(v)
    )


def _frozen_index(entries: list[_Entry]) -> torch.Tensor | None:
    """The indices along the sliced dim that no entry of one parameter trains (or None)."""
    dim = entries[0].local.dim
    trained = torch.zeros(entries[0].param.shape[dim], dtype=torch.bool)
    for entry in entries:
        ((start, stop),) = entry.local.ranges
        trained[start : stop : entry.local.step] = True
    frozen = (~trained).nonzero().flatten()
    return frozen.to(entries[0].param.device) if len(frozen) else None


class _SliceGradHook:
    """Post-accumulate-grad hook of one parameter stepped through views or copies
    (see _hook_sliced_grads). It holds no reference to the optimizer."""

    def __init__(self, entries: list[_Entry], frozen: torch.Tensor | None):
        self.entries, self.frozen = entries, frozen

    @torch.no_grad()
    def __call__(self, param: torch.Tensor) -> None:
        if param.grad is None:
            return
        if self.frozen is not None:
            param.grad.index_fill_(self.entries[0].local.dim, self.frozen, 0)
        for entry in self.entries:
            # a view even for a copied entry: unscaling (GradScaler) must reach param.grad
            entry.tensor.grad = entry.grad_of(param.grad)


# model -> the finalizer of the HFTOptimizer whose hooks and sliced backward it carries
_LIVE: weakref.WeakKeyDictionary[nn.Module, weakref.finalize] = weakref.WeakKeyDictionary()


def release(model: nn.Module) -> None:
    """Take an HFTOptimizer's gradient hooks and sliced backward off ``model`` (closing the
    optimizer), so that later training of the model gets its full gradients.

    ``requires_grad`` stays as the mask set it.
    """
    live = _LIVE.pop(model, None)
    if live is not None:
        live()
    sliced_grad.uninstall(model)


def _release(model_ref: weakref.ref, grad_hooks: list) -> None:
    """An optimizer's clean-up; it must not refer to the optimizer (it runs when that dies)."""
    for handle in grad_hooks:
        handle.remove()
    grad_hooks.clear()
    model = model_ref()
    if model is not None:
        sliced_grad.uninstall(model)


class HFTOptimizer(torch.optim.Optimizer):
    """Wrap ``optimizer_cls`` so that only the mask's trainable parts have state and move.

    ``HFTOptimizer(model, mask, torch.optim.AdamW, lr=2e-5, weight_decay=0.1)``;
    at a stage boundary ``redraw(new_mask)``. Weight decay goes to the HF
    Trainer's decay group only (biases and norm weights get none, even by default). With
    ``sliced_grad`` (default) partly trainable fused projections and routed experts compute
    their weight gradient only for the trainable slices (see :mod:`hft_plugins.core.sliced_grad`).

    Its gradient hooks and the sliced backward change how the model backpropagates; they
    leave the model with the optimizer: at :meth:`close` (or the end of a ``with`` block),
    when it is garbage-collected, or when another HFTOptimizer is built on the same model.
    """

    def __init__(
        self,
        model: nn.Module,
        mask: HFTMask,
        optimizer_cls=torch.optim.AdamW,
        *,
        sliced_grad: bool = True,
        **kwargs,
    ):
        if not isinstance(sliced_grad, bool):
            raise HFTError(f"sliced_grad must be True or False, got {sliced_grad!r}")
        if not isinstance(mask, HFTMask):
            raise HFTError(f"mask must be an hft_plugins HFTMask, got {type(mask).__name__}")
        if not (
            isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)
        ):
            raise HFTError(f"optimizer_cls must be a torch optimizer class, got {optimizer_cls!r}")
        self.model = model
        self.optimizer_cls = optimizer_cls
        self.optimizer_kwargs = dict(kwargs)
        self.sliced_grad = sliced_grad
        self.mask = mask
        self._no_decay = no_decay_names(model)
        entries, inner = self._prepare(mask)  # may raise: nothing on the model changed yet
        release(model)  # a previous optimizer's hooks would zero what this one trains
        self._grad_hooks: list = []
        self._finalizer = weakref.finalize(self, _release, weakref.ref(model), self._grad_hooks)
        self._finalizer.atexit = False
        _LIVE[model] = self._finalizer
        self._attach(mask, entries, inner)
        # The base class gives us its hook registries; the groups and state are the inner ones.
        super().__init__([e.tensor for e in self._entries] or [torch.zeros(0)], self.inner.defaults)
        self._share_inner()
        self._stage_open = False
        self.begin_stage()

    def _share_inner(self) -> None:
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state
        self.defaults = self.inner.defaults

    def _prepare(self, mask: HFTMask) -> tuple[list[_Entry], torch.optim.Optimizer]:
        """The tensors to step and the wrapped optimizer over them; the model is untouched."""
        mask.check(self.model)
        params = dict(self.model.named_parameters())
        plan = mask.trainable_parts()
        entries, decay, plain = [], [], []
        for name, param in params.items():
            if name not in plan:
                continue
            if plan[name] is None:
                group = [_entry(name, name, param, None)]
            else:
                group = [
                    entry
                    for key, local in _local_ranges(name, param, plan[name])
                    for entry in _range_entries(key, name, param, local)
                ]
            entries += group
            (plain if name in self._no_decay else decay).extend(group)
        groups = [{"params": [e.tensor for e in decay], "names": [e.key for e in decay]}]
        # 0.0 even when the caller gives no weight decay: AdamW's default is 0.01
        groups.append(
            {
                "params": [e.tensor for e in plain],
                "names": [e.key for e in plain],
                "weight_decay": 0.0,
            }
        )
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise HFTError("the mask leaves nothing trainable")
        try:
            return entries, self.optimizer_cls(groups, **self.optimizer_kwargs)
        except (TypeError, ValueError) as exc:
            raise HFTError(
                f"{qualified_name(self.optimizer_cls)} rejected its arguments "
                f"{sorted(self.optimizer_kwargs)}: {exc}"
            ) from None

    def _attach(self, mask: HFTMask, entries: list[_Entry], inner: torch.optim.Optimizer) -> None:
        """Freeze by ``mask``, and give the model the sliced backward and gradient hooks."""
        mask.apply(self.model)
        if self.sliced_grad:
            sliced_grad.install(self.model, mask)
        self._entries = entries
        self._entry_of = {e.key: e for e in entries}
        self._views = [e for e in entries if e.tensor is not e.param]
        self._params = list({id(e.param): e.param for e in entries}.values())
        self.inner = inner
        self._hook_sliced_grads()

    def _hook_sliced_grads(self) -> None:
        """After each backward, zero the frozen ranges of a partly trainable tensor's gradient
        and give the tensors the wrapped optimizer holds for it their ``.grad`` (views of it).

        Gradient clipping (over ``model.parameters()``) then sees only the trainable half,
        as for models without fused tensors, and fp16 loss scaling (``GradScaler.unscale_``
        walks ``param_groups``) unscales and inf-checks the slices' gradients too.
        """
        for handle in self._grad_hooks:
            handle.remove()
        by_param: dict[int, list[_Entry]] = defaultdict(list)
        for entry in self._views:
            # FSDP2 assigns sharded gradients itself; step() hands those to the views
            if not isinstance(entry.param, DTensor):
                by_param[id(entry.param)].append(entry)
        # a tensor with the sliced backward already has its frozen ranges' gradient at zero
        sliced = set(sliced_grad.installed(self.model))
        self._grad_hooks[:] = [  # in place: the finalizer holds this list
            entries[0].param.register_post_accumulate_grad_hook(
                _SliceGradHook(
                    entries,
                    None
                    if entries[0].local is None or entries[0].name in sliced
                    else _frozen_index(entries),
                )
            )
            for entries in by_param.values()
        ]

    # ---- stepping ----------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """Step the wrapped optimizer; copied ranges are refreshed from the parameter first
        (it may have been changed outside, e.g. by loading a checkpoint) and written back."""
        self._check_open()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for entry in self._views:
            grad = entry.param.grad
            if grad is not None:
                grad = entry.grad_of(grad)
                if entry.copied:
                    grad = grad.contiguous()
                    entry.tensor.copy_(entry.part)
            entry.tensor.grad = grad
        self.inner.step()
        for entry in self._views:
            if entry.copied and entry.tensor.grad is not None:
                entry.part.copy_(entry.tensor)
            entry.tensor.grad = None  # do not pin the full gradient between steps
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for entry in self._views:
            entry.tensor.grad = None  # views of the gradient; set after backward or in step()
        for param in self._params:
            if param.grad is None:
                continue
            if set_to_none:
                param.grad = None
            else:
                param.grad.zero_()

    # ---- stages ------------------------------------------------------------

    def redraw(self, mask: HFTMask) -> None:
        """Switch to a new stage's mask: free state of newly frozen parts, keep the rest."""
        self._check_open()
        if not isinstance(mask, HFTMask):
            raise HFTError(f"redraw needs an hft_plugins HFTMask, got {type(mask).__name__}")
        mask.check(self.model)
        handed = {id(p) for g in self.inner.param_groups for p in g["params"]}
        if handed != {id(e.tensor) for e in self._entries}:
            raise HFTError(
                "cannot redraw: a wrapper replaced the optimizer's parameters (DeepSpeed ZeRO "
                "flattens them) and would not see the new half; run each stage separately"
            )
        old_state = {
            e.key: self.inner.state[e.tensor] for e in self._entries if e.tensor in self.inner.state
        }
        old_groups = {self._decays(g): g for g in self.inner.param_groups}
        entries, inner = self._prepare(mask)
        self.end_stage()
        self._attach(mask, entries, inner)
        for group in self.inner.param_groups:  # lr and the rest as a scheduler left them
            old = old_groups.get(self._decays(group), {})
            group.update({k: v for k, v in old.items() if k not in ("params", "names")})
        for entry in self._entries:
            if entry.key in old_state:
                self.inner.state[entry.tensor] = old_state[entry.key]
        trainable = {id(e.param) for e in self._entries}
        for param in self.model.parameters():
            if id(param) not in trainable:
                param.grad = None
        self.mask = mask
        self._share_inner()
        self.begin_stage()

    def _decays(self, group: dict) -> bool:
        """Whether ``group`` is the decay group (groups are never empty)."""
        return self._entry_of[group["names"][0]].name not in self._no_decay

    def begin_stage(self) -> None:
        """Tell plugins the current stage starts: ``stage_begin``, unless it has begun and not
        ended. Building the optimizer and :meth:`redraw` call it; a trainer calls it when it
        trains again on a stage it ended."""
        if not self._stage_open:
            self._stage_open = True
            notify("stage_begin", model=self.model, mask=self.mask, stage=self.mask.config.stage)

    def end_stage(self) -> None:
        """Tell plugins the current stage has finished: ``stage_end``, once per stage begun.

        :meth:`redraw` calls it, and the trainers' integrations at the end of ``train()``;
        the optimizer stays usable (a later :meth:`redraw` or resume begins the next stage).
        """
        if self._stage_open:
            self._stage_open = False
            notify("stage_end", model=self.model, mask=self.mask, stage=self.mask.config.stage)

    # ---- leaving the model ---------------------------------------------------

    def close(self) -> None:
        """Take this optimizer's gradient hooks and sliced backward off the model, so that
        later training of it (a full fine-tune, another tool) gets full gradients.

        ``requires_grad`` stays as the mask set it; the state stays readable.
        """
        if _LIVE.get(self.model) is self._finalizer:
            del _LIVE[self.model]
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def _check_open(self) -> None:
        if self.closed:
            raise HFTError(
                "this HFTOptimizer was closed (close(), merge_and_unload(), or a newer "
                "HFTOptimizer on the same model); build a new one to train again"
            )

    def __enter__(self) -> HFTOptimizer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- state -------------------------------------------------------------

    def state_bytes(self) -> int:
        """Bytes of tensor state the wrapped optimizer holds in this process (its shards)."""
        return state_bytes(self.inner)

    def state_dict(self) -> dict[str, Any]:
        """State keyed by parameter name (``name[dim:start:stop]`` per unit range of a fused
        tensor, ``name[1:start:stop][e]`` per expert of a row range of routed experts), plus
        the mask."""
        state = {
            e.key: dict(self.inner.state[e.tensor])
            for e in self._entries
            if e.tensor in self.inner.state
        }
        groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "names": list(g["names"])}
            for g in self.inner.param_groups
        ]
        return {
            "format": FORMAT,
            "state": state,
            "param_groups": groups,
            "mask": self.mask.to_json(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore state saved by :meth:`state_dict`; redraws to its mask if it differs."""
        if not isinstance(state_dict, dict) or state_dict.get("format") != FORMAT:
            raise HFTError(f"not an HFT optimizer state: expected format {FORMAT!r}")
        mask = HFTMask.from_json(state_dict["mask"])
        mask.check(self.model)
        saved, current = mask.config, self.mask.config
        if dataclasses.replace(saved, stage=current.stage) != current:
            # a later stage is a normal resume; another seed, ratio or strategy is not
            warnings.warn(
                f"resuming with the checkpoint's mask ({saved}), not the configured {current}",
                stacklevel=2,
            )
        if mask != self.mask:
            self.redraw(mask)
        saved_groups = state_dict["param_groups"]
        if [g["names"] for g in saved_groups] != [g["names"] for g in self.inner.param_groups]:
            raise HFTError("optimizer state does not match the mask's parameter groups")
        unknown = sorted(set(state_dict["state"]) - {e.key for e in self._entries})
        if unknown:
            raise HFTError(f"optimizer state for {unknown[0]!r}, which the mask does not train")
        # torch numbers state by position over the groups' params, in order
        position = {k: n for n, k in enumerate(k for g in saved_groups for k in g["names"])}
        self.inner.load_state_dict(
            {
                "state": {position[k]: v for k, v in state_dict["state"].items()},
                "param_groups": [
                    {**g, "params": [position[k] for k in g["names"]]} for g in saved_groups
                ],
            }
        )
        self._share_inner()

    def __repr__(self) -> str:
        return f"HFTOptimizer({qualified_name(type(self.inner))}, {self.mask!r})"
