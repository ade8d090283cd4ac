"""A torch optimizer that keeps state only for the trainable half.

Whole trainable tensors go to the wrapped optimizer as they are. A partly
trainable tensor (a slice of a fused projection) goes to it as views of its
trainable ranges: the views share the parameter's storage, their ``.grad`` is a
view of the parameter's gradient, so the wrapped optimizer's moments have the
slice's shape and its updates land in place. Frozen tensors and frozen slices
are never handed to the wrapped optimizer, so no decay or momentum reaches them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import plugins, sliced_grad
from .errors import HFTError
from .mask import Mask

FORMAT = "hft-optimizer/1"
# The HF Trainer's rule (Trainer.get_decay_parameter_names): no decay for these.
_NO_DECAY_PATTERNS = [
    re.compile(p)
    for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
]


@dataclass
class _Entry:
    """One tensor the wrapped optimizer steps: a whole parameter or a view of a slice."""

    key: str
    param: nn.Parameter
    tensor: torch.Tensor
    narrow: tuple[int, int, int] | None  # (dim, start, length) for a slice view


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


class HFTOptimizer(torch.optim.Optimizer):
    """Wrap ``optimizer_cls`` so that only the mask's trainable parts have state and move.

    ``HFTOptimizer(model, mask, torch.optim.AdamW, lr=2e-5, weight_decay=0.1)``;
    at a stage boundary ``redraw(new_mask)``. Weight decay goes to the HF
    Trainer's decay group only (biases and norm weights get none). With
    ``sliced_grad`` (default) partly trainable fused projections compute their
    weight gradient only for the trainable slices (see :mod:`hft_plugins.sliced_grad`).
    """

    def __init__(
        self,
        model: nn.Module,
        mask: Mask,
        optimizer_cls=torch.optim.AdamW,
        *,
        sliced_grad: bool = True,
        **kwargs,
    ):
        if not isinstance(sliced_grad, bool):
            raise HFTError(f"sliced_grad must be True or False, got {sliced_grad!r}")
        if not isinstance(mask, Mask):
            raise HFTError(f"mask must be an hft_plugins Mask, got {type(mask).__name__}")
        if not (
            isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)
        ):
            raise HFTError(f"optimizer_cls must be a torch optimizer class, got {optimizer_cls!r}")
        self.model = model
        self.optimizer_cls = optimizer_cls
        self.optimizer_kwargs = dict(kwargs)
        self.sliced_grad = sliced_grad
        self.mask = mask
        self._build(mask)
        # The base class gives us its hook registries; the groups and state are the inner ones.
        super().__init__([e.tensor for e in self._entries] or [torch.zeros(0)], self.inner.defaults)
        self._share_inner()
        plugins.call("stage_begin", model=model, mask=mask, stage=mask.config.stage)

    def _share_inner(self) -> None:
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state
        self.defaults = self.inner.defaults

    def _build(self, mask: Mask) -> None:
        mask.apply(self.model)
        if self.sliced_grad:
            sliced_grad.install(self.model, mask)
        params = dict(self.model.named_parameters())
        plan = mask.params()
        no_decay = no_decay_names(self.model)
        entries, decay, plain = [], [], []
        for name, param in params.items():
            if name not in plan:
                continue
            slices = plan[name]
            if slices is None:
                group = [_Entry(name, param, param, None)]
            else:
                group = [
                    _Entry(
                        f"{name}[{slices.dim}:{a}:{b}]",
                        param,
                        param.detach().narrow(slices.dim, a, b - a),
                        (slices.dim, a, b - a),
                    )
                    for a, b in slices.ranges
                ]
            entries += group
            (plain if name in no_decay else decay).extend(group)
        groups = [{"params": [e.tensor for e in decay], "names": [e.key for e in decay]}]
        plain_group = {"params": [e.tensor for e in plain], "names": [e.key for e in plain]}
        if "weight_decay" in self.optimizer_kwargs:
            plain_group["weight_decay"] = 0.0
        groups.append(plain_group)
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise HFTError("the mask leaves nothing trainable")
        self._entries = entries
        self._sliced = [e for e in entries if e.narrow is not None]
        self.inner = self.optimizer_cls(groups, **self.optimizer_kwargs)

    # ---- stepping ----------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for entry in self._sliced:
            grad = entry.param.grad
            entry.tensor.grad = None if grad is None else grad.narrow(*entry.narrow)
        self.inner.step()
        for entry in self._sliced:
            entry.tensor.grad = None  # do not pin the full gradient between steps
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in {id(e.param): e.param for e in self._entries}.values():
            if param.grad is None:
                continue
            if set_to_none:
                param.grad = None
            else:
                param.grad.zero_()

    # ---- stages ------------------------------------------------------------

    def redraw(self, mask: Mask) -> None:
        """Switch to a new stage's mask: free state of newly frozen parts, keep the rest."""
        if not isinstance(mask, Mask):
            raise HFTError(f"redraw needs an hft_plugins Mask, got {type(mask).__name__}")
        mask.check(self.model)
        old_state = {
            e.key: self.inner.state[e.tensor] for e in self._entries if e.tensor in self.inner.state
        }
        old_groups = self.inner.param_groups
        plugins.call("stage_end", model=self.model, mask=self.mask, stage=self.mask.config.stage)
        self._build(mask)
        for group, old in zip(self.inner.param_groups, old_groups, strict=False):
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
        plugins.call("stage_begin", model=self.model, mask=mask, stage=mask.config.stage)

    def end_stage(self) -> None:
        """Tell plugins the current stage has finished (integrations call it after training)."""
        plugins.call("stage_end", model=self.model, mask=self.mask, stage=self.mask.config.stage)

    # ---- state -------------------------------------------------------------

    def state_bytes(self) -> int:
        """Bytes of tensor state the wrapped optimizer holds."""
        return sum(
            v.numel() * v.element_size()
            for s in self.inner.state.values()
            for v in s.values()
            if torch.is_tensor(v)
        )

    def state_dict(self) -> dict[str, Any]:
        """State keyed by parameter name (slices as ``name[dim:start:stop]``), plus the mask."""
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
        mask = Mask.from_json(state_dict["mask"])
        mask.check(self.model)
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
        return f"HFTOptimizer({self.optimizer_cls.__name__}, {self.mask!r})"
