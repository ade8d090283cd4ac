"""The embedded model's character vocabulary: nothing to download, the same ids everywhere.

The tokenizer is ``hft_plugins.testing.char_tokenizer`` over this vocabulary; ``encode``
gives the same ids without the transformers machinery.
"""

from __future__ import annotations

import string

from hft_plugins.testing import char_vocab

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
CHARS = " " + string.digits + string.ascii_lowercase + "<>|+=?:.,-"
VOCAB = char_vocab(CHARS, SPECIALS)


def char_tokenizer():
    """A ``PreTrainedTokenizerFast`` with one token per character (ids 0-3 are special)."""
    from hft_plugins.testing import char_tokenizer as build

    return build(CHARS, SPECIALS, padding_side="right", model_max_length=64)


def encode(text: str) -> list[int]:
    """Ids of ``text`` without the transformers machinery (training and scoring use this)."""
    unk = VOCAB["<unk>"]
    return [VOCAB.get(c, unk) for c in text]
