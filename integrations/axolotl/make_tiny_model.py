"""Write a tiny Llama model and a character-level tokenizer to a directory.

Axolotl loads its base model and tokenizer from a path; on an offline machine
nothing can be downloaded, so this builds both in code (a few seconds on CPU):

    python make_tiny_model.py ./tiny-llama [--family llama] [--seed 0]

It is ``python -m hft_plugins.testing DIR --vocab printable``: every printable character
is one token, and the model has 512 positions for the configs' sequence_len of 256.
"""

from hft_plugins.testing import main

raise SystemExit(main(vocab="printable"))
