"""Backward time of one fused projection: whole weight gradient vs trainable slices only.

The whole-model runs (``python -m hft_bench.step --arch gpt2`` or ``--arch moe``) show the
saving diluted in a full step (a few percent of its FLOPs, below their run-to-run noise);
this isolates a fused q/k/v projection, where it is a third or two thirds of the
weight-gradient GEMM, and one Mixtral MoE block (transformers' own, its ``grouped_mm``
experts forward) whose ``gate_up_proj`` trains gate or up only. Plain autograd and the
sliced backward take turns, ``--repeats`` times each; medians are printed, for the
projection with the FLOP model's ratio.

    python -m hft_bench.fused --hidden 768 --tokens 2048 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from hft_plugins.core.sliced_grad import _SlicedProjection
from hft_plugins.core.units import Slices


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    d = args.hidden
    torch.manual_seed(0)
    print(
        f"# one fused projection {d} -> 3x{d}, {args.tokens} tokens, {args.device}, fp32, {args.repeats} repeats"
    )
    print(
        f"{'layer':<22} {'trained':<8} {'full bwd ms':>11} {'sliced ms':>10} {'ratio':>6} {'model':>6}"
    )
    for layer, out_dim in (("nn.Linear (Phi-3)", 0), ("Conv1D (GPT-2 c_attn)", 1)):
        for trained, ranges in (("q", ((0, d),)), ("q,v", ((0, d), (2 * d, 3 * d)))):
            full_ms, sliced_ms = measure(args, out_dim, ranges)
            share = sum(b - a for a, b in ranges) / (3 * d)
            print(
                f"{layer:<22} {trained:<8} {full_ms:>11.2f} {sliced_ms:>10.2f} "
                f"{sliced_ms / full_ms:>6.3f} {(1 + share) / 2:>6.3f}"
            )
    print("# model: backward = input-gradient GEMM + weight-gradient GEMM x trained share")
    plain_ms, sliced_ms, trained = measure_experts(args)
    print(
        f"# one Mixtral MoE block, 8 experts x {EXPERT_INTERMEDIATE}, top-2, {args.tokens} tokens"
    )
    print(f"{'MoE block fwd+bwd':<22} {trained:<8} {plain_ms:>11.2f} {sliced_ms:>10.2f} "
          f"{sliced_ms / plain_ms:>6.3f}")  # fmt: skip
    return 0


EXPERT_INTERMEDIATE = 256  # the step benchmark's --arch moe experts


def measure_experts(args) -> tuple[float, float, str]:
    """Median forward+backward milliseconds of a Mixtral MoE block with plain autograd and
    with the sliced backward, and which of gate/up its gate_up_proj trains."""
    from transformers import MixtralConfig, MixtralForCausalLM

    from hft_plugins import HFTConfig, select
    from hft_plugins.core import sliced_grad

    d = args.hidden
    config = MixtralConfig(hidden_size=d, intermediate_size=EXPERT_INTERMEDIATE,
                           num_hidden_layers=4, num_attention_heads=max(1, d // 64),
                           num_key_value_heads=max(1, d // 64), num_local_experts=8,
                           num_experts_per_tok=2, vocab_size=256)  # fmt: skip
    model = MixtralForCausalLM(config).to(args.device)
    mask = select(model, HFTConfig())
    sliced = [n for n, s in mask.params().items() if s is not None and "gate_up_proj" in n]
    if not sliced:
        raise SystemExit("the mask trains no MoE block's gate_up_proj in part: nothing to time")
    layer = int(sliced[0].split(".")[2])
    block = model.model.layers[layer].mlp
    trained = "gate" if mask.params()[sliced[0]].ranges[0][0] == 0 else "up"
    if sliced[0] not in sliced_grad.install(model, mask):
        raise SystemExit(
            f"{type(block.experts).__name__} keeps plain autograd here: nothing to compare"
        )
    sliced_grad.uninstall(model)
    x = torch.randn(1, args.tokens, d, device=args.device, requires_grad=True)
    times = {"plain": [], "sliced": []}
    for _ in range(args.repeats + 1):  # the first round warms up
        for mode in ("plain", "sliced"):
            if mode == "sliced":
                sliced_grad.install(model, mask)
            _sync(args.device)
            start = time.perf_counter()
            out = block(x)
            (out[0] if isinstance(out, tuple) else out).sum().backward()
            _sync(args.device)
            times[mode].append(time.perf_counter() - start)
            sliced_grad.uninstall(model)
            model.zero_grad(set_to_none=True)
            x.grad = None
    plain, sliced_ms = (statistics.median(times[m][1:]) * 1e3 for m in ("plain", "sliced"))
    return plain, sliced_ms, trained


def measure(args, out_dim: int, ranges) -> tuple[float, float]:
    """Median backward milliseconds of the plain and the sliced projection, taking turns."""
    d, n, device = args.hidden, args.tokens, args.device
    shape = (3 * d, d) if out_dim == 0 else (d, 3 * d)
    weight = torch.randn(shape, device=device, requires_grad=True)
    bias = torch.zeros(3 * d, device=device, requires_grad=True)
    x = torch.randn(n, d, device=device, requires_grad=True)
    grad_out = torch.randn(n, 3 * d, device=device)

    def full():
        return F.linear(x, weight, bias) if out_dim == 0 else torch.addmm(bias, x, weight)

    def sliced():
        return _SlicedProjection.apply(x, weight, bias, Slices(out_dim, ranges))

    times = {full: [], sliced: []}
    for _ in range(args.repeats + 1):  # the first round warms up
        for forward in (full, sliced):
            y = forward()
            _sync(device)
            start = time.perf_counter()
            y.backward(grad_out)
            _sync(device)
            times[forward].append(time.perf_counter() - start)
            x.grad = weight.grad = bias.grad = None
    return tuple(statistics.median(times[f][1:]) * 1e3 for f in (full, sliced))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    sys.exit(main())
