"""Built-in selection strategies: the paper's category rule and its two ablations.

A plugin module like any third party's (loaded by name from
``hft_plugins.registry.DEFAULT_PLUGINS``). A strategy gets the model's partition into
units, the config and a seeded ``random.Random``, and returns the keys of the block units
to train. Units outside the blocks (embeddings, heads, final norm) are decided by the
config, not by strategies.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict

from ..core.config import HFTConfig
from ..core.units import Partition, Unit
from ..registry import hookimpl


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def _counts_per_block(
    n: int, blocks: list[int], ratio: float, rng: random.Random, carry: float = 0.0
) -> tuple[dict[int, int], float]:
    """How many of a category's ``n`` matrices each block trains, and the rounding left.

    Every block trains floor(ratio*n) or one more; which blocks get one more is
    random, and their number makes the total over blocks round(ratio*n*blocks + carry).
    At ratio 0.5 this is 2 of 4 attention matrices, 1 of 2 norms, and for 3 FFN
    matrices 2 in a random half of the blocks and 1 in the other half. ``carry`` is the
    rounding left by the category's other block kinds (one dense block rounding 1.5 up
    to 2 lets three MoE blocks round 4.5 down to 4).
    """
    low = math.floor(ratio * n)
    goal = ratio * n * len(blocks) + carry
    extra = min(max(_round(goal) - low * len(blocks), 0), len(blocks))
    more = set(rng.sample(blocks, extra))
    counts = {b: min(low + (b in more), n) for b in blocks}
    return counts, goal - sum(counts.values())


def _balanced_subset(units: list[Unit], k: int, rng: random.Random, target: float) -> list[Unit]:
    """k of the units, drawn among the k-subsets whose size is nearest ``target``.

    With equal matrices any k-subset qualifies; with grouped-query attention (k and v
    smaller than q and o) it keeps 2-of-4 at exactly half the attention parameters.
    """
    if k <= 0:
        return []
    if k >= len(units):
        return list(units)
    if len(units) > 12:  # too many subsets to enumerate: greedy, in a random order
        pool, picked, size = rng.sample(units, len(units)), [], 0
        for i in range(k):
            goal = target * (i + 1) / k
            best = min(pool, key=lambda u: abs(size + u.numel - goal))
            pool.remove(best)
            picked.append(best)
            size += best.numel
        return picked
    subsets = list(itertools.combinations(units, k))
    gaps = [abs(sum(u.numel for u in s) - target) for s in subsets]
    best = min(gaps)
    return list(rng.choice([s for s, g in zip(subsets, gaps, strict=True) if g == best]))


def category(partition: Partition, config: HFTConfig, rng: random.Random) -> set[str]:
    """The paper's rule: per block, the ratio of each category (attention, FFN, norms...).

    Where no k-subset of a block's units is exactly k/n of their size (a mamba mixer's
    in_proj is two thirds of it, Qwen2's q/k/v carry biases), the surplus carries to the
    next block of the category, so blocks alternate around the target instead of all
    erring to one side.
    """
    by_category: dict[str, dict[int, list[Unit]]] = defaultdict(lambda: defaultdict(list))
    for unit in partition.block_units():
        by_category[unit.category][unit.block].append(unit)
    chosen: set[str] = set()
    for cat in sorted(by_category):
        per_block = by_category[cat]
        # blocks of one kind (dense or MoE, encoder or decoder...) share their draw, so
        # each kind trains its own exact share whatever the others hold
        by_kind: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for block, units in sorted(per_block.items()):
            by_kind[tuple(sorted(u.name for u in units))].append(block)
        surplus, carry = 0.0, 0.0
        for kind, blocks in sorted(by_kind.items(), key=lambda item: (len(item[0]), item[0])):
            counts, carry = _counts_per_block(len(kind), blocks, config.ratio, rng, carry)
            for block in blocks:
                units, k = per_block[block], counts[block]
                goal = config.ratio * sum(u.numel for u in units)
                picked = _balanced_subset(units, k, rng, goal - surplus)
                surplus += sum(u.numel for u in picked) - goal
                chosen.update(u.key for u in picked)
    return chosen


def layer(partition: Partition, config: HFTConfig, rng: random.Random) -> set[str]:
    """The paper's layer-level ablation: a random ``ratio`` of the blocks, whole."""
    blocks = list(range(partition.num_blocks))
    keep = set(rng.sample(blocks, min(max(_round(config.ratio * len(blocks)), 1), len(blocks))))
    return {u.key for u in partition.block_units() if u.block in keep}


def matrix(partition: Partition, config: HFTConfig, rng: random.Random) -> set[str]:
    """The paper's model-level ablation: random block matrices up to ``ratio`` of their size."""
    units = partition.block_units()
    rng.shuffle(units)
    target = config.ratio * sum(u.numel for u in units)
    chosen, total = set(), 0
    for unit in units:
        if abs(total + unit.numel - target) < abs(total - target):
            chosen.add(unit.key)
            total += unit.numel
    return chosen


BUILTIN_STRATEGIES = {
    "category": (category, "The paper's rule: per block 2/4 attention, 2/3 or 1/3 FFN, 1/2 norms."),
    "layer": (layer, "Layer-level ablation: a random half of the blocks, whole."),
    "matrix": (matrix, "Model-level ablation: a random half of all block matrices."),
}


@hookimpl
def register_strategies(register):
    for name, (function, help_text) in BUILTIN_STRATEGIES.items():
        register(name, function, help_text)
