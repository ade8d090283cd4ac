"""Weight gradients for only the trainable slices of a fused projection.

A partly trainable fused tensor (GPT-2 ``c_attn``, Phi-3 ``qkv_proj``, GPT-NeoX
``query_key_value``) must require grad, so plain autograd computes its whole
weight gradient and HFTOptimizer then uses only the trainable slices. :func:`install`
gives such a module a forward whose backward computes the input gradient in full
(the layers below need it) but the weight and bias gradients only for the
trainable output ranges; the frozen ranges of those gradients are zero. The
parameters, their names and the state dict are untouched; :func:`uninstall`
restores the module's own forward.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .mask import HFTMask
from .units import Slices

_ATTR = "_hft_sliced_grad"
# Above this many ranges one gathered GEMM beats a GEMM per range (GPT-NeoX
# interleaves q, k and v per head, so its ranges are one per head).
_MAX_NARROWED_RANGES = 4


def install(model: nn.Module, mask: HFTMask) -> list[str]:
    """Give every partly trainable projection of ``mask`` the sliced backward; returns their names."""
    uninstall(model)
    plan = mask.params()
    modules = dict(model.named_modules())
    names = []
    for name, slices in plan.items():
        module_name, _, leaf = name.rpartition(".")
        module = modules.get(module_name)
        if slices is None or slices.step != 1 or leaf != "weight" or module is None:
            continue  # whole, strided (plain autograd, then the optimizer's hook), or no module
        if not _supports(module, slices.dim) or "forward" in module.__dict__:
            continue  # another wrapper owns the forward, or an unknown layer: plain autograd
        setattr(module, _ATTR, slices)
        module.forward = functools.partial(_sliced_forward, module)
        names.append(module_name)
    return names


def uninstall(model: nn.Module) -> None:
    """Restore the own forward of every module :func:`install` changed."""
    for module in model.modules():
        if _ATTR in module.__dict__:
            del module.__dict__[_ATTR]
            module.__dict__.pop("forward", None)


def installed(model: nn.Module) -> dict[str, tuple[tuple[int, int], ...]]:
    """Module name -> trainable output ranges, for modules computing sliced weight gradients."""
    return {
        name: m.__dict__[_ATTR].ranges for name, m in model.named_modules() if _ATTR in m.__dict__
    }


def _supports(module: nn.Module, dim: int) -> bool:
    if type(module) is nn.Linear:
        return dim == 0
    # transformers' Conv1D (GPT-2): y = x @ weight + bias with weight [in, out]
    is_conv1d = type(module).__name__ == "Conv1D" and hasattr(module, "nf")
    return is_conv1d and dim == 1 and module.weight.dim() == 2


def _sliced_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    weight, bias = module.weight, module.bias
    if not (torch.is_grad_enabled() and weight.requires_grad):
        return type(module).forward(module, x)
    return _SlicedProjection.apply(x, weight, bias, getattr(module, _ATTR))


def _project(x: torch.Tensor, weight: torch.Tensor, bias, out_dim: int) -> torch.Tensor:
    if out_dim == 0:
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    y = flat @ weight if bias is None else torch.addmm(bias, flat, weight)
    return y.view(*x.shape[:-1], weight.shape[1])


class _SlicedProjection(torch.autograd.Function):
    """y = x W (+ b); backward: full input gradient, weight/bias gradient of trained ranges."""

    @staticmethod
    def forward(ctx, x, weight, bias, slices: Slices):
        """``slices``: the trainable output ranges, along the weight's output dim (0 for
        nn.Linear's [out, in], 1 for GPT-2's Conv1D [in, out])."""
        device = x.device.type
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        if torch.is_autocast_enabled(device):  # behave as autocast does for a linear layer
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device, enabled=False):
            y = _project(x, weight, bias, slices.dim)
        ctx.save_for_backward(x, weight)
        ctx.slices = slices
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        slices = ctx.slices
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        go = grad_out.reshape(-1, grad_out.shape[-1]).to(weight.dtype)
        flat_x = x.reshape(-1, x.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            w = weight if slices.dim == 0 else weight.t()
            grad_x = (go @ w).view(x.shape).to(x_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(go, flat_x, weight.shape, w_dtype, slices)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = go.sum(0).to(b_dtype)
            for a, b in _complement(slices.ranges, grad_b.shape[0]):
                grad_b[a:b] = 0
        return grad_x, grad_w, grad_b, None


def _weight_grad(go, x, shape, dtype, slices: Slices) -> torch.Tensor:
    """The weight gradient with only ``slices.ranges`` of the outputs computed, the rest zero."""
    dim = slices.dim
    grad = torch.empty(shape, dtype=dtype, device=go.device)
    for a, b in _complement(slices.ranges, shape[dim]):
        grad.narrow(dim, a, b - a).zero_()
    if len(slices.ranges) > _MAX_NARROWED_RANGES:
        index = torch.tensor(
            [i for a, b in slices.ranges for i in range(a, b)], device=go.device, dtype=torch.long
        )
        picked = go.index_select(1, index)
        part = picked.t() @ x if dim == 0 else x.t() @ picked
        return grad.index_copy_(dim, index, part.to(dtype))
    for a, b in slices.ranges:
        target = grad.narrow(dim, a, b - a)
        if dim == 0 and go.dtype == dtype:
            torch.mm(go[:, a:b].t(), x, out=target)  # contiguous rows: no temporary
        else:
            target.copy_(go[:, a:b].t() @ x if dim == 0 else x.t() @ go[:, a:b])
    return grad


def _complement(ranges, size: int) -> list[tuple[int, int]]:
    gaps, start = [], 0
    for a, b in ranges:
        if a > start:
            gaps.append((start, a))
        start = b
    if start < size:
        gaps.append((start, size))
    return gaps
