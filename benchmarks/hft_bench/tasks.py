"""The embedded tasks: small synthetic corpora shipped as JSON lines in ``data/``.

Each task is a prompt -> completion mapping over a tiny character vocabulary, with
three splits: ``train`` (fine-tuning data), ``val`` (picks learning rates) and
``eval`` (reported scores). Every val/eval row also lists answer ``candidates``
for the latent-knowledge score (is the right answer the likeliest of them?).

``facts`` is memorisation (its val and eval rows ask the trained facts again);
the string and digit tasks are algorithmic, and their val/eval inputs never occur
in train. ``write_corpora`` regenerates the shipped files bit for bit.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from hft_plugins import HFTError

from .common import check_names

DATA_DIR = Path(__file__).with_name("data")
SPLITS = ("train", "val", "eval")
_SIZES = {"train": 1000, "val": 100, "eval": 200}
_LETTERS = string.ascii_lowercase
_DIGITS = string.digits


@dataclass(frozen=True)
class Task:
    name: str
    description: str


TASKS = {
    t.name: t
    for t in (
        Task("facts", "invented facts: 'fact <name>>' -> the invented word it was taught"),
        Task("copy", "string copy: 'copy abc>' -> 'abc'"),
        Task("reverse", "string reversal: 'rev abc>' -> 'cba'"),
        Task("shift", "letter shift: 'shift abz>' -> 'bca' (each letter +1, z wraps to a)"),
        Task("add", "digit arithmetic: 'add1 372>' -> '483' (1 added to each digit, 9 wraps to 0)"),
        Task("format", "a fixed instruction format: 'ask ab 12>' -> '<ab|12>'"),
    )
}
BASE_TASKS = ("facts", "copy", "format")
SEQUENCE_TASKS = ("reverse", "shift", "add")


def check_tasks(names) -> tuple[str, ...]:
    """Validate task names; raise one-line HFTError naming the first unknown one."""
    return check_names(names, TASKS, "task")


@cache
def load(task: str, split: str) -> tuple[dict, ...]:
    """The rows of one task's split: dicts with prompt, completion (and candidates)."""
    check_tasks([task])
    if split not in SPLITS:
        raise HFTError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    path = DATA_DIR / f"{task}.{split}.jsonl"
    return tuple(json.loads(line) for line in path.read_text().splitlines() if line)


# ---- generation of the shipped corpora --------------------------------------


def _word(rng: random.Random, lo: int, hi: int, alphabet: str = _LETTERS) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def _corrupt(rng: random.Random, text: str, alphabet: str) -> str:
    i = rng.randrange(len(text))
    other = rng.choice([c for c in alphabet if c != text[i]])
    return text[:i] + other + text[i + 1 :]


def _shift(text: str) -> str:
    return "".join(_LETTERS[(_LETTERS.index(c) + 1) % 26] for c in text)


def _add1(digits: str) -> str:
    return "".join(str((int(d) + 1) % 10) for d in digits)


def _candidates(rng: random.Random, answer: str, others: list[str], alphabet: str) -> list[str]:
    """The answer, plausible wrong answers of other rules, then one-character corruptions."""
    out = [answer] + [o for o in others if o != answer]
    out = list(dict.fromkeys(out))
    while len(out) < 5:
        wrong = _corrupt(rng, answer, alphabet)
        if wrong not in out:
            out.append(wrong)
    return out[:5]


def _facts(rng: random.Random) -> dict[str, list[dict]]:
    values = sorted({_word(rng, 4, 4) for _ in range(40)})[:12]
    names: list[str] = []
    while len(names) < 60:
        name = _word(rng, 5, 6)
        if name not in names:
            names.append(name)
    rows = [{"prompt": f"fact {n}>", "completion": rng.choice(values)} for n in names]
    train = [dict(rows[i % len(rows)]) for i in range(_SIZES["train"])]
    rng.shuffle(train)
    asked = [
        {**r, "candidates": [r["completion"]] + [v for v in values if v != r["completion"]]}
        for r in rows
    ]
    return {"train": train, "val": asked, "eval": asked}


def _unique_inputs(rng: random.Random, make, count: int) -> list:
    seen, out = set(), []
    while len(out) < count:
        item = make()
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _string_task(rng: random.Random, prefix: str, rule) -> dict[str, list[dict]]:
    total = sum(_SIZES.values())
    words = _unique_inputs(rng, lambda: _word(rng, 3, 7), total)
    splits, start = {}, 0
    for split in SPLITS:
        chunk = words[start : start + _SIZES[split]]
        start += _SIZES[split]
        rows = []
        for w in chunk:
            row = {"prompt": f"{prefix} {w}>", "completion": rule(w)}
            if split != "train":
                others = [w, w[::-1], _shift(w)]
                row["candidates"] = _candidates(rng, rule(w), others, _LETTERS)
            rows.append(row)
        splits[split] = rows
    return splits


def _add_task(rng: random.Random) -> dict[str, list[dict]]:
    total = sum(_SIZES.values())
    numbers = _unique_inputs(rng, lambda: _word(rng, 3, 6, _DIGITS), total)
    splits, start = {}, 0
    for split in SPLITS:
        rows = []
        for n in numbers[start : start + _SIZES[split]]:
            row = {"prompt": f"add1 {n}>", "completion": _add1(n)}
            if split != "train":
                carried = str(int(n) + 1).zfill(len(n))[-len(n) :]
                row["candidates"] = _candidates(rng, _add1(n), [carried, n, n[::-1]], _DIGITS)
            rows.append(row)
        splits[split] = rows
        start += _SIZES[split]
    return splits


def _format_task(rng: random.Random) -> dict[str, list[dict]]:
    total = sum(_SIZES.values())
    items = _unique_inputs(rng, lambda: (_word(rng, 2, 4), _word(rng, 1, 3, _DIGITS)), total)
    splits, start = {}, 0
    for split in SPLITS:
        rows = []
        for w, d in items[start : start + _SIZES[split]]:
            answer = f"<{w}|{d}>"
            row = {"prompt": f"ask {w} {d}>", "completion": answer}
            if split != "train":
                others = [f"{w} {d}", f"<{d}|{w}>", f"<{w}{d}>"]
                row["candidates"] = _candidates(rng, answer, others, _LETTERS)
            rows.append(row)
        splits[split] = rows
        start += _SIZES[split]
    return splits


def generate() -> dict[str, dict[str, list[dict]]]:
    """All corpora, from fixed seeds (one per task, so tasks do not shift each other)."""
    makers = {
        "facts": _facts,
        "copy": lambda rng: _string_task(rng, "copy", lambda w: w),
        "reverse": lambda rng: _string_task(rng, "rev", lambda w: w[::-1]),
        "shift": lambda rng: _string_task(rng, "shift", _shift),
        "add": _add_task,
        "format": _format_task,
    }
    return {name: makers[name](random.Random(f"hft-demo:{name}")) for name in TASKS}


def write_corpora(directory: Path = DATA_DIR) -> None:
    """Write every task's splits as ``<task>.<split>.jsonl`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for task, splits in generate().items():
        for split, rows in splits.items():
            text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
            (directory / f"{task}.{split}.jsonl").write_text(text)
