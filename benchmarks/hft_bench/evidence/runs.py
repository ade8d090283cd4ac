"""Fine-tuning runs from the base: one stage or a sequence of stages, then the metrics.

The methods are those of the forgetting benchmark (``methods.run_stage``: FFT, HFT
category/layer/matrix, real PEFT LoRA, real BAdam), run with this benchmark's batches
through the harness's one loop (``engine.train_steps``), plus ``fft-replay``: FFT where each training
example is, with probability 1%, a base item (gloss given headword) instead of a task
item. All use AdamW (no weight decay, constant lr) with a fresh optimizer per stage;
the batch order depends only on the seed and stage, so methods see the same batches.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
from pathlib import Path

from hft_plugins import HFTError
from hft_plugins.core.atomic import atomic_write_text

from .. import methods as _methods
from ..engine import Diverged
from .base import build_model, make_batch
from .metrics import evaluate

METHODS = (
    "fft",
    "hft-category",
    "hft-layer",
    "hft-matrix",
    "lora",
    "badam",
    "fft-replay",
)
REPLAY = 0.01
BATCH = 16
TRAIN_ITEMS = 300  # each fine-tuning domain trains on its first 300 items


def check_methods(names) -> tuple[str, ...]:
    names = tuple(names)
    if not names:
        raise HFTError("the method list is empty; known: " + ", ".join(METHODS))
    for n in names:
        if n not in METHODS:
            raise HFTError(f"unknown method {n!r}; known: {', '.join(METHODS)}")
    return names


class Checkpoints:
    """``after_step`` for the loop: ``evaluate(model)`` at the listed step counts, each with
    the training seconds so far (evaluations excluded)."""

    def __init__(self, at, evaluate):
        self.at, self.evaluate, self.t0, self.scores = set(at), evaluate, time.perf_counter(), {}

    def __call__(self, step, model, loss):
        if step in self.at:
            t = time.perf_counter()
            self.scores[step] = (t - self.t0, self.evaluate(model))
            self.t0 += time.perf_counter() - t  # training time excludes evaluations


def recorded_stage(train, evaluate, *, common: dict, stage: int, domain: str, eval_at=()):
    """One stage, quietly: ``train(after_step)`` returns the trained model; a record (the
    ``common`` fields and ``evaluate(model)``) at each ``eval_at`` step count and at the
    end. Returns (model, records, diverged); a stage whose loss stopped being finite has an
    end record without scores and no model."""
    marks = Checkpoints(eval_at, evaluate)
    model, diverged = None, False
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            model = train(marks)
        except Diverged:
            diverged = True
    here = dict(common, stage=stage, domain=domain)
    records = [dict(here, steps=n, diverged=False, train_s=round(train_s, 2), eval_s=0.0, **scores)
               for n, (train_s, scores) in sorted(marks.scores.items())]  # fmt: skip
    train_s = time.perf_counter() - marks.t0
    scores = {} if diverged else evaluate(model)
    eval_s = time.perf_counter() - marks.t0 - train_s
    records.append(dict(here, steps=common["run_steps"], diverged=diverged,
                        train_s=round(train_s, 2), eval_s=round(eval_s, 2), **scores))  # fmt: skip
    return model, records, diverged


def run_sequence(
    base_state,
    settings,
    corpus,
    evalset,
    *,
    domains,
    method,
    lr,
    steps,
    seed,
    ratio=0.5,
    eval_at=(),
) -> list[dict]:
    """Fine-tune a copy of the base on ``domains`` in turn; metrics after each stage.

    ``eval_at`` (one domain only) also evaluates at those earlier step counts. With a
    constant lr and a batch order fixed by the seed, the model after n of the run's
    steps is the model a run of n steps ends with, so one run serves several step
    counts; BAdam is the exception (its block switching depends on the total steps) and
    is refused here.
    """
    check_methods([method])
    eval_at = sorted(set(eval_at))
    if eval_at and (len(domains) != 1 or method == "badam"):
        raise HFTError("eval_at needs a single domain and a method other than badam")
    if any(not 0 < n < steps for n in eval_at):
        raise HFTError(f"eval_at {eval_at} must lie strictly between 0 and steps={steps}")
    model = build_model(settings)
    model.load_state_dict(base_state)
    evalset = {**evalset, "tasks": {d: evalset["tasks"][d] for d in dict.fromkeys(domains)}}
    records = []
    common = dict(method=method, lr=lr, seed=seed, ratio=ratio, domains=list(domains),
                  run_steps=steps, eval_at=eval_at)  # fmt: skip
    for stage, domain in enumerate(domains):
        replay = method == "fft-replay"

        def train(after_step, model=model, stage=stage, domain=domain, replay=replay):
            return _methods.run_stage(
                "fft" if replay else method, model, corpus.splits[domain][:TRAIN_ITEMS],
                steps=steps, lr=lr, seed=seed, stage=stage, batch_size=BATCH, ratio=ratio,
                to_batch=make_batch, replay=corpus.splits["base"],
                replay_rate=REPLAY if replay else 0.0, after_step=after_step,
            )  # fmt: skip

        model, recs, diverged = recorded_stage(
            train, lambda m: evaluate(m, evalset), common=common, stage=stage, domain=domain,
            eval_at=eval_at,
        )  # fmt: skip
        records += recs
        if diverged:
            break
    return records


def run_key(cfg: dict) -> str:
    """Identity of a run (config or record): a record's ``run_steps`` is its config's steps."""
    key = {k: cfg[k] for k in ("domains", "method", "lr", "seed", "ratio")}
    key["steps"] = cfg.get("run_steps", cfg["steps"])
    key["eval_at"] = sorted(cfg.get("eval_at", ()))
    return json.dumps(key, sort_keys=True)


def knowledge_line(record: dict) -> str:
    """What a toy run's log line says of its end: the base knowledge NLL."""
    return f"knowledge {record.get('knowledge_nll', 0):.3f}"


def run_grid(configs, run, out_path: Path, log=print, label="", describe=knowledge_line):
    """``run(**config)`` for every config not already in ``out_path`` (its records), saving
    the records after each run; a log line per run ends with ``describe(last record)``."""
    out_path = Path(out_path)
    done: list[dict] = []
    if out_path.exists():
        done = json.loads(out_path.read_text())["records"]
    have = {run_key(r) for r in done}
    todo = [c for c in configs if run_key(c) not in have]
    t0 = time.perf_counter()
    for i, cfg in enumerate(todo):
        recs = run(**cfg)
        done += recs
        atomic_write_text(out_path, json.dumps({"records": done}, indent=0) + "\n")
        el = time.perf_counter() - t0
        last = recs[-1]
        log(
            f"{label} {i + 1}/{len(todo)} {cfg['method']} lr={cfg['lr']:g} steps={cfg['steps']} "
            f"seed={cfg['seed']} ratio={cfg['ratio']} -> {describe(last)}"
            f" train {last['train_s']:.1f}s eval {last['eval_s']:.1f}s [{el:.0f}s]"
        )
    return done
