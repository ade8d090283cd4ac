"""Write a tiny Llama model and a character-level tokenizer to a directory.

Axolotl loads its base model and tokenizer from a path; on an offline machine
nothing can be downloaded, so this builds both in code (a few seconds on CPU):

    python make_tiny_model.py ./tiny-llama [--family llama] [--seed 0]
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3: pad, bos, eos, unk
CHARACTERS = string.printable  # letters, digits, punctuation and whitespace
VOCAB_SIZE = 128  # >= len(SPECIAL_TOKENS) + len(CHARACTERS), a multiple of 32


def tiny_tokenizer():
    """A character-level fast tokenizer: every printable character is one token."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in CHARACTERS:
        vocab.setdefault(char, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
    )


def make_tiny_model(out_dir: str | Path, family: str = "llama", seed: int = 0) -> Path:
    """Save a freshly initialised tiny ``family`` model and its tokenizer to ``out_dir``."""
    from hft_plugins.tiny import tiny_model

    out = Path(out_dir)
    tokenizer = tiny_tokenizer()
    model = tiny_model(
        family,
        seed=seed,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="directory to write the model and tokenizer to")
    parser.add_argument("--family", default="llama", help="an hft_plugins.tiny family")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_tiny_model(args.out_dir, args.family, args.seed))


if __name__ == "__main__":
    main()
