"""Tiny models of every built-in family, built from their config classes.

No weights can be downloaded in tests or on air-gapped machines; these give each
layout a real transformers model of a few thousand parameters to run on. Dropout
is off so that runs are reproducible step for step.
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


def tiny_config(family: str, **overrides):
    """The config of a tiny ``family`` model; ``overrides`` replace its defaults."""
    import transformers

    if family not in _FAMILIES:
        raise HFTError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")
    config_cls, _, kwargs = _FAMILIES[family]
    config = getattr(transformers, config_cls)(**{**kwargs, **overrides})
    for key, value in list(vars(config).items()):
        if (
            ("dropout" in key or "pdrop" in key)
            and isinstance(value, float)
            and key not in overrides
        ):
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


def tiny_tokenizer():
    """A character-level fast tokenizer with pad/eos tokens and a chat template, built offline.

    Its vocabulary (at most 96 ids) fits every tiny model, so TRL's trainers run on them
    without downloading a tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(_SPECIALS + tuple(_CHARS))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=list(_SPECIALS[4:]),
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def save_tiny(path, family: str = "llama", seed: int = 0) -> None:
    """Write a tiny ``family`` model and :func:`tiny_tokenizer` to ``path``, loadable by path."""
    tiny_model(family, seed=seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
