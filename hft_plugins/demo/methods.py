"""The fine-tuning methods the forgetting benchmark compares, one stage at a time.

Every method runs the same loop (``engine.train_steps``) on the same batches with
AdamW (no weight decay, constant learning rate) and a fresh optimizer per stage;
they differ only in what may move:

- ``fft``: everything.
- ``hft-category`` / ``hft-layer`` / ``hft-matrix``: the HFT mask of that strategy at
  ratio 0.5, drawn anew each stage (``HFTConfig(seed=run seed, stage=i)``).
- ``lora``: a real PEFT LoRA adapter (r=8, alpha=16, all block linears), merged into
  the weights after each stage so the next stage gets a fresh adapter.
- ``badam``: the real ``badam.BlockOptimizer`` over the blocks in random order,
  switching so that each block gets an equal share of the stage's steps (BAdam's
  defaults: embeddings and head stay frozen).
- ``half-reset``: ``fft`` for the stage, then ``half_reset`` (the lead's ``hft reset``
  helper): the block half that the stage's category draw selects goes back to the
  pre-stage weights.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings

import torch

from ..config import HFTConfig
from ..errors import HFTError
from ..mask import select
from ..optim import HFTOptimizer
from ..reset import half_reset
from . import engine

METHODS = ("fft", "hft-category", "hft-layer", "hft-matrix", "lora", "badam", "half-reset")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def check_methods(names) -> tuple[str, ...]:
    """Validate method names; raise one-line HFTError naming the first unknown one."""
    names = tuple(names)
    if not names:
        raise HFTError("the method list is empty; known methods: " + ", ".join(METHODS))
    for name in names:
        if name not in METHODS:
            raise HFTError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise HFTError(f"a method is listed twice in {','.join(names)}")
    return names


def trainable_fraction(method: str, model) -> float:
    """Share of the model's parameters the method updates in one stage (on average)."""
    total = sum(p.numel() for p in model.parameters())
    if method in ("fft", "half-reset"):
        return 1.0
    if method.startswith("hft-"):
        mask = select(model, HFTConfig(strategy=method.removeprefix("hft-")))
        return mask.trainable_numel / mask.total_numel
    if method == "lora":
        r, per_layer = 8, 0
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in LORA_TARGETS:
                per_layer += r * (module.in_features + module.out_features)
        return per_layer / total
    blocks = model.model.layers
    return sum(p.numel() for p in blocks[0].parameters()) / total  # badam: one block at a time


def run_stage(
    method,
    model,
    rows,
    *,
    steps,
    lr,
    seed,
    stage,
    batch_size=32,
    progress=None,
    train_steps=None,
    ratio=0.5,
):
    """Fine-tune ``model`` on ``rows`` for one stage with ``method``; returns the model.

    ``train_steps`` replaces ``engine.train_steps`` (same signature) for rows of another format;
    ``ratio`` is the HFT methods' trained fraction.
    """
    train = train_steps or engine.train_steps
    data_seed = seed * 1000 + stage
    torch.manual_seed(data_seed)
    if method == "fft":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        train(model, opt, rows, steps, batch_size, data_seed, progress)
        return model
    if method.startswith("hft-"):
        cfg = HFTConfig(strategy=method.removeprefix("hft-"), ratio=ratio, seed=seed, stage=stage)
        opt = HFTOptimizer(model, select(model, cfg), torch.optim.AdamW, lr=lr, weight_decay=0.0)
        train(model, opt, rows, steps, batch_size, data_seed, progress)
        opt.end_stage()
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "half-reset":
        before = copy.deepcopy(model)
        run_stage(
            "fft",
            model,
            rows,
            steps=steps,
            lr=lr,
            seed=seed,
            stage=stage,
            batch_size=batch_size,
            progress=progress,
            train_steps=train,
        )
        mask = select(model, HFTConfig(strategy="category", seed=seed, stage=stage))
        return half_reset(before, model, mask)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        peft_model = get_peft_model(
            model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS)
        )
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        train(peft_model, opt, rows, steps, batch_size, data_seed, progress)
        model = peft_model.merge_and_unload()
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "badam":
        from badam import BlockOptimizer

        base = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        every = max(1, steps // len(model.model.layers))
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # BAdam warns that fp32 weights cost memory
            opt = BlockOptimizer(
                base,
                list(model.named_parameters()),
                switch_block_every=every,
                switch_mode="random",
                verbose=0,
            )
            train(model, opt, rows, steps, batch_size, data_seed, progress)
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None
        return model
    raise HFTError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
