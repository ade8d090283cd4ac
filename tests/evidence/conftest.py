"""Shared fixtures: a tiny WordNet (real lines, Princeton license header kept) and a tiny base."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

WORDNET = Path(__file__).resolve().parent / "fixtures" / "wordnet"
SIZES = dict(base=10, base_eval=4, probe=4, heldout=3, nouns_new=3, verbs=3, hypernym=2)
TINY = dict(hidden=16, ffn=32, layers=2, heads=2, max_len=64, steps=4, batch=4, warmup=2)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def corpus():
    from hft_bench.evidence.corpus import build_corpus

    return build_corpus(WORDNET, SIZES)
