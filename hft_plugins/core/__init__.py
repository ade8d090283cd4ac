"""The framework-free core: config, layouts and their resolution, mask, optimizer, reset, sharding.

Imports torch, safetensors, the standard library and :mod:`hft_plugins.registry` only.
"""
