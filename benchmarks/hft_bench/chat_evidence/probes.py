"""What a chat model learned and kept, scored teacher-forced against its base.

Built once from the base (``Probes.build``, the base's answers generated on one thread: a
token at a time is small work, and on a shared machine a second thread mostly waits), then
applied to every tuned model (``evaluate``), all through ``engine.score_pairs`` in one
length-sorted pass:

- ``task_nll/<task>``: NLL of a task's answers on its held-out items (learning); for a
  preference task the chosen answer's, plus ``pref_acc/<task>`` (the chosen answer the
  likelier) and ``margin/<task>`` (log p(chosen) - log p(rejected), nats per item);
- ``drift_nll``: NLL of the base's own greedy answers to held-out general prompts;
- ``turn_end_nll``: -log p(end of turn) right after each of those answers that the base
  ended within its token budget (the last token of the drift pass): does the model still
  end its turn where the base did;
- ``facts_nll`` / ``facts_choice``: world facts the base gets right (``chat_eval.FACTS``,
  plain-text completions): their NLL and 4-way multiple choice accuracy;
- ``text_nll``: NLL of real prose no run trains on (paragraphs of Python's own
  documentation, ``pydoc_data``), each scored after its first words.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import sys
from dataclasses import dataclass, field

import torch

from hft_plugins import HFTError

from .. import chat_eval
from ..engine import score_pairs
from . import tasks as chat_tasks

# general prompts no run trains on, asking for short answers (the base ends most of its
# turns within a few dozen tokens): drift and turn ending are read on the base's answers
DRIFT_PROMPTS = (
    "In one sentence, why do people keep pets?",
    "Give me one tip for staying healthy, in a sentence.",
    "Explain to a child in one sentence what a computer does.",
    "Suggest a name for a friendly dog.",
    "In one sentence, how can I save money on groceries?",
    "Describe a sunny morning in one sentence.",
    "In one sentence, why is exercise good for you?",
    "Give me one idea for a birthday present.",
    "In one sentence, what is a good way to relax after work?",
    "Why is the sky blue? Answer in one sentence.",
    "In one sentence, how do I keep a houseplant alive?",
    "Tell me one fun fact about octopuses.",
)
# other general prompts: the replay method's examples are the base's own answers to them
REPLAY_PROMPTS = (
    "In one sentence, what is your favourite season and why?",
    "Give me one good habit for studying, in a sentence.",
    "In one sentence, how should I prepare for a job interview?",
    "What can I cook with rice and eggs? Answer in one sentence.",
    "Explain what rain is to a five-year-old in one sentence.",
    "In one sentence, why do leaves change colour in autumn?",
    "Give me one tip for a long car journey.",
    "In one sentence, how do bicycles stay upright?",
    "What should I do if I cannot sleep? Answer in one sentence.",
    "Recommend one hobby I can do at home.",
    "In one sentence, what makes a good friend?",
    "Name one benefit of reading books, in a sentence.",
)
TEXT_PASSAGES = 16
TEXT_PROMPT_TOKENS = 8  # a passage is scored after its first words
TEXT_TOKENS = 40
TEXT_SEED = 0


def text_passages(count: int = TEXT_PASSAGES, seed: int = TEXT_SEED) -> list[str]:
    """``count`` distinct prose paragraphs of Python's documentation (no code; a paragraph
    that several topics repeat counts once), a fixed draw."""
    import pydoc_data.topics

    paragraphs: dict[str, None] = {}
    for key in sorted(pydoc_data.topics.topics):
        for block in pydoc_data.topics.topics[key].split("\n\n"):
            lines = block.split("\n")
            text = " ".join(line.strip() for line in lines)
            if not any(line.startswith(" ") for line in lines) and len(text) >= 300:
                paragraphs[text] = None
    if len(paragraphs) < count:
        raise HFTError(f"Python's documentation has {len(paragraphs)} paragraphs, {count} asked")
    return random.Random(seed).sample(list(paragraphs), count)


@contextlib.contextmanager
def one_thread():
    """Torch on one CPU thread inside, the caller's count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class Probes:
    """The token ids every model is scored on, and what the base answered."""

    pad: int
    eos: int
    tasks: dict  # name -> held-out (prompt, answer) pairs
    rejected: dict  # preference task name -> held-out (prompt, rejected) pairs
    drift: list
    ended: list  # the drift answers the base ended: the end-of-turn token is their last
    facts: list
    choices: list  # per known fact: [right, wrong, wrong, wrong] completions of one prompt
    text: list
    replay: list = field(default_factory=list)
    base_answers: list = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @classmethod
    def build(cls, base, tokenizer, splits, *, answer_tokens: int, replay: bool):
        """Every probe from the base: its greedy answers (drift, turn ending, and the replay
        examples when ``replay``) and the world facts it gets right."""
        eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
        pad = eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id
        asked = [chat_eval.chat_prompt_ids(tokenizer, q) for q in DRIFT_PROMPTS]
        with one_thread():
            answers = chat_eval.greedy(base, asked, pad_id=pad, eos_id=eos,
                                       max_new_tokens=answer_tokens,
                                       desc="base answers (drift reference)")  # fmt: skip
        drift = list(zip(asked, answers, strict=True))
        ended = [i for i, a in enumerate(answers) if a and a[-1] == eos]
        if not ended:
            raise HFTError(
                f"the base ends none of its answers within {answer_tokens} tokens: "
                "give it more answer tokens"
            )
        replayed = []
        if replay:
            asked_r = [chat_eval.chat_prompt_ids(tokenizer, q) for q in REPLAY_PROMPTS]
            with one_thread():
                got = chat_eval.greedy(base, asked_r, pad_id=pad, eos_id=eos,
                                       max_new_tokens=answer_tokens, desc="base answers (replay)")  # fmt: skip
            replayed = list(zip(asked_r, got, strict=True))
        facts = [chat_eval.text_pair_ids(tokenizer, f.prompt, f.answer) for f in chat_eval.FACTS]
        known = [i for i, s in enumerate(score_pairs(base, facts, pad)) if s.greedy]
        if not known:
            raise HFTError("the base model gets none of the world facts right; nothing to keep")
        choices = []
        for i in known:
            fact = chat_eval.FACTS[i]
            wrong = [
                chat_eval.text_pair_ids(tokenizer, fact.prompt, " " + w)[1] for w in fact.wrong
            ]
            choices.append((facts[i][0], [facts[i][1], *wrong]))
        text = []
        for passage in text_passages(TEXT_PASSAGES):
            ids = tokenizer(passage, add_special_tokens=False)["input_ids"][:TEXT_TOKENS]
            text.append((ids[:TEXT_PROMPT_TOKENS], ids[TEXT_PROMPT_TOKENS:]))
        task_pairs, rejected = {}, {}
        for name, split in splits.items():
            held = [chat_tasks.ids(tokenizer, item) for item in split.heldout]
            task_pairs[name] = [(h[0], h[1]) for h in held]
            if split.kind == "dpo":
                rejected[name] = [(h[0], h[2]) for h in held]
        info = {
            "drift_prompts": len(drift),
            "base_ended_turn": len(ended),
            "facts_known": len(known),
            "facts": len(facts),
            "text_passages": len(text),
            "text_source": f"pydoc_data of Python {sys.version.split()[0]}",
            "text_sha256": hashlib.sha256(repr(text).encode()).hexdigest()[:16],
        }
        base_text = [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
        return cls(pad, eos, task_pairs, rejected, drift, ended, [facts[i] for i in known],
                   choices, text, replayed, base_text, info)  # fmt: skip


def _pooled(scores) -> float:
    return -sum(s.logprob for s in scores) / sum(s.tokens for s in scores)


def evaluate(model, probes: Probes, task_names) -> dict[str, float]:
    """Every metric of one model (see the module's docstring), one scoring pass."""
    groups = {"drift": probes.drift, "facts": probes.facts, "text": probes.text}
    groups["choices"] = [(p, c) for p, cands in probes.choices for c in cands]
    for name in task_names:
        groups[f"task/{name}"] = probes.tasks[name]
        if name in probes.rejected:
            groups[f"rejected/{name}"] = probes.rejected[name]
    flat = [pair for pairs in groups.values() for pair in pairs]
    scored = score_pairs(model, flat, probes.pad)
    got, at = {}, 0
    for key, pairs in groups.items():
        got[key], at = scored[at : at + len(pairs)], at + len(pairs)
    hits, at = 0, 0
    for _, cands in probes.choices:
        row = [s.logprob for s in got["choices"][at : at + len(cands)]]
        hits += row[0] > max(row[1:])
        at += len(cands)
    out = {
        "drift_nll": _pooled(got["drift"]),
        "turn_end_nll": -sum(got["drift"][i].last for i in probes.ended) / len(probes.ended),
        "facts_nll": _pooled(got["facts"]),
        "facts_choice": hits / len(probes.choices),
        "text_nll": _pooled(got["text"]),
    }
    for name in task_names:
        out[f"task_nll/{name}"] = _pooled(got[f"task/{name}"])
        if name in probes.rejected:
            pairs = list(zip(got[f"task/{name}"], got[f"rejected/{name}"], strict=True))
            out[f"pref_acc/{name}"] = sum(c.logprob > r.logprob for c, r in pairs) / len(pairs)
            out[f"margin/{name}"] = sum(c.logprob - r.logprob for c, r in pairs) / len(pairs)
    return out
