"""The embedded default: a tiny Llama, a character tokenizer, shipped synthetic tasks,
a cached base model, ``hft demo`` and ``hft bench forgetting``.

Importing this package imports no framework; transformers, TRL, PEFT and BAdam are
imported by the functions that use them.
"""
