"""Continuous metrics, all computed teacher-forced on the completion (and its <eos>).

- ``nll``: per-token negative log-likelihood (nats) of the completions given their
  prompts, pooled over all tokens of all items (sum of -log p / number of tokens).
  On ``base_eval`` it is the base's *knowledge* (glosses it was trained on); on
  ``heldout`` *general language* (glosses never trained on); on a fine-tuning
  domain's items the *new task*.
- ``probe``: multiple choice. For each probe headword the right definition and
  ``k - 1`` definitions of other base synsets (fixed draw) are scored by their total
  log-likelihood given ``"<headword>: "``; a hit is the right one strictly highest.
  Chance is ``1/k``.
"""

from __future__ import annotations

import random

from hft_plugins import HFTError

from ..engine import Scored, score_pairs
from .base import PAD, item_ids


def completion_logprobs(model, items) -> list[Scored]:
    """Per item: the log-probability of completion + <eos> and its token count."""
    return score_pairs(model, [item_ids(p, c) for p, c in items], PAD, batch_size=128)


def nll(model, items) -> float:
    """Per-token NLL (nats) of the completions, pooled over all tokens."""
    scores = completion_logprobs(model, items)
    return -sum(s.logprob for s in scores) / sum(s.tokens for s in scores)


def probe_candidates(probe, pool, k: int = 4, seed: int = 0):
    """For each probe item: (prompt, [right completion, k-1 distractors]) with a fixed draw."""
    if k < 2:
        raise HFTError(f"the probe needs k >= 2 candidates, got {k}")
    rng = random.Random(seed)
    completions = sorted({c for _, c in pool})
    out = []
    for prompt, right in probe:
        others = [c for c in rng.sample(completions, k + 1) if c != right][: k - 1]
        if len(others) < k - 1:
            raise HFTError(f"the distractor pool has too few definitions for k={k}")
        out.append((prompt, [right, *others]))
    return out


def probe_accuracy(model, candidates) -> float:
    """Share of probe rows whose right completion (index 0) strictly beats every other."""
    pairs = [(p, c) for p, cands in candidates for c in cands]
    scores = [s.logprob for s in completion_logprobs(model, pairs)]
    hits, i = 0, 0
    for _, cands in candidates:
        row = scores[i : i + len(cands)]
        hits += row[0] > max(row[1:])
        i += len(cands)
    return hits / len(candidates)


def evaluate(model, evalset: dict) -> dict[str, float]:
    """All metrics of ``evalset`` (see ``make_evalset``): the names of the report."""
    out = {
        "knowledge_nll": nll(model, evalset["base_eval"]),
        "heldout_nll": nll(model, evalset["heldout"]),
        "probe_acc": probe_accuracy(model, evalset["probe"]),
    }
    for name, items in evalset["tasks"].items():
        out[f"task_nll/{name}"] = nll(model, items)
    return out


def make_evalset(corpus, tasks=(), k: int = 4, task_items: int = 100) -> dict:
    """The fixed evaluation items: base knowledge, held-out, probe and each task's items.

    A task's items are the first ``task_items`` of its split, which are among the items
    it is trained on (``runs.TRAIN_ITEMS``): learning is the fit to the new data."""
    s = corpus.splits
    return {
        "base_eval": s["base_eval"],
        "heldout": s["heldout"],
        "probe": probe_candidates(s["probe"], s["base"], k=k, seed=1),
        "tasks": {t: s[t][:task_items] for t in tasks},
    }
