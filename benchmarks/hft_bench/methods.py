"""The fine-tuning methods the forgetting benchmark compares, one stage at a time.

Every method runs the one loop (``engine.train_steps``) on the same batches with
AdamW (no weight decay, constant learning rate) and a fresh optimizer per stage;
they differ only in what may move. The optimizers come from ``training`` (the builders
the step benchmark uses too):

- ``fft``: everything.
- ``hft-category`` / ``hft-layer`` / ``hft-matrix``: the HFT mask of that strategy at
  ratio 0.5, drawn anew each stage (``HFTConfig(seed=run seed, stage=i)``).
- ``lora``: a real PEFT LoRA adapter (r=8, alpha=16, all block linears), merged into
  the weights after each stage so the next stage gets a fresh adapter.
- ``badam``: the real ``badam.BlockOptimizer`` over the blocks in random order,
  switching so that each block gets an equal share of the stage's steps (BAdam's
  defaults: embeddings and head stay frozen).
- ``half-reset``: ``fft`` for the stage, then ``half_reset`` (the ``hft reset``
  helper): the block half that the stage's category draw selects goes back to the
  pre-stage weights.
"""

from __future__ import annotations

import copy

import torch

from hft_plugins import HFTConfig, HFTError, select
from hft_plugins.core.reset import half_reset

from . import engine, training
from .common import check_names

METHODS = ("fft", "hft-category", "hft-layer", "hft-matrix", "lora", "badam", "half-reset")
LORA_TARGETS = training.LORA_TARGETS["llama"]
LORA_RANK = 8


def check_methods(names) -> tuple[str, ...]:
    """Validate method names; raise one-line HFTError naming the first unknown one."""
    return check_names(names, METHODS, "method")


def trainable_fraction(method: str, model) -> float:
    """Share of the model's parameters the method updates in one stage (on average)."""
    total = sum(p.numel() for p in model.parameters())
    if method in ("fft", "half-reset"):
        return 1.0
    if method.startswith("hft-"):
        mask = select(model, HFTConfig(strategy=method.removeprefix("hft-")))
        return mask.trainable_numel / mask.total_numel
    if method == "lora":
        r, per_layer = LORA_RANK, 0
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in LORA_TARGETS:
                per_layer += r * (module.in_features + module.out_features)
        return per_layer / total
    blocks = model.model.layers
    return sum(p.numel() for p in blocks[0].parameters()) / total  # badam: one block at a time


def run_stage(method, model, rows, *, steps, lr, seed, stage, batch_size=32, ratio=0.5, **loop):
    """Fine-tune ``model`` on ``rows`` for one stage with ``method``; returns the model.

    ``ratio`` is the HFT methods' trained fraction; ``loop`` goes to ``engine.train_steps``
    (how rows become a batch, the loss, replay, a hook after each step).
    """
    data_seed = seed * 1000 + stage
    torch.manual_seed(data_seed)

    def train(run_model, optimizer):
        engine.train_steps(run_model, optimizer, rows, steps, batch_size, data_seed, **loop)

    if method == "fft":
        train(model, training.fft(model, lr=lr, weight_decay=0.0).optimizer)
        return model
    if method.startswith("hft-"):
        cfg = HFTConfig(strategy=method.removeprefix("hft-"), ratio=ratio, seed=seed, stage=stage)
        opt = training.hft(model, select(model, cfg), lr=lr, weight_decay=0.0).optimizer
        train(model, opt)
        opt.end_stage()
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "half-reset":
        before = copy.deepcopy(model)
        train(model, training.fft(model, lr=lr, weight_decay=0.0).optimizer)
        mask = select(model, HFTConfig(strategy="category", seed=seed, stage=stage))
        return half_reset(before, model, mask)
    if method == "lora":
        setup = training.lora(model, rank=LORA_RANK, targets=LORA_TARGETS, lr=lr, weight_decay=0.0)
        train(setup.model, setup.optimizer)
        model = setup.model.merge_and_unload()
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "badam":
        every = max(1, steps // len(model.model.layers))
        with training.quiet():
            setup = training.badam(
                model, lr=lr, weight_decay=0.0, switch_every=every, switch_mode="random"
            )
            train(model, setup.optimizer)
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None
        return model
    raise HFTError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
