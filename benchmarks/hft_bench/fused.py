"""Backward time of one fused q/k/v projection: whole weight gradient vs trainable slices only.

The whole-model GPT-2 run (``python -m hft_bench.step --arch gpt2``) shows the saving diluted in
a full step (about 2.5% of its FLOPs); this isolates the projection, where it is
a third or two thirds of the weight-gradient GEMM. Full and sliced backward take
turns, ``--repeats`` times each; medians are printed with the FLOP model's ratio.

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
    return 0


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
