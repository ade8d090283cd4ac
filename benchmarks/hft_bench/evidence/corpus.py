"""WordNet (Debian ``wordnet-base``) parsed into the benchmark's items and splits.

An item is ``(prompt, completion)``: for a synset, ``"<headword>: "`` then its
definition (the gloss up to the first quoted example); for a hypernym statement,
``"<headword> is a kind of "`` then the hypernym's headword. Text is lowercased and
limited to the tokenizer's characters; items longer than ``MAX_CHARS`` are dropped
(not truncated), so every gloss the model sees is whole.

Splits are drawn once from a fixed seed and are the same on every machine:

- ``base``: noun synsets the base model is pretrained on (its "knowledge").
- ``base_eval`` / ``probe``: subsets of ``base`` used to measure that knowledge.
- ``heldout``: noun synsets never trained on anywhere (general language).
- ``nouns_new``: noun synsets held back from pretraining (fine-tuning: new knowledge).
- ``verbs``: verb synsets (fine-tuning: a new part of speech).
- ``hypernym``: "X is a kind of Y" for ``base`` nouns (fine-tuning: a new format).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from hft_plugins import HFTError

WORDNET_DIR = Path(os.environ.get("HFT_WORDNET_DIR", "/usr/share/wordnet"))
POS_FILES = {"noun": "data.noun", "verb": "data.verb", "adj": "data.adj", "adv": "data.adv"}
CHARS = " abcdefghijklmnopqrstuvwxyz0123456789'-,.;:()/&!?\""
MAX_CHARS = 62  # prompt + completion; with <bos> and <eos> every row fits in 64 tokens
SPLIT_SEED = 20240429
_KEEP = set(CHARS)


@dataclass(frozen=True)
class Synset:
    """One WordNet synset: its offset, part of speech, words, hypernym offsets, definition."""

    offset: str
    pos: str
    words: tuple[str, ...]
    hypernyms: tuple[str, ...]
    definition: str

    @property
    def headword(self) -> str:
        return self.words[0]


def find_wordnet(directory: Path | None = None) -> Path:
    """The directory holding WordNet's data files, or one-line HFTError naming the package."""
    directory = Path(directory) if directory is not None else WORDNET_DIR
    missing = [n for n in POS_FILES.values() if not (directory / n).is_file()]
    if missing:
        raise HFTError(
            f"WordNet data not found ({directory}/{missing[0]} is missing): "
            "run `apt-get install wordnet-base` (Debian/Ubuntu, as root) or set HFT_WORDNET_DIR"
        )
    return directory


def clean(text: str) -> str:
    """Lowercase, underscores to spaces, only the tokenizer's characters, single spaces."""
    text = text.lower().replace("_", " ").replace("`", "'")
    text = "".join(c for c in text if c in _KEEP)
    return re.sub(r" +", " ", text).strip()


def parse_line(line: str) -> Synset | None:
    """One data-file line as a Synset; None for the license header lines."""
    if not line or line.startswith(" "):
        return None
    head, sep, gloss = line.partition(" | ")
    if not sep:
        raise HFTError(f"WordNet line has no gloss separator ' | ': {line[:60]!r}")
    fields = head.split()
    try:
        offset, pos, w_cnt = fields[0], fields[2], int(fields[3], 16)
        words = [re.sub(r"\(.*\)$", "", w) for w in fields[4 : 4 + 2 * w_cnt : 2]]
        p_at = 4 + 2 * w_cnt
        p_cnt = int(fields[p_at])
        ptrs = [fields[p_at + 1 + 4 * i : p_at + 5 + 4 * i] for i in range(p_cnt)]
    except (IndexError, ValueError) as exc:
        raise HFTError(f"malformed WordNet line ({exc}): {line[:60]!r}") from None
    hypernyms = tuple(p[1] for p in ptrs if p[0] in ("@", "@i"))
    definition = clean(gloss.split('; "')[0].strip().rstrip(";"))
    return Synset(offset, pos, tuple(clean(w) for w in words), hypernyms, definition)


def read_pos(directory: Path, pos: str) -> list[Synset]:
    """All synsets of one part of speech, in file order."""
    path = directory / POS_FILES[pos]
    out = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            syn = parse_line(line.rstrip("\n"))
            if syn is not None and syn.definition and syn.headword:
                out.append(syn)
    return out


