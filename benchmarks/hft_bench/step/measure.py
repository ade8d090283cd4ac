"""The step benchmark's measurements: each method alone in its own process (peak memory,
optimizer state, and step time with ``--timing process``), and all methods taking turns in
one more process (step time with ``--timing interleaved``).

The parent talks to a worker through one function pair: ``call_worker(spec)`` runs
``python -m hft_bench.step --worker SPEC`` (SPEC: JSON with the method, the argv and
extras) and reads back the one stdout line ``answer(result)`` printed there, marked
``STEP-RESULT`` and followed by the result as JSON; anything else on stdout is ignored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .. import training
from ..common import peak_rss_bytes, rss_bytes
from .build import block_prefixes, build_model, draw_mask
from .options import MOE_SKIPPED, parse_args

MARK = "STEP-RESULT "
LR, WEIGHT_DECAY = 1e-4, 0.01


# ---- the protocol ------------------------------------------------------------------


def call_worker(spec: dict) -> dict:
    """Parent side: run one worker on ``spec``; its result, or {"method", "error"}."""
    import hft_plugins

    from .. import __file__ as bench_init

    roots = [str(Path(f).resolve().parents[1]) for f in (bench_init, hft_plugins.__file__)]
    path = os.pathsep.join(dict.fromkeys(filter(None, [*roots, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-m", "hft_bench.step", "--worker", json.dumps(spec)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=path),
    )  # fmt: skip
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"method": spec["method"], "error": f"exit {proc.returncode}: {tail[:300]}"}


def answer(result: dict) -> None:
    """Worker side: print ``result`` as the line ``call_worker`` reads."""
    print(MARK + json.dumps(result), flush=True)


# ---- one method --------------------------------------------------------------------


def make_setup(method: str, model, args) -> training.Setup:
    """``method``'s model and optimizer (lr 1e-4, weight decay 0.01 for all)."""
    opts = dict(lr=LR, weight_decay=WEIGHT_DECAY)
    if method == "fft":
        return training.fft(model, **opts)
    if method == "frozen":
        return training.frozen(model, draw_mask(model), **opts)
    if method in ("hft", "hft-fullgrad"):
        return training.hft(model, draw_mask(model), sliced_grad=method == "hft", **opts)
    if method == "lora":
        return training.lora(
            model, rank=args.lora_rank, targets=training.LORA_TARGETS[args.arch],
            fan_in_fan_out=args.arch == "gpt2", **opts,
        )  # fmt: skip
    if method == "badam":
        blocks = block_prefixes(model)
        # A middle block: its backward stops there, as it does on average over a BAdam epoch.
        return training.badam(
            model, switch_every=10**9, block_prefix_list=blocks,
            start_block=len(blocks) // 2, **opts,
        )  # fmt: skip
    raise ValueError(method)


def _stepper(args, method: str) -> tuple[training.Setup, training.Stepper]:
    setup = make_setup(method, build_model(args), args)
    cuda = args.device.startswith("cuda")
    return setup, training.Stepper(setup.model, setup.optimizer, cuda=cuda)


def _step(stepper: training.Stepper, ids) -> tuple[float, float, float]:
    return stepper.step(input_ids=ids, labels=ids)


def _import_for(method: str) -> None:
    """Import what ``method`` needs (so the footprint after imports includes it)."""
    if method == "lora":
        import peft  # noqa: F401
    if method == "badam":
        import badam  # noqa: F401
    try:
        import transformers  # noqa: F401
    except ImportError:
        pass


def _warm_process(args) -> None:
    """Run one step of a tiny model of the same kind, so lazy imports and kernel
    initialisation land in the footprint, not in the first method's peak."""
    import copy

    import torch

    tiny = copy.copy(args)
    tiny.hidden, tiny.layers, tiny.intermediate, tiny.vocab = 64, 1, 128, 64
    tiny.heads, tiny.kv_heads, tiny.model_config = 2, 2, None
    model = build_model(tiny)
    opt = torch.optim.AdamW(model.parameters())
    ids = torch.zeros(1, 8, dtype=torch.long, device=args.device)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    del model, opt


def _batches(args) -> dict:
    import torch

    generator = torch.Generator().manual_seed(args.seed)
    return {
        regime: torch.randint(0, args.vocab, args.shapes[regime], generator=generator).to(
            args.device
        )
        for regime in args.regimes
    }


