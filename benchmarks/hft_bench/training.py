"""The harness's one set of optimizer builders and its one training step.

The forgetting benchmark (``methods.py``) and the step benchmark (``hft_bench.step``)
build every method here: ``fft`` (torch AdamW over everything), ``frozen`` (AdamW over
the mask's ``requires_grad`` parameters), ``hft`` (``HFTOptimizer``), ``lora`` (a PEFT
adapter) and ``badam`` (``badam.BlockOptimizer``). Each builder returns a ``Setup``: the
model to run (the PEFT wrapper for LoRA), the optimizer, the elements it updates and its
state in bytes (``hft_plugins.core.optim.state_bytes``). ``Stepper`` runs and times one
training step. PEFT and BAdam are imported by the builders that use them.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hft_plugins.core.optim import state_bytes

# PEFT's target modules: every block projection
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


@dataclass
class Setup:
    """One method's model and optimizer."""

    model: Any  # what to run: the model itself, or its PEFT wrapper
    optimizer: Any
    trainable: int  # elements the optimizer updates (BAdam: the active block's)
    state_bytes: Callable[[], int]  # optimizer state now, in bytes


def _numel(params) -> int:
    return sum(p.numel() for p in params)


def _adamw(model, params, *, lr: float, weight_decay: float) -> Setup:
    params = list(params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return Setup(model, opt, _numel(params), lambda: state_bytes(opt))


def fft(model, *, lr: float, weight_decay: float) -> Setup:
    """Torch AdamW over every parameter."""
    return _adamw(model, model.parameters(), lr=lr, weight_decay=weight_decay)


def frozen(model, mask, *, lr: float, weight_decay: float) -> Setup:
    """Hand-freezing: ``mask.apply`` sets requires_grad; AdamW over what still requires it."""
    mask.apply(model)
    params = [p for p in model.parameters() if p.requires_grad]
    return _adamw(model, params, lr=lr, weight_decay=weight_decay)


def hft(model, mask, *, lr: float, weight_decay: float, sliced_grad: bool = True) -> Setup:
    """``HFTOptimizer`` with torch AdamW over the mask's trainable half."""
    from hft_plugins import HFTOptimizer

    opt = HFTOptimizer(
        model,
        mask,
        torch.optim.AdamW,
        lr=lr,
        weight_decay=weight_decay,
        sliced_grad=sliced_grad,
    )
    return Setup(model, opt, mask.trainable_numel, opt.state_bytes)


def lora(
    model, *, rank: int, targets, lr: float, weight_decay: float, fan_in_fan_out=False
) -> Setup:
    """A PEFT LoRA adapter (alpha = 2 rank, no dropout) on ``targets``; AdamW over it."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=list(targets),
        fan_in_fan_out=fan_in_fan_out,
    )
    peft_model = get_peft_model(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    return _adamw(peft_model, params, lr=lr, weight_decay=weight_decay)


def badam(model, *, lr: float, weight_decay: float, switch_every: int, **block_options) -> Setup:
    """``badam.BlockOptimizer`` over AdamW, one block at a time.

    ``block_options`` go to BlockOptimizer (``block_prefix_list``, ``start_block``,
    ``switch_mode``...). The state counts the moments and BAdam's fp32 master copy of the
    active block.
    """
    from badam import BlockOptimizer

    base = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    opt = BlockOptimizer(
        base,
        list(model.named_parameters()),
        switch_block_every=switch_every,
        verbose=0,
        **block_options,
    )

    def state():
        masters = sum(p.numel() * p.element_size() for p in opt.param_idx2hp.values())
        return state_bytes(base) + masters

    return Setup(model, opt, _numel(opt.param_idx2hp.values()), state)


@contextlib.contextmanager
def quiet():
    """Silence BAdam's warnings (fp32 master weights cost memory) and its block-switch prints."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


class Scheduled:
    """An optimizer whose learning-rate scheduler steps with it."""

    def __init__(self, optimizer, scheduler):
        self.optimizer, self.scheduler = optimizer, scheduler

    def step(self):
        self.optimizer.step()
        self.scheduler.step()

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)


class Stepper:
    """Runs one training step: forward, backward, optimizer step, zero_grad.

    ``step(**inputs)`` returns (step, fwd+bwd, optimizer) seconds, synchronising CUDA
    around each part when ``cuda`` is set; ``loss`` is the last step's loss tensor, the
    model's own unless ``loss(model, inputs)`` is given.
    """

    def __init__(self, model, optimizer, cuda: bool = False, loss=None):
        self.model, self.optimizer, self.cuda = model, optimizer, cuda
        self.loss_fn = loss
        self.loss = None

    def step(self, **inputs) -> tuple[float, float, float]:
        self._sync()
        t0 = time.perf_counter()
        if self.loss_fn is None:
            self.loss = self.model(**inputs).loss
        else:
            self.loss = self.loss_fn(self.model, inputs)
        self.loss.backward()
        self._sync()
        t1 = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._sync()
        t2 = time.perf_counter()
        return t2 - t0, t1 - t0, t2 - t1

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()
