"""Weight gradients for only the trainable slices of a fused projection.

A partly trainable fused tensor (GPT-2 ``c_attn``, Phi-3 ``qkv_proj``, GPT-NeoX
``query_key_value``, routed experts' 3-D ``gate_up_proj``) must require grad, so
plain autograd computes its whole weight gradient and HFTOptimizer then uses only
the trainable slices. :func:`install` gives such a module a forward whose backward
computes the input gradient in full (the layers below need it) but the weight
gradient only for the trainable output ranges; the frozen ranges of that gradient
are zero. The parameters, their names and the state dict are untouched;
:func:`uninstall` restores the module's own forward.

Routed experts are recognised by the metadata transformers' ``use_experts_implementation``
attaches (``has_gate``, ``is_transposed``, ``is_concatenated``, ``has_bias``,
``_apply_gate``), and only while they run one of its generic forwards (``grouped_mm``,
``batched_mm``), whose arithmetic that metadata fully describes: the sliced forward
is the ``grouped_mm`` one. An experts module running its own (``eager``) or another
kernel's forward, or sharded by expert parallelism, keeps plain autograd.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .errors import HFTError
from .layouts import ExpertStorage
from .mask import HFTMask
from .units import Slices, range_view

_ATTR = "_hft_sliced_grad"
# Above this many ranges one gathered GEMM beats a GEMM per range (GPT-NeoX
# interleaves q, k and v per head, so its ranges are one per head).
_MAX_NARROWED_RANGES = 4
# transformers' experts forwards that the metadata describes (the grouped_mm one runs here)
_GENERIC_EXPERTS_FORWARDS = ("grouped_mm", "batched_mm")
# the qualified name of the forward use_experts_implementation gives a class: it dispatches
# on config._experts_implementation (a class overriding it runs its own arithmetic)
_EXPERTS_DISPATCH = "use_experts_implementation.<locals>.wrapper.<locals>.forward"
# grouped GEMMs need rows of a multiple of 16 bytes: the trained outputs' gradient, gathered,
# must have a multiple of 8 columns (16 bytes in bf16)
_GROUPED_MM_ALIGN = 8


def install(model: nn.Module, mask: HFTMask) -> dict[str, Slices]:
    """Give every partly trainable projection of ``mask`` the sliced backward; returns
    :func:`installed`."""
    uninstall(model)
    modules = dict(model.named_modules())
    for name, slices in mask.params().items():
        module_name, _, leaf = name.rpartition(".")
        module = modules.get(module_name)
        if slices is None or module is None or "forward" in module.__dict__:
            continue  # whole, no module, or another wrapper owns the forward
        if leaf == "weight" and slices.step == 1 and _is_projection(module, slices.dim):
            forward = _sliced_forward
        elif _is_generic_experts(module, leaf, slices):
            forward = _sliced_experts_forward
        else:
            continue  # strided, or an unknown layer: plain autograd, then the optimizer's hook
        setattr(module, _ATTR, (leaf, slices))
        module.forward = functools.partial(forward, module)
    return installed(model)


def uninstall(model: nn.Module) -> None:
    """Restore the own forward of every module :func:`install` changed."""
    for module in model.modules():
        if _ATTR in module.__dict__:
            del module.__dict__[_ATTR]
            module.__dict__.pop("forward", None)


def installed(model: nn.Module) -> dict[str, Slices]:
    """Parameter name -> its trainable ranges, for the parameters whose weight gradient
    the sliced backward computes only there (its frozen ranges left zero)."""
    found = {}
    for name, module in model.named_modules():
        if _ATTR in module.__dict__:
            leaf, slices = module.__dict__[_ATTR]
            found[f"{name}.{leaf}" if name else leaf] = slices
    return found


def _is_projection(module: nn.Module, dim: int) -> bool:
    if type(module) is nn.Linear:
        return dim == 0
    # transformers' Conv1D (GPT-2): y = x @ weight + bias with weight [in, out]
    is_conv1d = type(module).__name__ == "Conv1D" and hasattr(module, "nf")
    return is_conv1d and dim == 1 and module.weight.dim() == 2


def _sliced_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    weight, bias = module.weight, module.bias
    if not (torch.is_grad_enabled() and weight.requires_grad):
        return type(module).forward(module, x)
    return _SlicedProjection.apply(x, weight, bias, module.__dict__[_ATTR][1])


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


# ---- routed experts --------------------------------------------------------------------


def _is_generic_experts(module: nn.Module, leaf: str, slices: Slices) -> bool:
    """Whether ``module`` holds routed experts that run transformers' generic forwards where
    grouped GEMMs run, and ``leaf`` is their fused gate/up tensor, sliced along its outputs."""
    storage = ExpertStorage.of(module)
    if storage is None or not storage.has_gate or leaf != storage.fused_name:
        return False
    if slices.dim != (2 if storage.transposed else 1) or slices.size % _GROUPED_MM_ALIGN:
        return False
    if not all(hasattr(module, a) for a in ("has_bias", "_apply_gate", "num_experts", "down_proj")):
        return False
    forward = getattr(type(module).forward, "__code__", None)
    return getattr(forward, "co_qualname", None) == _EXPERTS_DISPATCH and _runs_generic(module)


def _runs_generic(module: nn.Module) -> bool:
    """Whether the experts run a generic forward, on all their experts (no expert
    parallelism), on a device where grouped GEMMs run (transformers' condition for its
    grouped_mm forward)."""
    implementation = getattr(getattr(module, "config", None), "_experts_implementation", None)
    parallel = getattr(module, "_is_expert_parallel", False)
    if implementation not in _GENERIC_EXPERTS_FORWARDS or parallel:
        return False
    device = module.gate_up_proj.device
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu"


def _sliced_experts_forward(module: nn.Module, *args, **kwargs) -> torch.Tensor:
    if not (torch.is_grad_enabled() and module.gate_up_proj.requires_grad):
        return type(module).forward(module, *args, **kwargs)
    if not _runs_generic(module):
        # its own forward would give the frozen ranges a gradient the optimizer's hooks
        # were told they need not clear
        raise HFTError(
            f"{type(module).__name__}'s experts implementation, expert parallelism or device "
            "changed after HFTOptimizer gave it the sliced backward; build the optimizer again"
        )
    return _experts_forward(module, *args, **kwargs)


def _experts_forward(module, hidden_states, top_k_index, top_k_weights) -> torch.Tensor:
    """transformers' ``grouped_mm_experts_forward`` (without expert parallelism), its gate/up
    projection through :class:`_ExpertProjection` with the trainable output ranges."""
    num_tokens, hidden_dim = hidden_states.shape
    num_top_k = top_k_index.size(-1)
    transposed = module.is_transposed
    # rows sorted by expert; offsets[e] ends expert e's rows
    expert_ids, perm = torch.sort(top_k_index.reshape(-1))
    rows = hidden_states[perm // num_top_k]
    sample_weights = top_k_weights.reshape(-1)[perm]
    # transformers counts with histc (no device sync): of floats on CPU, of ints on CUDA
    counts = torch.histc(
        expert_ids.float() if expert_ids.device.type == "cpu" else expert_ids.int(),
        bins=module.num_experts,
        min=0,
        max=module.num_experts - 1,
    )
    offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)

    gate_up, down = module.gate_up_proj, module.down_proj
    trained = module.__dict__[_ATTR][1]
    out = _ExpertProjection.apply(rows.to(gate_up.dtype), gate_up, offsets, transposed, trained)
    if module.has_bias:
        out = out + module.gate_up_proj_bias[expert_ids]
    out = module._apply_gate(out)
    out = F.grouped_mm(out.to(down.dtype), _in_out(down, transposed), offs=offsets)
    if module.has_bias:
        out = out + module.down_proj_bias[expert_ids]
    if getattr(module, "has_post_expert_norm", False):
        out = module.post_expert_norm(out)
    out = out * sample_weights.unsqueeze(-1)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.size(0), device=perm.device)
    out = out[inverse].view(num_tokens, num_top_k, hidden_dim).sum(dim=1)
    return out.to(hidden_states.dtype)


def _in_out(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    """Experts' weights as [experts, in, out] (a view): what grouped_mm multiplies by."""
    return weight if transposed else weight.transpose(-2, -1)


