"""The harness's one batching path, one scorer and one training loop.

Every setting (the synthetic tasks, the WordNet base, a real chat model) turns a row into
``(prompt ids, completion ids)`` its own way (characters, a chat template) and from there
shares everything: ``pair_batch`` pads the pairs with labels on the completion (the end
token included; TRL's default for prompt-completion data, so the demo's TRL runs and this
loop optimise the same objective), ``completion_scores`` scores them teacher-forced and
``train_steps`` runs the optimizer steps every benchmark trains with.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from hft_plugins import HFTError

from .tokenizer import VOCAB, encode
from .training import Stepper

PAD, EOS = VOCAB["<pad>"], VOCAB["<eos>"]
IGNORE = -100


def pad_batch(seqs: list[list[int]], labels: list[list[int]], pad: int, ignore: int) -> dict:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (``ignore`` past the end)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad)
    lab = torch.full((len(seqs), width), ignore)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, y) in enumerate(zip(seqs, labels, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(y)] = torch.tensor(y)
        att[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": att, "labels": lab}


def pair_batch(pairs, pad: int, loss_on: str = "completion") -> dict:
    """``(prompt ids, completion ids)`` pairs right-padded into one batch; labels on the
    completion (``loss_on="completion"``) or on every token after the first (``"all"``)."""
    if loss_on not in ("completion", "all"):
        raise HFTError(f"loss_on must be 'completion' or 'all', got {loss_on!r}")
    seqs, labels = [], []
    for prompt, completion in pairs:
        seqs.append(list(prompt) + list(completion))
        head = [IGNORE] + list(prompt[1:]) if loss_on == "all" else [IGNORE] * len(prompt)
        labels.append(head + list(completion))
    return pad_batch(seqs, labels, pad, IGNORE)


def batch(pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """The synthetic tasks' batch: characters, then ``<eos>`` after the completion."""
    return pair_batch([(encode(p), encode(c) + [EOS]) for p, c in pairs], PAD)


@dataclass(frozen=True)
class Scored:
    """One completion: the sum of its tokens' log-probabilities, how many tokens, whether
    greedy decoding from the prompt reproduces it (the argmax is right at every token), and
    the log-probability of its last token alone."""

    logprob: float
    tokens: int
    greedy: bool
    last: float


def _labelled(model, inputs: dict):
    """One forward pass over a batch: the labelled positions, the argmax there (is it the
    label?) and each position's log-probability of its label (0 where unlabelled). The
    softmax runs over the labelled positions only: a chat prompt is most of a sequence."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    target = inputs["labels"][:, 1:]
    keep = target != IGNORE
    picked = logits[:, :-1][keep].float()
    wanted = target[keep]
    logp = torch.zeros(keep.shape, dtype=picked.dtype).masked_scatter(
        keep, torch.log_softmax(picked, -1).gather(-1, wanted[:, None])[:, 0]
    )
    hit = torch.ones(keep.shape, dtype=torch.bool)
    hit[keep] = picked.argmax(-1) == wanted
    return keep, hit, logp


def sequence_logprobs(model, inputs: dict) -> torch.Tensor:
    """Per row, the summed log-probability of its labelled tokens, differentiable (DPO)."""
    return _labelled(model, inputs)[2].sum(-1)


def completion_scores(model, inputs: dict) -> list[Scored]:
    """Teacher-forced scores of one batch's labelled tokens, row by row (one forward pass)."""
    keep, hit, logp = _labelled(model, inputs)
    totals, counts, right = logp.sum(-1).tolist(), keep.sum(-1).tolist(), hit.all(-1).tolist()
    at = (keep * torch.arange(keep.shape[1])).argmax(-1, keepdim=True)  # the last labelled
    last = logp.gather(-1, at)[:, 0].tolist()
    return [Scored(*row) for row in zip(totals, counts, right, last, strict=True)]


@torch.no_grad()
def score_pairs(model, pairs, pad: int, batch_size: int = 16, progress=None) -> list[Scored]:
    """Scores of ``(prompt ids, completion ids)`` pairs, in their order; batched by length
    so that little is padded."""
    if not pairs:
        raise HFTError("no items to score")
    was_training = model.training
    model.eval()
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    out: list[Scored | None] = [None] * len(pairs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for i, s in zip(idx, completion_scores(model, pair_batch([pairs[i] for i in idx], pad)),
                        strict=True):  # fmt: skip
            out[i] = s
        if progress is not None:
            progress.update(len(idx))
    model.train(was_training)
    return out


def _scores(model, pairs: list[tuple[str, str]]) -> list[Scored]:
    return score_pairs(model, [(encode(p), encode(c) + [EOS]) for p, c in pairs], PAD, 256)


def exact_match(model, rows) -> float:
    """Share of rows whose greedy continuation is exactly the completion, then <eos>.

    Greedy decoding reproduces the completion iff at every completion position the
    argmax given the true prefix is the true token, so one teacher-forced forward
    pass decides it without a generation loop.
    """
    scores = _scores(model, [(r["prompt"], r["completion"]) for r in rows])
    return sum(s.greedy for s in scores) / len(rows)


def latent_score(model, rows) -> float:
    """Share of rows where the correct answer is strictly the likeliest of its candidates."""
    logps = [
        s.logprob for s in _scores(model, [(r["prompt"], c) for r in rows for c in r["candidates"]])
    ]
    hits, i = 0, 0
    for r in rows:
        n = len(r["candidates"])
        scores = logps[i : i + n]
        hits += scores[0] > max(scores[1:])
        i += n
    return hits / len(rows)


class Diverged(HFTError):
    """The training loss stopped being a finite number."""


def train_steps(
    model,
    optimizer,
    rows,
    steps: int,
    batch_size: int,
    seed: int,
    progress=None,
    *,
    to_batch=None,
    loss=None,
    replay=(),
    replay_rate: float = 0.0,
    after_step=None,
) -> list[float]:
    """``steps`` optimizer steps on batches drawn from ``rows`` (reshuffled by ``seed`` each
    time they run out); returns the losses.

    ``to_batch`` turns a list of rows into the model's inputs (default: the synthetic tasks'
    ``batch`` of prompt/completion dicts); ``loss(model, inputs)`` replaces the model's own
    loss (DPO). With ``replay_rate`` each drawn row is, with that probability, one of
    ``replay`` instead (a draw of its own, so the task rows are the same with or without).
    ``progress.update(1)`` and ``after_step(step, model, loss)`` run after each step. A loss that
    is not finite stops the run with :class:`Diverged`.
    """
    if to_batch is None:
        to_batch = _rows_batch
    rng = random.Random(seed)
    mix = random.Random(seed + 7_777_777)
    order: list[int] = []
    model.train()
    stepper = Stepper(model, optimizer, loss=loss)
    losses = []
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            fresh = list(range(len(rows)))
            rng.shuffle(fresh)
            order += fresh
        picked, order = order[:batch_size], order[batch_size:]
        items = [rows[i] for i in picked]
        if replay_rate:
            items = [replay[mix.randrange(len(replay))] if mix.random() < replay_rate else it
                     for it in items]  # fmt: skip
        stepper.step(**to_batch(items))
        value = stepper.loss.item()
        if not math.isfinite(value):
            raise Diverged(f"training loss became {value} (lr too high?)")
        losses.append(value)
        if progress is not None:
            progress.update(1)
        if after_step is not None:
            after_step(step, model, value)
    return losses


def _rows_batch(rows) -> dict:
    return batch([(r["prompt"], r["completion"]) for r in rows])
