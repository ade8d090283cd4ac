"""The step benchmark's cost model: FLOPs and optimizer bytes per method, and the floor.

The floor is the HFT / FFT step-time ratio a perfect HFT would reach on this machine:
FFT's measured fwd+bwd scaled by the FLOP ratio, its optimizer time by the bytes ratio.
"""

from __future__ import annotations

from .build import build_model, draw_mask

ADAMW_BYTES_PER_ELEMENT = 7  # reads param, grad, exp_avg, exp_avg_sq; writes param and both moments


def cost_model(args) -> dict:
    """Per method: forward, input-gradient and weight-gradient GFLOP per step, optimizer MB."""
    import torch

    model = build_model(args, device="meta")
    mask = draw_mask(model)
    plan = mask.params()
    params = dict(model.named_parameters())
    head = model.get_output_embeddings().weight
    head_name = next(n for n, p in params.items() if p is head)
    gemms = [(n, p) for n, p in params.items() if p.dim() in (2, 3) and _in_blocks(mask, n)]
    gemms.append((head_name, head))
    # routed experts [experts, out, in]: each token passes through top-k of them
    used = {name: args.top_k / p.shape[0] if p.dim() == 3 else 1.0 for name, p in gemms}
    element = torch.finfo(torch.bfloat16 if args.dtype == "bf16" else torch.float32).bits // 8

    def weight_share(method: str, name: str) -> float:
        if method == "fft":
            return 1.0
        if name not in plan:
            return 0.0
        slices = plan[name]
        if slices is None or method != "hft":
            return 1.0
        return slices.size / params[name].shape[slices.dim]

    def optimizer_elements(method: str) -> int:
        if method == "fft":
            return sum(p.numel() for p in params.values())
        if method in ("hft", "hft-fullgrad"):  # HFTOptimizer: state for the trained slices
            return mask.trainable_numel
        return sum(params[n].numel() for n in plan)  # whole tensors, sliced or not

    out = {"trainable_fraction": mask.trainable_numel / mask.total_numel, "regimes": {}}
    attn_width = args.heads * (args.hidden // args.heads)
    for regime in args.regimes:
        batch, tokens = args.shapes[regime]
        n = batch * tokens
        attention = 4 * batch * tokens * tokens * attn_width * args.layers  # QK^T and AV
        rows = {}
        for method in ("fft", "frozen", "hft", "hft-fullgrad"):
            forward = sum(2 * n * p.numel() * used[name] for name, p in gemms) + attention
            input_grad = sum(2 * n * p.numel() * used[name] for name, p in gemms) + 2 * attention
            weight_grad = sum(
                2 * n * p.numel() * used[name] * weight_share(method, name) for name, p in gemms
            )
            rows[method] = {
                "forward_gflop": forward / 1e9,
                "input_grad_gflop": input_grad / 1e9,
                "weight_grad_gflop": weight_grad / 1e9,
                "optimizer_mb": ADAMW_BYTES_PER_ELEMENT
                * element
                * optimizer_elements(method)
                / 1e6,
            }
        out["regimes"][regime] = rows
    return out


def _in_blocks(mask, name: str) -> bool:
    return any(
        u.block is not None
        and u.category in ("attention", "ffn")
        and any(p.param == name for p in u.parts)
        for u in mask.partition.units
    )


def floor_ratio(model_rows: dict, fft_fwd_bwd: float, fft_opt: float) -> float:
    """HFT / FFT time if fwd+bwd scaled with FLOPs and the optimizer with bytes, from FFT's split."""
    fft, hft = model_rows["fft"], model_rows["hft"]
    flops = lambda r: r["forward_gflop"] + r["input_grad_gflop"] + r["weight_grad_gflop"]  # noqa: E731
    ideal = (
        fft_fwd_bwd * flops(hft) / flops(fft) + fft_opt * hft["optimizer_mb"] / fft["optimizer_mb"]
    )
    return ideal / (fft_fwd_bwd + fft_opt)
