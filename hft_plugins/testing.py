"""Tiny random models for trying HFT offline and for your own tests.

One model of each of 19 families (:data:`FAMILIES`: dense decoders, fused projections,
MoE, a hybrid, encoders and encoder-decoders) as a real transformers model of a few
thousand parameters, built from its config class (nothing is downloaded), with dropout
off so that runs are reproducible step for step, and a character-level chat tokenizer
that fits them all:

    from hft_plugins.testing import tiny_model, tiny_tokenizer

``python -m hft_plugins.testing DIR`` writes one to a directory, loadable by path.
"""

from __future__ import annotations

from .core.errors import HFTError

_COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# family -> (config class, model class, config kwargs)
_FAMILIES: dict[str, tuple[str, str, dict]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _COMMON),
    "mistral": ("MistralConfig", "MistralForCausalLM", _COMMON),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _COMMON),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", _COMMON),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", _COMMON),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", _COMMON),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", _COMMON),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", _COMMON),
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(
            vocab_size=96,
            n_embd=32,
            n_layer=4,
            n_head=4,
            n_positions=128,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
    "gpt_neox": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        dict(
            vocab_size=96,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=128,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
    "opt": (
        "OPTConfig",
        "OPTForCausalLM",
        dict(
            vocab_size=96,
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            word_embed_proj_dim=32,
            max_position_embeddings=128,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
    "bert": (
        "BertConfig",
        "BertForMaskedLM",
        dict(
            vocab_size=96,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=128,
            pad_token_id=0,
        ),
    ),
    # block kinds beyond the paper: routed experts (fused 3-D tensors), shared experts,
    # dense and MoE blocks in one model, latent attention, sinks, mamba layers, two stacks
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {**_COMMON, "num_local_experts": 4}),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        {
            **_COMMON,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 32,
            "mlp_only_layers": [0, 2],
        },
    ),
    "deepseek_v3": (
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        {
            **_COMMON,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "n_group": 1,
            "topk_group": 1,
            "moe_intermediate_size": 16,
            "first_k_dense_replace": 2,
            "num_key_value_heads": 4,
            "kv_lora_rank": 16,
            "q_lora_rank": 16,
            "qk_rope_head_dim": 8,
            "qk_nope_head_dim": 8,
            "v_head_dim": 8,
        },
    ),
    "gpt_oss": (
        "GptOssConfig",
        "GptOssForCausalLM",
        {
            **_COMMON,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "sliding_window": 8,
            "max_position_embeddings": 4096,  # YaRN's original context: no rescaling warning
        },
    ),
    "jamba": (
        "JambaConfig",
        "JambaForCausalLM",
        {
            **_COMMON,
            "num_experts": 2,
            "expert_layer_period": 2,
            "expert_layer_offset": 1,
            "attn_layer_period": 2,
            "attn_layer_offset": 1,
            "mamba_d_state": 4,
            "mamba_expand": 2,
            "mamba_dt_rank": 4,
        },
    ),
    "bart": (
        "BartConfig",
        "BartForConditionalGeneration",
        dict(
            vocab_size=96,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=128,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        ),
    ),
    "t5": (
        "T5Config",
        "T5ForConditionalGeneration",
        dict(
            vocab_size=96,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            pad_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=0,
        ),
    ),
}

FAMILIES = tuple(_FAMILIES)
_DROPOUT_WORDS = ("dropout", "pdrop", "layerdrop")


def tiny_config(family: str, **overrides):
    """The config of a tiny ``family`` model; ``overrides`` replace its defaults."""
    import transformers

    if family not in _FAMILIES:
        raise HFTError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")
    config_cls, _, kwargs = _FAMILIES[family]
    config = getattr(transformers, config_cls)(**{**kwargs, **overrides})
    return without_dropout(config, keep=overrides)


def is_dropout(key: str, value) -> bool:
    """Whether a config entry is a dropout probability (``*dropout*``, ``*pdrop*``,
    ``*layerdrop*``)."""
    return isinstance(value, float) and any(word in key for word in _DROPOUT_WORDS)


def without_dropout(config, keep=()):
    """``config`` with every dropout probability 0.0, its sub-configs' too, except the keys
    in ``keep``: a model built from it trains the same way on every run."""
    from transformers import PretrainedConfig

    for key, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            without_dropout(value, keep)
        elif is_dropout(key, value) and key not in keep:
            setattr(config, key, 0.0)
    return config


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    """A freshly initialised tiny ``family`` model, reproducible from ``seed``."""
    import torch
    import transformers

    config = tiny_config(family, **overrides)
    torch.manual_seed(seed)
    return getattr(transformers, _FAMILIES[family][1])(config)


# Character-level vocabulary that fits the tiny models' 96 embeddings; ids 0-2 match their
# pad/bos/eos token ids, the chat markers are single special tokens.
_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>")
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n.,!?'\"-:;()+=*/%#"
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|assistant|>{% generation %}"
    "{{ message['content'] }}</s>{% endgeneration %}"
    "{% else %}<|{{ message['role'] }}|>{{ message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# what save_tiny and ``python -m hft_plugins.testing --vocab`` can write: "chat" is
# tiny_tokenizer() on the models' defaults; "printable" has one id per printable character
# (string.printable) in 128 embeddings and 512 positions, for sequences of a few hundred
# characters (Axolotl's shipped configs).
VOCABS = ("chat", "printable")


def char_vocab(chars, specials=_SPECIALS[:4]) -> dict[str, int]:
    """Token -> id: ``specials`` first (ids 0, 1, ...), then each distinct character once."""
    vocab = {token: i for i, token in enumerate(specials)}
    for char in chars:
        vocab.setdefault(char, len(vocab))
    return vocab


def char_tokenizer(chars, specials=_SPECIALS[:4], *, chat_template=None, **kwargs):
    """A fast tokenizer with one token per character of ``chars``, built offline.

    ``specials`` are the pad, bos, eos and unk tokens in that order (ids 0-3), then any
    further special tokens; the ids are :func:`char_vocab`'s. ``kwargs`` go to
    ``PreTrainedTokenizerFast`` (``model_max_length``, ``padding_side``...).
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    pad, bos, eos, unk, *extra = specials
    backend = Tokenizer(models.BPE(vocab=char_vocab(chars, specials), merges=[], unk_token=unk))
    backend.decoder = decoders.Fuse()
    if extra:
        kwargs["additional_special_tokens"] = list(extra)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        **kwargs,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_tokenizer():
    """A character-level fast tokenizer with pad/eos tokens and a chat template, built offline.

    Its vocabulary (at most 96 ids) fits every tiny model, so TRL's trainers run on them
    without downloading a tokenizer.
    """
    return char_tokenizer(_CHARS, _SPECIALS, chat_template=_CHAT_TEMPLATE)


def save_tiny(path, family: str = "llama", seed: int = 0, vocab: str = "chat") -> None:
    """Write a tiny ``family`` model and a character tokenizer to ``path``, loadable by path.

    ``vocab`` (one of :data:`VOCABS`): "chat" is :func:`tiny_tokenizer` on the model's
    defaults; "printable" a tokenizer of every printable character and a model with 128
    embeddings and 512 positions.
    """
    if vocab not in VOCABS:
        raise HFTError(f"unknown tiny vocabulary {vocab!r}; known: {', '.join(VOCABS)}")
    if vocab == "chat":
        tokenizer, overrides = tiny_tokenizer(), {}
    else:
        import string

        tokenizer = char_tokenizer(string.printable, model_max_length=512)
        overrides = dict(
            vocab_size=128,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    tiny_model(family, seed=seed, **overrides).save_pretrained(path)
    tokenizer.save_pretrained(path)


def main(argv=None, **defaults) -> int:
    """``python -m hft_plugins.testing DIR [--family F] [--seed N] [--vocab chat|printable]``.

    ``defaults`` replace the options' defaults (a script that always wants one vocabulary).
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m hft_plugins.testing",
        description="Write a tiny model and a character-level tokenizer to a directory, "
        "built in code (nothing is downloaded).",
    )
    parser.add_argument("path", help="directory to write the model and tokenizer to")
    parser.add_argument("--family", default="llama", choices=FAMILIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--vocab",
        default="chat",
        choices=VOCABS,
        help="chat: 96 ids with a chat template; printable: every printable character, "
        "128 ids, 512 positions",
    )
    parser.set_defaults(**defaults)
    options = parser.parse_args(argv)
    save_tiny(options.path, options.family, options.seed, options.vocab)
    print(f"tiny {options.family} model and tokenizer written to {options.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
