"""Batching, scoring and a plain training loop shared by the base model and the benchmark.

A row is ``prompt + completion + <eos>``; the loss covers the completion and the
end token only (TRL's default for prompt-completion data, so the demo's TRL runs
and these loops optimise the same objective).
"""

from __future__ import annotations

import random

import torch

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


def batch(pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and completion-only labels."""
    seqs, labels = [], []
    for prompt, completion in pairs:
        p, c = encode(prompt), encode(completion) + [EOS]
        seqs.append(p + c)
        labels.append([IGNORE] * len(p) + c)
    return pad_batch(seqs, labels, PAD, IGNORE)


def _completion_logprobs(model, pairs, chunk: int = 256):
    """Per pair: (sum of log-probs of the completion + eos, all greedy tokens right?)."""
    out = []
    for start in range(0, len(pairs), chunk):
        b = batch(pairs[start : start + chunk])
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        logits, target = logits[:, :-1].float(), b["labels"][:, 1:]
        keep = target != IGNORE
        logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
        total = (logp * keep).sum(-1)
        right = ((logits.argmax(-1) == target) | ~keep).all(-1)
        out += list(zip(total.tolist(), right.tolist(), strict=True))
    return out


@torch.no_grad()
def exact_match(model, rows) -> float:
    """Share of rows whose greedy continuation is exactly the completion, then <eos>.

    Greedy decoding reproduces the completion iff at every completion position the
    argmax given the true prefix is the true token, so one teacher-forced forward
    pass decides it without a generation loop.
    """
    was_training = model.training
    model.eval()
    scores = _completion_logprobs(model, [(r["prompt"], r["completion"]) for r in rows])
    model.train(was_training)
    return sum(right for _, right in scores) / len(rows)


@torch.no_grad()
def latent_score(model, rows) -> float:
    """Share of rows where the correct answer is strictly the likeliest of its candidates."""
    was_training = model.training
    model.eval()
    pairs = [(r["prompt"], c) for r in rows for c in r["candidates"]]
    logps = [lp for lp, _ in _completion_logprobs(model, pairs)]
    model.train(was_training)
    hits, i = 0, 0
    for r in rows:
        n = len(r["candidates"])
        scores = logps[i : i + n]
        hits += scores[0] > max(scores[1:])
        i += n
    return hits / len(rows)


def train_steps(model, optimizer, rows, steps: int, batch_size: int, seed: int, progress=None):
    """``steps`` optimizer steps on batches drawn (with reshuffles) from ``rows``."""
    rng = random.Random(seed)
    order: list[int] = []
    model.train()
    stepper = Stepper(model, optimizer)
    losses = []
    for _ in range(steps):
        if len(order) < batch_size:
            fresh = list(range(len(rows)))
            rng.shuffle(fresh)
            order += fresh
        picked, order = order[:batch_size], order[batch_size:]
        stepper.step(**batch([(rows[i]["prompt"], rows[i]["completion"]) for i in picked]))
        losses.append(stepper.loss.item())
        if progress is not None:
            progress.update(1)
    return losses
