"""Step time, peak memory and optimizer state of HFT against the tools users would pick instead.

Methods: ``fft`` (torch AdamW over everything), ``frozen`` (torch AdamW over the
mask's requires_grad parameters, nothing else: what hand-freezing gives),
``hft`` (HFTOptimizer), ``hft-fullgrad`` (HFTOptimizer with sliced_grad=False:
the whole weight gradient of fused projections and experts),
``lora`` (PEFT, r=16 on every block projection) and ``badam`` (the badam
package's BlockOptimizer, one transformer block at a time).

Peak memory and optimizer state come from each method running alone in its
own subprocess. Step time (``--timing interleaved``, the CPU default) comes from
one more subprocess holding every method's model, where the methods take turns:
each round runs ``--steps`` steps of every method, in an order rotated per
round, so drift on a busy machine hits all of them alike. ``--timing process``
(the CUDA default, since BAdam empties the CUDA cache at every step) times the
own-process runs instead, ``--repeats`` rounds of them. Step time is the median
over all timed steps. The parent also prints a FLOP and bytes model and the
floor: the HFT / FFT step-time ratio a perfect HFT would reach on this machine.

Full size (CPU, about 100M parameters, fp32):  python -m hft_bench.step
Fused projections (GPT-2 shaped):               python -m hft_bench.step --arch gpt2
Routed experts (Mixtral shaped, fft/frozen/hft/hft-fullgrad): python -m hft_bench.step --arch moe
Smoke:  python -m hft_bench.step --hidden 64 --layers 2 --vocab 128 --steps 1 --repeats 1
(``hft bench step`` takes the same options.)

Modules: ``options`` (the flags), ``build`` (model and mask), ``measure`` (the workers
and their protocol), ``cost`` (FLOP and bytes model, floor), ``report`` (tables, targets).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    """``python -m hft_bench.step [options]``; ``--worker SPEC`` runs one worker instead."""
    from .options import parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        from .measure import answer, run_spec

        answer(run_spec(json.loads(args.worker)))
        return 0
    return run(args, argv, "python -m hft_bench.step")


def run(args, argv: list[str], prog: str) -> int:
    """Measure every method, print the header, tables and targets; ``--json`` writes all."""
    from .build import build_model, draw_mask
    from .cost import cost_model
    from .measure import measure
    from .report import print_header, print_report, summarise

    started = time.time()
    model = cost_model(args)
    meta = build_model(args, device="meta")
    print_header(args, model, meta, draw_mask(meta), f"{prog} {' '.join(argv)}")
    runs, timing, notes = measure(args, argv)
    summary = summarise(args, runs, timing)
    print_report(args, summary, model, notes)
    print(f"# wall time {time.time() - started:.0f} s")
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "argv": argv,
                    "summary": summary,
                    "model": model,
                    "notes": notes,
                    "runs": runs,
                    "timing": timing,
                },  # fmt: skip
                indent=1,
            )
        )
    return 0
