"""A tiny chat model with the char tokenizer that knows some of the world facts, and its
set-up for the chat-model benchmark on the WordNet fixture: everything the real model's
pipeline does, in seconds."""

from __future__ import annotations

import torch
from hft_bench import chat_eval
from hft_bench.chat_evidence.experiment import Grid, setup
from hft_bench.engine import pair_batch, train_steps

from hft_plugins.testing import tiny_model, tiny_tokenizer

CHAT_SIZES = dict(base=10, base_eval=4, probe=4, heldout=3, nouns_new=10, verbs=5, hypernym=6)
GRID = dict(methods=["fft", "hft-category", "hft-layer", "lora", "fft-replay"], seeds=[0],
            lrs=[1e-3], steps=[1, 2], sequence_lrs=[1e-3], sequence_steps=1, batch_size=2,
            heldout=1, answer_tokens=6)  # fmt: skip


def knowing_model(tokenizer):
    """A tiny Llama taught the world facts for a moment: it gets some of them right."""
    model = tiny_model("llama", max_position_embeddings=256)
    facts = [chat_eval.text_pair_ids(tokenizer, f.prompt, f.answer) for f in chat_eval.FACTS]
    pad = tokenizer.pad_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_steps(model, opt, facts, 80, 16, 0, to_batch=lambda rows: pair_batch(rows, pad))
    return model.eval()


def scripted_answers(tokenizer):
    """``chat_eval.greedy`` for a model that cannot chat yet: 'ok.' and the end of its turn
    for even prompts, 'ok.' repeated past the budget for odd ones."""
    ok = tokenizer("ok.", add_special_tokens=False)["input_ids"]

    def greedy(model, prompts, *, pad_id, eos_id, max_new_tokens, desc=None):
        return [ok + [eos_id] if i % 2 == 0 else (ok * 9)[:max_new_tokens]
                for i in range(len(prompts))]  # fmt: skip

    return greedy


def chat_setup(corpus, monkeypatch, **grid):
    tokenizer = tiny_tokenizer()
    model = knowing_model(tokenizer)
    monkeypatch.setattr(chat_eval, "greedy", scripted_answers(tokenizer))
    g = Grid(**{**GRID, **grid})
    return setup(model, tokenizer, corpus, g, model_name="tiny-llama", log=lambda m: None), g
