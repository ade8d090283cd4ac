"""The chat tasks the real model is fine-tuned on, asked through its chat template.

All three come from Debian's WordNet (``evidence.corpus``, the toy benchmark's fixed
draw), on headwords no other task uses:

- ``define`` (SFT): 'Define the word "X".' answered by X's noun gloss;
- ``kind-of`` (DPO): 'What kind of thing is "X"?'; chosen 'X is a kind of Y.' with Y its
  WordNet hypernym, rejected the same sentence with the hypernym of another word;
- ``verb`` (SFT): 'What does it mean to "X"?' answered by X's verb gloss.

The one-stage setting trains ``define``; the sequence trains the three in this order. Each
task's first ``heldout`` items are never trained on: learning is read on them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hft_plugins import HFTError

from ..chat_eval import chat_pair_ids

SEQUENCE = ("define", "kind-of", "verb")
SINGLE = "define"
KINDS = {"define": "sft", "kind-of": "dpo", "verb": "sft"}
_PROMPTS = {
    "define": 'Define the word "{x}".',
    "kind-of": 'What kind of thing is "{x}"?',
    "verb": 'What does it mean to "{x}"?',
}
_SPLITS = {"define": "nouns_new", "kind-of": "hypernym", "verb": "verbs"}
REJECT_SEED = 7  # the draw of each preference pair's wrong hypernym


@dataclass(frozen=True)
class Item:
    """One task item as text: the user's question, the answer, and (DPO) a worse answer."""

    prompt: str
    answer: str
    rejected: str | None = None


def _items(corpus, name: str) -> list[Item]:
    rows = corpus.splits[_SPLITS[name]]
    if name != "kind-of":
        return [Item(_PROMPTS[name].format(x=p.removesuffix(": ")), c) for p, c in rows]
    rng = random.Random(REJECT_SEED)
    kinds = [c for _, c in rows]
    out = []
    for p, kind in rows:
        word = p.removesuffix(" is a kind of ")
        wrong = rng.choice([k for k in kinds if k != kind])
        out.append(Item(_PROMPTS[name].format(x=word), f"{word} is a kind of {kind}.",
                        f"{word} is a kind of {wrong}."))  # fmt: skip
    return out


@dataclass(frozen=True)
class Split:
    """A task's items: those trained on, those held out."""

    name: str
    kind: str
    train: list[Item]
    heldout: list[Item]


def load(corpus, names, *, train: int, heldout: int) -> dict[str, Split]:
    """The named tasks' splits: ``heldout`` items first, then ``train`` others."""
    out = {}
    for name in names:
        if name not in KINDS:
            raise HFTError(f"unknown chat task {name!r}; known: {', '.join(KINDS)}")
        items = _items(corpus, name)
        if len(items) < heldout + train:
            raise HFTError(
                f"task {name} has {len(items)} items, {heldout} held out + {train} to train asked"
            )
        out[name] = Split(name, KINDS[name], items[heldout : heldout + train], items[:heldout])
    return out


def ids(tokenizer, item: Item) -> tuple:
    """``(prompt ids, answer ids)``, or ``(prompt ids, chosen ids, rejected ids)`` for a
    preference item, through the chat template as TRL tokenizes conversational rows."""
    prompt, answer = chat_pair_ids(tokenizer, item.prompt, item.answer)
    if item.rejected is None:
        return prompt, answer
    return prompt, answer, chat_pair_ids(tokenizer, item.prompt, item.rejected)[1]
