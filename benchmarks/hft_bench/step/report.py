"""The step benchmark's report: the header, the summary of the runs, the tables, the targets."""

from __future__ import annotations

import statistics

from .cost import floor_ratio


def print_header(args, model: dict, meta, mask, command: str) -> None:
    """What was run, on what: the model's shape, the trainable fraction, the settings."""
    import torch

    total = sum(p.numel() for p in meta.parameters())
    blocks = mask.fractions()["blocks"][1]
    detail = ""
    if args.arch == "moe":
        impl = getattr(meta.config, "_experts_implementation", None)
        detail = f" experts={args.experts} top-{args.top_k} ({impl}; intermediate per expert)"
    if args.model_config is not None:
        tied = ", tied embeddings" if args.model_config.tie_word_embeddings else ""
        detail = f"; the shapes of --model {args.model} (fresh weights{tied})"
    print(
        f"# hft-plugins step benchmark: arch={args.arch} ({type(meta).__name__}) hidden={args.hidden} "
        f"layers={args.layers} intermediate={args.intermediate} heads={args.heads}/{args.kv_heads} "
        f"vocab={args.vocab}{detail}"
    )
    print(
        f"# params {total / 1e6:.1f}M, blocks {blocks / total:.1%}; trainable fraction under HFT "
        f"{model['trainable_fraction']:.4f}; device={args.device} dtype={args.dtype} "
        f"torch={torch.__version__} threads={args.threads or torch.get_num_threads()}"
    )
    print(
        f"# steps={args.steps} per method and round, warmup={args.warmup}, rounds={args.repeats}, "
        f"timing={args.timing}, shapes={args.shapes}"
    )
    print(f"# command: {command}".rstrip())


def summarise(args, runs: dict, timing: dict | None) -> dict:
    """Median step times (from the interleaved run, else the own-process runs), peaks, state."""
    out = {}
    for method, results in runs.items():
        if not results or (timing is not None and method not in timing):
            continue
        row = {
            "state_bytes": results[0]["state_bytes"],
            "trainable": results[0]["trainable"],
            "regimes": {},
        }
        for regime in args.regimes:
            if timing is not None:
                times = timing[method][regime]
            else:
                times = {
                    key: [x for r in results for x in r["regimes"][regime][key]]
                    for key in ("round", "step_s", "fwd_bwd_s", "opt_s")
                }
            rounds = sorted(set(times["round"]))
            row["regimes"][regime] = {
                "step_s": statistics.median(times["step_s"]),
                "round_medians_s": [
                    statistics.median(
                        t for t, k in zip(times["step_s"], times["round"], strict=True) if k == r
                    )
                    for r in rounds
                ],
                "fwd_bwd_s": statistics.median(times["fwd_bwd_s"]),
                "opt_s": statistics.median(times["opt_s"]),
                "peak_bytes": statistics.median(
                    r["regimes"][regime]["peak_bytes"] for r in results
                ),
            }
        out[method] = row
    return out


def _ratio(a, b):
    return a / b if a is not None and b else None


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def print_report(args, summary: dict, model: dict, notes: dict) -> None:
    fft = summary.get("fft")
    frozen = summary.get("frozen")
    for regime in args.regimes:
        batch, tokens = args.shapes[regime]
        print(f"\n## {regime}-bound regime: batch {batch} x {tokens} tokens")
        print(
            f"{'method':<13} {'step ms':>9} {'(rounds)':>22} {'fwd+bwd':>9} {'opt ms':>8} "
            f"{'/FFT':>6} {'/frozen':>7} {'peak MB':>9} {'peak/FFT':>8} {'state MB':>9} {'state/FFT':>9}"
        )
        for method in args.method_list:
            if method not in summary:
                print(f"{method:<13} skipped: {notes.get(method, 'no result')}")
                continue
            row, r = summary[method], summary[method]["regimes"][regime]
            ref = fft["regimes"][regime] if fft else None
            fro = frozen["regimes"][regime] if frozen else None
            rounds = "/".join(f"{x * 1e3:.0f}" for x in r["round_medians_s"])
            print(
                f"{method:<13} {r['step_s'] * 1e3:>9.1f} {rounds:>22} {r['fwd_bwd_s'] * 1e3:>9.1f} "
                f"{r['opt_s'] * 1e3:>8.1f} {_fmt(_ratio(r['step_s'], ref and ref['step_s'])):>6} "
                f"{_fmt(_ratio(r['step_s'], fro and fro['step_s'])):>7} {r['peak_bytes'] / 2**20:>9.0f} "
                f"{_fmt(_ratio(r['peak_bytes'], ref and ref['peak_bytes'])):>8} "
                f"{row['state_bytes'] / 2**20:>9.1f} "
                f"{_fmt(_ratio(row['state_bytes'], fft and fft['state_bytes'])):>9}"
            )
        rows = model["regimes"][regime]
        print(
            "cost model   fwd GFLOP  input-grad GFLOP  weight-grad GFLOP  optimizer MB (AdamW r+w)"
        )
        for method in ("fft", "frozen", "hft", "hft-fullgrad"):
            if method in args.method_list:
                m = rows[method]
                print(
                    f"{method:<12} {m['forward_gflop']:>9.2f} {m['input_grad_gflop']:>17.2f} "
                    f"{m['weight_grad_gflop']:>18.2f} {m['optimizer_mb']:>13.1f}"
                )
        if fft and "hft" in summary:
            print_targets(regime, summary, rows, model["trainable_fraction"])
    for method, note in notes.items():
        print(f"# note: {method}: {note}")


def print_targets(regime: str, summary: dict, rows: dict, fraction: float) -> None:
    fft, hft = summary["fft"]["regimes"][regime], summary["hft"]["regimes"][regime]
    floor = floor_ratio(rows, fft["fwd_bwd_s"], fft["opt_s"])
    speed = hft["step_s"] / fft["step_s"]
    verdict = lambda ok: "MET" if ok else "NOT MET"  # noqa: E731
    print(
        f"floor (HFT/FFT if fwd+bwd scaled with FLOPs, optimizer with bytes; FFT's split "
        f"{fft['fwd_bwd_s'] / fft['step_s']:.0%} fwd+bwd): {floor:.3f}"
    )
    print(
        f"target HFT/FFT <= 1.05 x floor ({1.05 * floor:.3f}): {speed:.3f} {verdict(speed <= 1.05 * floor)}"
    )
    if "frozen" in summary:
        vs_frozen = hft["step_s"] / summary["frozen"]["regimes"][regime]["step_s"]
        print(f"target HFT/frozen <= 1.03: {vs_frozen:.3f} {verdict(vs_frozen <= 1.03)}")
    if regime == "optimizer":
        print(f"target HFT/FFT <= 0.70 (30% faster): {speed:.3f} {verdict(speed <= 0.70)}")
        peak = _ratio(hft["peak_bytes"], fft["peak_bytes"])
        if peak is None:
            print(
                "target peak HFT/FFT <= 0.70: not measured (FFT's peak did not rise above "
                "the process's footprint; use a larger model)"
            )
        else:
            print(f"target peak HFT/FFT <= 0.70: {peak:.3f} {verdict(peak <= 0.70)}")
        state = summary["hft"]["state_bytes"] / summary["fft"]["state_bytes"]
        ok = abs(state / fraction - 1) <= 0.01
        print(
            f"target state HFT/FFT = trainable fraction {fraction:.4f} within 1%: {state:.4f} {verdict(ok)}"
        )
