"""The grid's cost, from step and evaluation times measured on this machine (``--plan``).

``measure`` times a few training steps of every method on each kind of stage (SFT, DPO;
the first step of each is a warm-up and not counted), the DPO reference pass per pair and
one evaluation of one, two and three tasks, in wall seconds and in this process's CPU seconds (all its
threads); ``estimate`` multiplies them out over the grid's runs. On a machine shared with
other jobs the wall times grow with their load and the CPU times much less: the CPU total
divided by the threads is what the grid would take with the cores to itself.
"""

from __future__ import annotations

import copy
import os
import statistics
import time

from .. import methods as harness_methods
from . import probes as chat_probes
from . import tasks as chat_tasks
from .runs import dpo_rows, loop_options

TIMED_STEPS = 2  # steps timed per method and kind, after one warm-up step
CLOCKS = ("wall", "cpu")


def _now() -> dict:
    return {"wall": time.perf_counter(), "cpu": time.process_time()}


def _since(start: dict) -> dict:
    now = _now()
    return {c: now[c] - start[c] for c in CLOCKS}


def _step_seconds(su, method: str, kind: str, rows) -> dict:
    """Median seconds of one training step of ``method`` on ``rows``, per clock."""
    stamps = []
    rows, loop = loop_options(su, kind, method, rows)
    harness_methods.run_stage(
        "fft" if method == "fft-replay" else method, copy.deepcopy(su.model), rows,
        steps=TIMED_STEPS + 1, lr=1e-6, seed=0, stage=0, batch_size=su.batch_size,
        after_step=lambda step, model, loss: stamps.append(_now()), **loop,
    )  # fmt: skip
    return {c: statistics.median(b[c] - a[c] for a, b in zip(stamps, stamps[1:], strict=False))
            for c in CLOCKS}  # fmt: skip


def measure(su, methods, log=print) -> dict:
    """Seconds per training step (method/kind), per DPO reference pair, per evaluation and
    per copy of the base, each ``{"wall": s, "cpu": s}``."""
    need = (TIMED_STEPS + 1) * su.batch_size
    dpo_task = next(n for n, s in su.splits.items() if s.kind == "dpo")
    steps = {}
    for method in methods:
        for kind, name in (("sft", chat_tasks.SINGLE), ("dpo", dpo_task)):
            rows = su.rows[name][:need]
            if kind == "dpo":
                rows = dpo_rows(su.model, rows, su.probes.pad)
            steps[f"{method}/{kind}"] = s = _step_seconds(su, method, kind, rows)
            log(f"  {method} {kind}: {s['wall']:.2f} s/step wall, {s['cpu']:.2f} CPU")
    start = _now()
    dpo_rows(su.model, su.rows[dpo_task][: su.batch_size], su.probes.pad)
    ref = {c: v / su.batch_size for c, v in _since(start).items()}
    evals = {}  # by the number of tasks scored: a stage scores the tasks trained so far
    for n in range(1, len(chat_tasks.SEQUENCE) + 1):
        start = _now()
        chat_probes.evaluate(su.model, su.probes, chat_tasks.SEQUENCE[:n])
        evals[str(n)] = _since(start)
    start = _now()
    copy.deepcopy(su.model)
    return {"step": steps, "dpo_ref_pair": ref, "eval": evals, "copy": _since(start),
            "setup": su.info["setup"], "batch_size": su.batch_size,
            "load_average": os.getloadavg()[0]}  # fmt: skip


def run_seconds(cfg: dict, timing: dict, clock: str = "wall") -> float:
    """Estimated seconds of one run (a config of ``Grid.configs``) on ``clock``."""
    steps = cfg["steps"]
    total = timing["copy"][clock]
    for stage, name in enumerate(cfg["domains"]):
        kind = chat_tasks.KINDS[name]
        total += steps * timing["step"][f"{cfg['method']}/{kind}"][clock]
        if kind == "dpo":
            total += steps * timing["batch_size"] * timing["dpo_ref_pair"][clock]
        scored = len(set(cfg["domains"][: stage + 1]))
        total += timing["eval"][str(scored)][clock] * (1 + len(cfg.get("eval_at", ())))
    return total


def estimate(grid, timing: dict) -> dict:
    """Per part: runs, optimizer steps and estimated seconds per clock; and the totals."""
    parts = {}
    for part in grid.parts:
        cfgs = grid.configs(part)
        parts[part] = {
            "runs": len(cfgs),
            "steps": sum(c["steps"] * len(c["domains"]) for c in cfgs),
        }
        for clock in CLOCKS:
            parts[part][clock] = sum(run_seconds(c, timing, clock) for c in cfgs)
    total = {c: timing["setup"][c] + sum(p[c] for p in parts.values()) for c in CLOCKS}
    return {"parts": parts, **total}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def describe(grid, timing: dict, est: dict, threads: int) -> str:
    """The plan: the grid, the measured times and the estimate, as printed lines."""
    lines = [f"Measured at {threads} threads, batch {timing['batch_size']}, load average "
             f"{timing['load_average']:.1f} (seconds per optimizer step, wall / CPU):", "",
             "| method | SFT step | DPO step |", "|---|---|---|"]  # fmt: skip
    for m in grid.methods:
        cells = [f"{timing['step'][f'{m}/{k}']['wall']:.2f} / {timing['step'][f'{m}/{k}']['cpu']:.2f}"
                 for k in ("sft", "dpo")]  # fmt: skip
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    ev, ref, setup = timing["eval"], timing["dpo_ref_pair"], timing["setup"]
    evals = ", ".join(f"{ev[n]['wall']:.1f} / {ev[n]['cpu']:.1f} s ({n} task{'s' * (n != '1')})"
                      for n in sorted(ev))  # fmt: skip
    lines += ["", f"evaluation {evals}; DPO reference {ref['wall']:.2f} / {ref['cpu']:.2f} s per "
              f"pair; set-up {setup['wall']:.0f} / {setup['cpu']:.0f} s.", ""]  # fmt: skip
    g = grid
    for part in g.parts:
        p = est["parts"][part]
        if part == "single":
            what = (f"single ({chat_tasks.SINGLE}): {len(g.methods)} methods x lrs {g.lrs} x "
                    f"steps {g.steps} (one run each, read at every count) x seeds {g.seeds}")  # fmt: skip
        else:
            what = (f"sequence ({' -> '.join(chat_tasks.SEQUENCE)}, {g.sequence_steps} steps a "
                    f"stage): {len(g.methods)} methods x lrs {g.sequence_lrs} x seeds {g.seeds}")  # fmt: skip
        lines.append(f"{what} = {p['runs']} runs, {p['steps']} steps: {_minutes(p['wall'])} "
                     f"wall, {_minutes(p['cpu'])} CPU")  # fmt: skip
    lines.append(f"estimated total (set-up included): {_minutes(est['wall'])} wall at this "
                 f"load; {_minutes(est['cpu'])} CPU, {_minutes(est['cpu'] / threads)} on "
                 f"{threads} idle cores at best")  # fmt: skip
    return "\n".join(lines)