def sample_pos(directory: Path, pos: str, count: int, seed: int) -> list[Synset]:
    """``count`` synsets of one part of speech drawn at random (``seed``), one per headword,
    each whose :func:`gloss_item` fits. Only the drawn lines are parsed, so it is fast."""
    path = directory / POS_FILES[pos]
    with path.open(encoding="utf-8", errors="replace") as f:
        lines = [line.rstrip("\n") for line in f if line[:1].strip()]
    random.Random(seed).shuffle(lines)
    out: list[Synset] = []
    seen: set[str] = set()
    for line in lines:
        syn = parse_line(line)
        if syn and syn.definition and syn.headword and syn.headword not in seen:
            if fits(gloss_item(syn)):
                seen.add(syn.headword)
                out.append(syn)
                if len(out) == count:
                    return out
    raise HFTError(f"WordNet has only {len(out)} usable {pos} synsets, {count} asked")


def gloss_item(syn: Synset) -> tuple[str, str]:
    return (f"{syn.headword}: ", syn.definition)


def hypernym_item(syn: Synset, by_offset: dict[str, Synset]) -> tuple[str, str] | None:
    for off in syn.hypernyms:
        if off in by_offset:
            return (f"{syn.headword} is a kind of ", by_offset[off].headword)
    return None


def fits(item: tuple[str, str]) -> bool:
    return len(item[0]) + len(item[1]) <= MAX_CHARS


@dataclass
class Corpus:
    """The splits, each a list of ``(prompt, completion)`` items, plus the data's digest."""

    splits: dict[str, list[tuple[str, str]]]
    sizes: dict[str, int]

    def digest(self) -> str:
        """sha256 of every split's items: changes whenever the data does."""
        h = hashlib.sha256()
        for name in sorted(self.splits):
            for p, c in self.splits[name]:
                h.update(f"{name}\t{p}\t{c}\n".encode())
        return h.hexdigest()


DEFAULT_SIZES = dict(
    base=8000, base_eval=150, probe=40, heldout=150, nouns_new=600, verbs=600, hypernym=600
)


def build_corpus(directory: Path | None = None, sizes: dict[str, int] | None = None) -> Corpus:
    """Parse WordNet and draw the splits (deterministic for given files and sizes)."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    directory = find_wordnet(directory)
    nouns = read_pos(directory, "noun")
    verbs = read_pos(directory, "verb")
    by_offset = {s.offset: s for s in nouns}
    rng = random.Random(SPLIT_SEED)
    seen: set[str] = set()  # one synset per headword, so a prompt has one right answer

    def pick(pool: list[Synset], n: int, what: str) -> list[Synset]:
        out = []
        for s in pool:
            if s.headword not in seen and fits(gloss_item(s)):
                seen.add(s.headword)
                out.append(s)
                if len(out) == n:
                    return out
        raise HFTError(f"WordNet has only {len(out)} usable {what} synsets, {n} asked")

    nouns = nouns[:]
    rng.shuffle(nouns)
    base = pick(nouns, sizes["base"], "noun")
    heldout = pick(nouns, sizes["heldout"], "noun")
    nouns_new = pick(nouns, sizes["nouns_new"], "noun")
    verbs = verbs[:]
    rng.shuffle(verbs)
    verb_syns = pick(verbs, sizes["verbs"], "verb")
    hyp = [it for s in base if (it := hypernym_item(s, by_offset)) and fits(it)]
    if len(hyp) < sizes["hypernym"]:
        raise HFTError(f"only {len(hyp)} hypernym statements, {sizes['hypernym']} asked")
    base_items = [gloss_item(s) for s in base]
    splits = {
        "base": base_items,
        "base_eval": base_items[: sizes["base_eval"]],
        "probe": base_items[sizes["base_eval"] : sizes["base_eval"] + sizes["probe"]],
        "heldout": [gloss_item(s) for s in heldout],
        "nouns_new": [gloss_item(s) for s in nouns_new],
        "verbs": [gloss_item(s) for s in verb_syns],
        "hypernym": hyp[: sizes["hypernym"]],
    }
    return Corpus(splits, sizes)


DOMAINS = ("nouns_new", "verbs", "hypernym")