class _ExpertProjection(torch.autograd.Function):
    """Rows sorted by expert times their expert's matrix; backward: the full input gradient,
    the weight gradient of the ``trained`` outputs only."""

    @staticmethod
    def forward(ctx, rows, weight, offsets, transposed: bool, trained: Slices):
        """``rows`` [tokens, in] sorted by expert, ``offsets`` [experts] the end of each
        expert's rows; ``weight`` [experts, out, in], or [experts, in, out] if ``transposed``."""
        ctx.save_for_backward(rows, weight, offsets)
        ctx.transposed, ctx.trained = transposed, trained
        return F.grouped_mm(rows, _in_out(weight, transposed), offs=offsets)

    @staticmethod
    def backward(ctx, grad_out):
        rows, weight, offsets = ctx.saved_tensors
        go = grad_out.contiguous()
        grad_rows = grad_weight = None
        if ctx.needs_input_grad[0]:  # as autograd differentiates grouped_mm
            grad_rows = F.grouped_mm(
                go, _in_out(weight, ctx.transposed).transpose(-2, -1), offs=offsets
            )
        if ctx.needs_input_grad[1]:
            grad_weight = _expert_weight_grad(
                go, rows, offsets, weight.shape, ctx.transposed, ctx.trained
            )
        return grad_rows, grad_weight, None, None, None


def _per_expert_gemms(device: torch.device) -> bool:
    """Whether to run a GEMM per expert, written straight into the gradient, rather than one
    grouped GEMM whose result is copied in: on CPU, where reading the experts' row counts
    costs no device sync and the copy is the dearer part."""
    return device.type == "cpu"


def _expert_weight_grad(go, rows, offsets, shape, transposed: bool, trained: Slices):
    """Each expert's weight gradient for the ``trained`` outputs only; the rest zero."""
    dim, step = trained.dim, trained.step
    grad = torch.empty(shape, dtype=go.dtype, device=go.device)
    if step == 1:
        for a, b in _complement(trained.ranges, shape[dim]):
            grad.narrow(dim, a, b - a).zero_()
    else:
        grad.zero_()
    if _per_expert_gemms(go.device):
        start = 0
        for expert, end in enumerate(offsets.tolist()):  # an expert without rows gets zeros
            x = rows[start:end]
            for a, b in trained.ranges:
                picked = range_view(go[start:end], 1, a, b, step)
                target = range_view(grad[expert], dim - 1, a, b, step)
                if transposed:  # [in, out]
                    torch.mm(x.t(), picked, out=target)
                else:  # [out, in]
                    torch.mm(picked.t(), x, out=target)
            start = end
        return grad
    for a, b in trained.ranges:
        picked = range_view(go, 1, a, b, step).contiguous()
        if transposed:
            part = F.grouped_mm(rows.t(), picked, offs=offsets)
        else:
            part = F.grouped_mm(picked.t(), rows, offs=offsets)
        range_view(grad, dim, a, b, step).copy_(part)
    return grad