def _timings(rows) -> dict:
    """Rows of (round, step, fwd+bwd, optimizer) as lists."""
    return {
        "round": [r[0] for r in rows],
        "step_s": [r[1] for r in rows],
        "fwd_bwd_s": [r[2] for r in rows],
        "opt_s": [r[3] for r in rows],
    }


def worker(spec: dict) -> dict:
    """One method in this process: time its steps per regime, report peak memory and state."""
    args = parse_args(spec["argv"])
    method = spec["method"]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        _import_for(method)
    except ImportError as exc:
        return {"method": method, "skipped": f"{type(exc).__name__}: {exc}"}
    cuda = args.device.startswith("cuda")
    _warm_process(args)
    footprint = torch.cuda.memory_allocated() if cuda else rss_bytes()
    setup, stepper = _stepper(args, method)
    batches = _batches(args)
    result = {"method": method, "regimes": {}, "trainable": setup.trainable}
    # Smallest activations first: CPU peak RSS cannot be reset, so each regime's peak is the
    # peak so far, and the compute regime's activations exceed the optimizer regime's.
    for regime in sorted(args.regimes, key=lambda r: batches[r].numel()):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rows = []
        for step in range(args.warmup + args.steps):
            times = _step(stepper, batches[regime])
            if step >= args.warmup:
                rows.append((spec.get("round", 0), *times))
        peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
        result["regimes"][regime] = {
            **_timings(rows),
            "peak_bytes": peak - footprint,
            "loss": float(stepper.loss),
        }
    result["state_bytes"] = setup.state_bytes()
    return result


def interleaved_worker(spec: dict) -> dict:
    """All methods in this process, stepping in turn: drift on a busy machine hits all alike."""
    args = parse_args(spec["argv"])
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    steppers, notes = {}, {}
    for method in spec["methods"]:
        try:
            _import_for(method)
            steppers[method] = _stepper(args, method)[1]
        except ImportError as exc:
            notes[method] = f"{type(exc).__name__}: {exc}"
    batches = _batches(args)
    timing = {method: {} for method in steppers}
    order = list(steppers)
    for regime in args.regimes:
        for stepper in steppers.values():
            for _ in range(args.warmup):
                _step(stepper, batches[regime])
        rows = {method: [] for method in steppers}
        for round_index in range(args.repeats):
            shift = round_index % len(order)
            for method in order[shift:] + order[:shift]:
                for _ in range(args.steps):
                    rows[method].append((round_index, *_step(steppers[method], batches[regime])))
        for method in steppers:
            timing[method][regime] = _timings(rows[method])
    return {"method": "interleaved", "timing": timing, "notes": notes}


def run_spec(spec: dict) -> dict:
    """The worker's work: one method, or all of them interleaved."""
    return (interleaved_worker if spec["method"] == "interleaved" else worker)(spec)


# ---- the parent ----------------------------------------------------------------------


def measure(args, argv: list[str]) -> tuple[dict, dict | None, dict]:
    """(own-process runs per method, interleaved timing or None, notes per method)."""
    interleaved = args.timing == "interleaved"
    # Interleaved timing: memory runs need only a warm-up step (state exists) and one step.
    memory_argv = argv + ["--warmup", "1", "--steps", "1"] if interleaved else argv
    runs: dict[str, list[dict]] = {m: [] for m in args.method_list}
    notes: dict[str, str] = {}
    if args.arch == "moe":
        notes.update({m: note for m, note in MOE_SKIPPED.items() if m in args.method_list})
    for round_index in range(1 if interleaved else args.repeats):
        shift = round_index % len(args.method_list)
        for method in args.method_list[shift:] + args.method_list[:shift]:
            if method in notes:
                continue
            result = call_worker({"method": method, "argv": memory_argv, "round": round_index})
            if "skipped" in result or "error" in result:
                notes[method] = result.get("skipped") or result["error"]
                continue
            runs[method].append(result)
            print(f"# {method}: own process, round {round_index + 1} done", flush=True)
    timing = None
    if interleaved:
        live = [m for m in args.method_list if m not in notes]
        result = call_worker({"method": "interleaved", "argv": argv, "methods": live})
        if "error" in result:
            notes["interleaved timing"] = result["error"]
        else:
            timing = result["timing"]
            notes.update(result["notes"])
            print(f"# interleaved timing of {', '.join(live)}: done", flush=True)
    return runs, timing, notes
