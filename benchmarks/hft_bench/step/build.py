"""The step benchmark's model (transformers', else the plain-torch Llama) and its HFT mask."""

from __future__ import annotations

import importlib.util
import sys


def build_model(args, device=None):
    """The benchmark model: transformers' when it imports, else the plain-torch Llama."""
    import torch

    if args.model_config is not None:
        return _named_model(args, device)
    if args.model_impl == "torch" or (args.model_impl == "auto" and not _has("transformers")):
        if args.arch != "llama":
            sys.exit(f"--arch {args.arch} needs transformers; only llama has a plain-torch model")
        return _torch_llama(args, device)

    max_tokens = max(t for _, t in args.shapes.values())
    dims = dict(
        vocab_size=args.vocab, num_hidden_layers=args.layers, num_attention_heads=args.heads
    )
    from hft_plugins.tiny import tiny_model

    with torch.device(device or args.device):
        if args.arch == "moe":
            model = tiny_model(
                "mixtral", seed=args.seed, hidden_size=args.hidden,
                intermediate_size=args.intermediate, num_local_experts=args.experts,
                num_experts_per_tok=args.top_k, num_key_value_heads=args.kv_heads,
                head_dim=args.hidden // args.heads, max_position_embeddings=max_tokens,
                tie_word_embeddings=False, **dims,
            )  # fmt: skip
        elif args.arch == "gpt2":
            model = tiny_model(
                "gpt2", seed=args.seed, vocab_size=args.vocab, n_embd=args.hidden,
                n_layer=args.layers, n_head=args.heads, n_inner=args.intermediate,
                n_positions=max_tokens, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            )  # fmt: skip
        else:
            model = tiny_model(
                "llama", seed=args.seed, hidden_size=args.hidden,
                intermediate_size=args.intermediate, num_key_value_heads=args.kv_heads,
                head_dim=args.hidden // args.heads, max_position_embeddings=max_tokens,
                tie_word_embeddings=False, **dims,
            )  # fmt: skip
    return _finish(model, args)


def _named_model(args, device):
    """``--model``'s architecture from its config, freshly initialised from ``--seed``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(args.seed)
    with torch.device(device or args.device):
        model = AutoModelForCausalLM.from_config(args.model_config, dtype=torch.float32)
    return _finish(model, args)


def _torch_llama(args, device):
    import torch

    from ..torch_llama import LlamaLiteConfig, LlamaLiteForCausalLM

    config = LlamaLiteConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(t for _, t in args.shapes.values()),
    )  # fmt: skip
    torch.manual_seed(args.seed)
    with torch.device(device or args.device):
        model = LlamaLiteForCausalLM(config)
    return _finish(model, args)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _finish(model, args):
    import torch

    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    return model.train()


def draw_mask(model):
    from hft_plugins import HFTConfig, select

    return select(model, HFTConfig(strategy="category", ratio=0.5, seed=0, stage=0))


def block_prefixes(model) -> list[list[str]]:
    from hft_plugins.core.partition import find_blocks

    name, blocks = find_blocks(model)
    return [[f"{name}.{i}."] for i in range(len(blocks))]
