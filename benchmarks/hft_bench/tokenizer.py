"""A character-level tokenizer built in code: nothing to download, the same ids everywhere."""

from __future__ import annotations

import string

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
CHARS = " " + string.digits + string.ascii_lowercase + "<>|+=?:.,-"
VOCAB = {tok: i for i, tok in enumerate((*SPECIALS, *CHARS))}


def char_tokenizer():
    """A ``PreTrainedTokenizerFast`` with one token per character (ids 0-3 are special)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="right",
        model_max_length=64,
    )


def encode(text: str) -> list[int]:
    """Ids of ``text`` without the transformers machinery (training and scoring use this)."""
    unk = VOCAB["<unk>"]
    return [VOCAB.get(c, unk) for c in text]
