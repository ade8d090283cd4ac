"""The benchmark's settings, its set-up from a model, its grids and its records.

Two parts, each a grid of runs written as records (``single.json``, ``sequence.json``)
beside ``base.json`` (the base's scores and the settings), resumable run by run:

- ``single``: one stage of ``define``; methods x lrs x seeds, each run to the largest step
  count and read at the smaller ones on the way;
- ``sequence``: ``define`` (SFT) -> ``kind-of`` (DPO) -> ``verb`` (SFT), the same
  number of steps per stage; methods x lrs x seeds, read at the end of the sequence.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from hft_plugins import HFTError
from hft_plugins.core.atomic import atomic_write_text

from ..evidence.experiment import configs
from ..evidence.runs import run_grid
from . import probes as chat_probes
from . import tasks as chat_tasks
from .runs import METHODS, Setup, check_methods, drift_line, run_sequence

PARTS = ("single", "sequence")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Grid:
    """What runs: the methods, seeds and learning rates of both parts, the step counts of
    the single stage (one run read at each), the steps of each stage of the sequence, and
    the sizes every run shares."""

    methods: list = field(default_factory=lambda: list(METHODS))
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    lrs: list = field(default_factory=lambda: [1e-5, 3e-5, 1e-4])
    steps: list = field(default_factory=lambda: [4, 8])
    sequence_lrs: list = field(default_factory=lambda: [1e-5, 2e-5, 6e-5, 1e-4])
    sequence_steps: int = 4
    batch_size: int = 4
    heldout: int = 16
    answer_tokens: int = 64
    parts: list = field(default_factory=lambda: list(PARTS))

    def check(self) -> None:
        check_methods(self.methods)
        if "fft" not in self.methods:
            raise HFTError("the methods must include fft: everything is compared with it")
        for part in self.parts:
            if part not in PARTS:
                raise HFTError(f"unknown part {part!r}; known: {', '.join(PARTS)}")
        for name in ("seeds", "lrs", "steps", "sequence_lrs", "methods", "parts"):
            if not getattr(self, name):
                raise HFTError(f"the {name.replace('_', ' ')} list is empty")
        if any(not lr > 0 for lr in self.lrs + self.sequence_lrs):
            raise HFTError("every learning rate must be positive")
        for name in ("sequence_steps", "batch_size", "heldout", "answer_tokens"):
            if getattr(self, name) < 1:
                raise HFTError(
                    f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}"
                )
        if min(self.steps) < 1:
            raise HFTError(f"every step count must be at least 1, got {min(self.steps)}")

    def configs(self, part: str) -> list[dict]:
        """The part's runs, seed outermost (an interrupted grid has whole seeds)."""
        if part == "single":
            return configs([[chat_tasks.SINGLE]], self.methods, self.lrs, self.steps, self.seeds)
        return configs([list(chat_tasks.SEQUENCE)], self.methods, self.sequence_lrs,
                       [self.sequence_steps], self.seeds)  # fmt: skip

    def sizes(self) -> dict:
        """What a record's numbers depend on besides its own config: a resumed grid must
        have the same."""
        keep = ("batch_size", "heldout", "answer_tokens")
        return {k: v for k, v in asdict(self).items() if k in keep}


def setup(base, tokenizer, corpus, grid: Grid, *, model_name: str, log=_log) -> Setup:
    """The tasks' ids, the probes (the base's own answers among them) and the base's scores."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    if tokenizer.chat_template is None or tokenizer.eos_token is None:
        raise HFTError(f"{model_name} has no chat template or eos token: not a chat model")
    # each task trains on as many rows as its longest run draws: every row once at most
    stage = grid.sequence_steps * grid.batch_size
    longest = {chat_tasks.SINGLE: max(max(grid.steps) * grid.batch_size, stage)}
    splits = {n: chat_tasks.load(corpus, [n], train=longest.get(n, stage), heldout=grid.heldout)[n]
              for n in chat_tasks.SEQUENCE}  # fmt: skip
    rows = {n: [chat_tasks.ids(tokenizer, it) for it in s.train] for n, s in splits.items()}
    log(f"base answers to {len(chat_probes.DRIFT_PROMPTS)} general prompts "
        f"({grid.answer_tokens} tokens at most) ...")  # fmt: skip
    probes = chat_probes.Probes.build(base, tokenizer, splits, answer_tokens=grid.answer_tokens,
                                      replay="fft-replay" in grid.methods)  # fmt: skip
    log("scoring the base ...")
    base_scores = chat_probes.evaluate(base, probes, chat_tasks.SEQUENCE)
    params = sum(p.numel() for p in base.parameters())
    # what every record's numbers rest on: the probes' and the training rows' token ids
    ids = (probes.tasks, probes.rejected, probes.drift, probes.ended, probes.facts,
           probes.choices, probes.text, probes.replay, rows)  # fmt: skip
    digest = hashlib.sha256(repr(ids).encode()).hexdigest()[:16]
    info = {"model": model_name, "params": params, **probes.info, "items_sha256": digest,
            "setup": {"wall": round(time.perf_counter() - t0, 1),
                      "cpu": round(time.process_time() - cpu0, 1)}}  # fmt: skip
    return Setup(base, tokenizer, splits, rows, probes, base_scores, grid.batch_size, info)


def run_benchmark(out, su: Setup, grid: Grid, *, log=_log, progress=None) -> dict:
    """Run the grid's parts into ``out`` (records per part, resumed where they stopped),
    then write the report."""
    from . import report

    grid.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_path = out / "base.json"
    if base_path.exists():  # a grid resumes only on the same model, sizes and items
        old = json.loads(base_path.read_text())
        was = (old.get("info", {}).get(k) for k in ("model", "items_sha256"))
        if old.get("sizes") != grid.sizes() or tuple(was) != (
            su.info["model"],
            su.info["items_sha256"],
        ):
            raise HFTError(f"{out} holds runs of other settings or items ({old.get('info', {}).get('model')}, "
                           f"{old.get('sizes')}): give another --out")  # fmt: skip
    base = {"scores": su.base_scores, "info": su.info, "sizes": grid.sizes(),
            "base_answers": su.probes.base_answers}  # fmt: skip
    atomic_write_text(base_path, json.dumps(base, indent=1) + "\n")
    run = partial(run_sequence, su, progress=progress)
    t0 = time.perf_counter()
    for part in grid.parts:
        run_grid(grid.configs(part), run, out / f"{part}.json", log, part, describe=drift_line)
    text = report.write_report(out)
    log(f"wall time {time.perf_counter() - t0:.0f}s; report: {out / 'report.md'}")
    return {"report": text, "wall_s": time.perf_counter() - t0}
