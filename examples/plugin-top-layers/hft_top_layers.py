"""A third-party hft-plugins strategy: train the top ``ratio`` of the blocks.

The classic "freeze the bottom layers" baseline, as a plugin: install this
package and ``HFTConfig(strategy="top_layers")`` selects it by name.
"""

from hft_plugins import hookimpl


def top_layers(partition, config, rng):
    """The last round(ratio * blocks) blocks, whole; deterministic, so ``rng`` is unused."""
    count = max(1, round(config.ratio * partition.num_blocks))
    first = partition.num_blocks - count
    return {unit.key for unit in partition.block_units() if unit.block >= first}


@hookimpl
def register_strategies(register):
    register("top_layers", top_layers, "Train the top blocks, freeze the bottom ones.")
