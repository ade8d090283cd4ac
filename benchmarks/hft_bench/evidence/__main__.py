"""``python -m hft_bench.evidence``: the full benchmark (or the base, the demo, the report)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from hft_plugins import HFTError

from .runs import METHODS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m hft_bench.evidence",
        description="At the same amount of new learning, does HFT forget less? (WordNet base)",
    )
    ap.add_argument("--out", default="evidence-out", help="folder for records, report, PNGs")
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1)")
    ap.add_argument("--lrs", default="3e-4,1e-3,3e-3,1e-2", help="comma-separated lrs")
    ap.add_argument("--steps", default="10,30", help="comma-separated step counts per stage")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    ap.add_argument("--domains", default="nouns_new", help="frontier domain(s)")
    ap.add_argument("--second-domain", default="hypernym", help="second domain (largest steps)")
    ap.add_argument("--second-seeds", type=int, default=None, help="seeds for the second domain")
    ap.add_argument("--second-steps", type=int, default=None, help="steps for the second domain")
    ap.add_argument("--ratios", default="0.25,0.75", help="extra hft-category ratios")
    ap.add_argument("--payoff-seeds", type=int, default=None,
                    help="seeds for the highlr, stages and ratio parts (default: --seeds)")  # fmt: skip
    ap.add_argument("--stage-methods", default="fft,hft-category,hft-layer,hft-matrix,fft-replay",
                    help="methods of the 3-stage sequence")  # fmt: skip
    ap.add_argument("--highlr-methods", default=None,
                    help="methods run at 3x/10x FFT's best lr (default: fft and the HFTs)")  # fmt: skip
    ap.add_argument("--stage-lr", type=float, default=None, help="lr of the 3-stage sequence "
                    "(default: FFT's best-learning lr at the smallest step count)")  # fmt: skip
    ap.add_argument("--parts", default="frontier,highlr,stages,ratio,second",
                    help="which parts to run, in this order: frontier,highlr,stages,ratio,second")  # fmt: skip
    ap.add_argument("--base", action="store_true", help="only build/load the base; print scores")
    ap.add_argument("--demo", action="store_true", help="run the short demo into --out")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from --out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        from .experiment import parse_list, run_benchmark, setup, write_report

        if args.demo:
            from .demo import run_demo

            run_demo(args.out)
        elif args.base:
            su = setup()
            print(json.dumps({"info": su.info, "scores": su.base_scores}, indent=1))
        elif args.report_only:
            base = json.loads((Path(args.out) / "base.json").read_text())
            print(write_report(Path(args.out), base["scores"], base["info"]))
        else:
            if args.seeds < 2:
                raise HFTError(
                    f"--seeds must be at least 2 for confidence intervals, got {args.seeds}"
                )
            result = run_benchmark(
                Path(args.out),
                seeds=list(range(args.seeds)),
                lrs=parse_list(args.lrs, float, "lrs"),
                steps=sorted(parse_list(args.steps, int, "steps")),
                methods=parse_list(args.methods, str, "methods"),
                domains=parse_list(args.domains, str, "domains"),
                second_domain=args.second_domain or None,
                second_seeds=list(range(args.second_seeds)) if args.second_seeds else None,
                second_steps=args.second_steps,
                ratios=parse_list(args.ratios, float, "ratios"),
                stage_lr=args.stage_lr,
                stage_methods=parse_list(args.stage_methods, str, "stage-methods"),
                highlr_methods=parse_list(args.highlr_methods, str, "highlr-methods")
                if args.highlr_methods
                else None,
                payoff_seeds=list(range(args.payoff_seeds)) if args.payoff_seeds else None,
                parts=parse_list(args.parts, str, "parts"),
            )
            print(result["report"])
    except HFTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wall time {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
