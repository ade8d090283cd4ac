"""The framework-free core: config, layouts, the partition into units, mask, optimizer, reset, sharding.

Imports torch, safetensors, the standard library and :mod:`hft_plugins.registry` only.
"""
