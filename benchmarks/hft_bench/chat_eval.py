"""What a chat model learned and forgot, measured with its own tokenizer and chat template.

- **learning**: per-token NLL of a task's answers on held-out items (never trained on),
  each asked as one user turn through the chat template;
- **behaviour drift**: per-token NLL of the *base* model's own greedy answers to general
  prompts, under a tuned model (the base scores its own answers at about 0.7 nats/token);
- **knowledge**: world facts as plain-text completions ("The capital of France is" ->
  " Paris"), scored only on the facts the base gets right (its greedy continuation starts
  with the answer): completion NLL and a 4-way multiple choice (the right answer strictly
  the likeliest of the candidates).

Every score is teacher-forced (``engine.score_pairs``, one forward pass per batch); answers
shown to people come from greedy generation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .engine import Scored

# held-out general prompts: behaviour drift is read on the base's own answers to these
GENERAL_PROMPTS = (
    "Give me three tips for staying healthy.",
    "Write a short poem about the sea.",
    "How do I make a good cup of tea?",
    "Explain to a child what a computer does.",
    "What should I pack for a weekend trip to the mountains?",
    "Why do people keep pets?",
)


@dataclass(frozen=True)
class Fact:
    """A plain-text completion the base should know, and three wrong answers of its kind."""

    prompt: str
    answer: str
    wrong: tuple[str, str, str]


_CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Japan": "Tokyo",
    "Spain": "Madrid",
    "Russia": "Moscow",
    "Egypt": "Cairo",
    "England": "London",
}


def _capital_facts() -> list[Fact]:
    cities = list(_CAPITALS.values())
    out = []
    for i, (country, city) in enumerate(_CAPITALS.items()):
        wrong = tuple(cities[(i + k) % len(cities)] for k in (1, 2, 3))
        out.append(Fact(f"The capital of {country} is", f" {city}", wrong))
    return out


FACTS = tuple(
    _capital_facts()
    + [
        Fact("The largest planet in our solar system is", " Jupiter", ("Mars", "Venus", "Earth")),
        Fact("Water is made of hydrogen and", " oxygen", ("carbon", "nitrogen", "helium")),
        Fact("The chemical symbol for gold is", " Au", ("Ag", "Fe", "Pb")),
        Fact("Romeo and Juliet was written by William", " Shakespeare", ("Wordsworth", "Blake", "Golding")),
        Fact("The Great Wall is in", " China", ("India", "Brazil", "Mexico")),
        Fact("The opposite of hot is", " cold", ("warm", "wet", "soft")),
        Fact("A week has seven", " days", ("hours", "months", "years")),
        Fact("The first man to walk on the moon was Neil", " Armstrong", ("Collins", "Young", "Shepard")),
    ]
)  # fmt: skip


def chat_prompt_ids(tokenizer, user: str) -> list[int]:
    """One user turn through the model's chat template, ending where the assistant speaks."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chat_pair_ids(tokenizer, user: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): the answer's ids are what the template adds for the assistant's
    turn (its text and its end-of-turn token), as TRL's prompt-completion data is tokenized."""
    prompt = chat_prompt_ids(tokenizer, user)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        tokenize=False,
    )
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    if full[: len(prompt)] != prompt:
        raise ValueError("the chat template does not extend the prompt with the answer")
    return prompt, full[len(prompt) :]


def text_pair_ids(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of a plain-text completion, no chat template."""
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    if full[: len(head)] != head:
        raise ValueError(f"{prompt!r} does not tokenize as a prefix of its completion")
    return head, full[len(head) :]


def pooled_nll(scores: list[Scored]) -> float:
    """Per-token NLL in nats, pooled over every token of every completion."""
    return -sum(s.logprob for s in scores) / sum(s.tokens for s in scores)


class _TokenBar:
    """A ``generate`` streamer that advances a progress bar once per generated step."""

    def __init__(self, bar):
        self.bar, self.prompt_seen = bar, False

    def put(self, value):
        if self.prompt_seen:
            self.bar.update(1)
        self.prompt_seen = True

    def end(self):
        pass


@torch.no_grad()
def greedy(model, prompts, *, pad_id: int, eos_id: int, max_new_tokens: int, desc=None):
    """Greedy continuations of prompt ids (left-padded into one batch), each cut after its
    first ``eos_id`` (kept) or at ``max_new_tokens``; with ``desc``, a progress bar of the
    generated steps."""
    from .common import progress_bar

    was_training = model.training
    model.eval()
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id)
    att = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        att[i, width - len(p) :] = 1
    bar = None if desc is None else progress_bar(max_new_tokens, desc)
    try:
        gen = model.generate(
            input_ids=ids,
            attention_mask=att,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            streamer=None if bar is None else _TokenBar(bar),
        )[:, width:]
    finally:
        if bar is not None:
            bar.close()
    model.train(was_training)
    out = []
    for row in gen.tolist():
        out.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return out
