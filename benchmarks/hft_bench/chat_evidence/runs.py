"""Fine-tuning runs of the chat model: one stage or the sequence, then the probes.

Every method trains through the harness's one loop (``engine.train_steps``, by way of
``methods.run_stage``), the loop the toy evidence uses, so that every method sees the same
batches in the same order, one run is read at several step counts on the way
(``eval_at``), and LoRA and replay are the toy benchmark's. The SFT loss is TRL's for
conversational prompt-completion rows (the answer and its end-of-turn token, tokenized
through the chat template as TRL does); the DPO loss is TRL's default, the sigmoid loss at
beta 0.1 with the model at the start of the stage as the reference (its log-probabilities
of each pair are computed once, before the stage). Every method uses AdamW (no weight
decay, constant lr) with a fresh optimizer per stage; HFT draws a new half each stage.

Methods: ``fft``, ``hft-category``, ``hft-layer`` (ratio 0.5), ``lora`` (PEFT, r=8, all
block linears, merged after each stage, trained at ``LORA_LR_SCALE`` times the grid's lr:
at the full-rank methods' lrs it learns a tenth as much in the same steps, so its envelope
would never reach theirs) and ``fft-replay``: FFT where each SFT example is,
with probability 1%, one of the base's own answers to a general prompt instead (the base's
pretraining data is not available; its answers are what it does). A DPO stage has no
replay.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from hft_plugins import HFTError

from .. import methods as harness_methods
from ..engine import pair_batch, score_pairs, sequence_logprobs
from ..evidence.runs import recorded_stage
from . import probes as chat_probes

METHODS = ("fft", "hft-category", "hft-layer", "lora", "fft-replay")
REPLAY = 0.01
LORA_LR_SCALE = 10
DPO_BETA = 0.1


@dataclass
class Setup:
    """The base model, its tokenizer, the tasks' token ids, the probes and the base's scores."""

    model: object
    tokenizer: object
    splits: dict
    rows: dict  # task name -> training rows as token ids
    probes: chat_probes.Probes
    base_scores: dict
    batch_size: int
    info: dict


def check_methods(names) -> tuple[str, ...]:
    from ..common import check_names

    return check_names(names, METHODS, "method")


def dpo_rows(model, rows, pad: int) -> list[tuple]:
    """``(prompt, chosen, rejected, ref log p(chosen), ref log p(rejected))`` per preference
    row, the reference being ``model`` now."""
    chosen = score_pairs(model, [(p, c) for p, c, _ in rows], pad)
    rejected = score_pairs(model, [(p, r) for p, _, r in rows], pad)
    return [(*row, c.logprob, r.logprob) for row, c, r in zip(rows, chosen, rejected, strict=True)]


def dpo_batch(items, pad: int) -> dict:
    """Chosen rows then rejected rows in one batch, with the reference log-probabilities."""
    inputs = pair_batch([(p, c) for p, c, *_ in items] + [(p, r) for p, _, r, *_ in items], pad)
    inputs["ref_chosen"] = torch.tensor([it[3] for it in items])
    inputs["ref_rejected"] = torch.tensor([it[4] for it in items])
    return inputs


def dpo_loss(model, inputs: dict, beta: float = DPO_BETA) -> torch.Tensor:
    """TRL's sigmoid DPO loss: -log sigmoid(beta (chosen log-ratio - rejected log-ratio))."""
    logp = sequence_logprobs(model, inputs)
    n = len(inputs["ref_chosen"])
    ratio = (logp[:n] - inputs["ref_chosen"]) - (logp[n:] - inputs["ref_rejected"])
    return -torch.nn.functional.logsigmoid(beta * ratio).mean()


def loop_options(su: Setup, kind: str, method: str, rows) -> tuple[list, dict]:
    """The rows one stage trains on and how the loop batches them and takes its loss."""
    pad = su.probes.pad
    if kind == "dpo":
        return rows, dict(to_batch=lambda items: dpo_batch(items, pad), loss=dpo_loss)
    replay = method == "fft-replay"
    return rows, dict(
        to_batch=lambda items: pair_batch(items, pad),
        replay=su.probes.replay,
        replay_rate=REPLAY if replay else 0.0,
    )


def run_sequence(su: Setup, *, domains, method, lr, steps, seed, ratio=0.5, eval_at=(),
                 progress=None) -> list[dict]:  # fmt: skip
    """Fine-tune a copy of the base on ``domains`` (task names) in turn; the probes after
    each stage (the tasks trained so far scored), and at the ``eval_at`` step counts of a
    single stage. A run whose loss stops being finite is recorded as diverged."""
    check_methods([method])
    eval_at = sorted(set(eval_at))
    if eval_at and len(domains) != 1:
        raise HFTError("eval_at needs a single task")
    if any(not 0 < n < steps for n in eval_at):
        raise HFTError(f"eval_at {eval_at} must lie strictly between 0 and steps={steps}")
    if method == "fft-replay" and not su.probes.replay:
        raise HFTError("fft-replay needs the base's replay answers: set up with replay")
    model = copy.deepcopy(su.model)
    common = dict(method=method, lr=lr, seed=seed, ratio=ratio, domains=list(domains),
                  run_steps=steps, eval_at=eval_at)  # fmt: skip
    records = []
    for stage, name in enumerate(domains):
        kind = su.splits[name].kind
        rows = su.rows[name]
        if kind == "dpo":
            rows = dpo_rows(model, rows, su.probes.pad)
        rows, loop = loop_options(su, kind, method, rows)
        names = list(dict.fromkeys(domains[: stage + 1]))  # the tasks trained so far

        def train(after_step, model=model, rows=rows, stage=stage, loop=loop):
            return harness_methods.run_stage(
                "fft" if method == "fft-replay" else method, model, rows, steps=steps,
                lr=lr * LORA_LR_SCALE if method == "lora" else lr,
                seed=seed, stage=stage, batch_size=su.batch_size, ratio=ratio,
                after_step=after_step, progress=progress, **loop,
            )  # fmt: skip

        def evaluate(trained, names=names):
            return chat_probes.evaluate(trained, su.probes, names)

        model, recs, diverged = recorded_stage(train, evaluate, common=common, stage=stage,
                                               domain=name, eval_at=eval_at)  # fmt: skip
        records += recs
        if diverged:
            break
    return records


def drift_line(record: dict) -> str:
    """What a run's log line says of its end: drift and the task's held-out NLL."""
    if record.get("diverged"):
        return "diverged"
    return (f"drift {record['drift_nll']:.3f} task {record['task_nll/' + record['domain']]:.3f}")  # fmt: skip
