"""HFTOptimizer under every torch Adam kernel equals a plain optimizer over the trainable parts.

For each kernel (fused, foreach, for-loop) of Adam and AdamW, with weight decay, on
fused column slices (gpt2 ``c_attn``), row slices (phi3, and gpt_neox's per-head rows)
and 3-D expert tensors (one built by hand and Mixtral's, sliced along dim 1; gpt-oss's,
gate and up interleaved along the last dim): frozen elements stay bit-identical, and the
trainable elements follow the trajectory of a reference that steps, with one plain
optimizer each, separate leaf copies of the trainable parts fed the same gradients. Two
stages: a unit trained in both keeps its reference optimizer (so its state).
"""

from __future__ import annotations

import pytest
import torch

from hft_plugins import HFTConfig, HFTOptimizer, select
from hft_plugins.core.optim import no_decay_names
from hft_plugins.testing import tiny_model
from tests import helpers

WEIGHT_DECAY = 0.1
STEPS = 3
KERNELS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}
# CUDA's fused and foreach kernels are not CPU's: run them too where there is a GPU
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _pieces(mask, model) -> dict[str, tuple[torch.nn.Parameter, tuple[int, slice] | None]]:
    """State key -> (parameter, (dim, indices) or None), one per trainable unit range."""
    params = dict(model.named_parameters())
    pieces = {}
    for name, parts in mask.trainable_parts().items():
        if parts is None:
            pieces[name] = (params[name], None)
            continue
        for part in parts:
            for a, b in part.ranges:
                key = f"{name}[{part.dim}:{a}:{b}" + (f":{part.step}]" if part.step > 1 else "]")
                pieces[key] = (params[name], (part.dim, slice(a, b, part.step)))
    return pieces


def _cut(tensor: torch.Tensor, cut) -> torch.Tensor:
    if cut is None:
        return tensor.detach()
    dim, index = cut
    return tensor.detach()[(slice(None),) * dim + (index,)]


def _trainable(mask, model) -> dict[str, torch.Tensor]:
    """Parameter name -> boolean tensor, True where the mask trains."""
    flags = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    for param, cut in _pieces(mask, model).values():
        name = next(n for n, p in model.named_parameters() if p is param)
        _cut(flags[name], cut).fill_(True)
    return flags


class Reference:
    """One plain optimizer per trainable part, over a separate leaf copy of it."""

    def __init__(self, model, optimizer_cls, kernel: dict):
        self.model, self.optimizer_cls, self.kernel = model, optimizer_cls, kernel
        self.no_decay = no_decay_names(model)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def start_stage(self, mask) -> None:
        """Parts trained before keep their optimizer (and state); new parts get a fresh one."""
        self.pieces = _pieces(mask, self.model)
        self.optimizers = {k: o for k, o in self.optimizers.items() if k in self.pieces}
        for key, (param, cut) in self.pieces.items():
            if key not in self.optimizers:
                leaf = _cut(param, cut).clone()
                decay = 0.0 if key.split("[")[0] in self.no_decay else WEIGHT_DECAY
                self.optimizers[key] = self.optimizer_cls(
                    [leaf], lr=1e-2, weight_decay=decay, **self.kernel
                )

    def leaf(self, key: str) -> torch.Tensor:
        return self.optimizers[key].param_groups[0]["params"][0]

    def step(self) -> None:
        """Step with the gradients the model holds now (before the HFT step consumes them)."""
        for key, (param, cut) in self.pieces.items():
            if param.grad is not None:
                self.leaf(key).grad = _cut(param.grad, cut).clone()
                self.optimizers[key].step()

    def check(self) -> None:
        for key, (param, cut) in self.pieces.items():
            torch.testing.assert_close(_cut(param, cut), self.leaf(key), msg=key)


def _setup(model_kind: str, device: str):
    """The model, a loss function of the step number, and the two stages' masks."""
    if model_kind == "experts":
        model = helpers.ExpertsBlock().to(device)

        def loss(step):
            g = torch.Generator().manual_seed(step)
            x = torch.randn(10, helpers.EXPERT_HIDDEN, generator=g).to(device)
            return model(x).pow(2).mean()

        # gate trains in both stages (a dim-1 slice of a 3-D tensor); up joins in the second
        return (
            model,
            loss,
            [
                helpers.expert_mask(model, {"gate", "down"}),
                helpers.expert_mask(model, {"gate", "up", "norm"}, stage=1),
            ],
        )
    model = tiny_model(model_kind).to(device)

    def loss(step):
        ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(step))
        ids = ids.to(device)
        return model(input_ids=ids, labels=ids).loss

    first = select(model, HFTConfig(seed=0))
    return model, loss, [first, select(model, first.config.next_stage())]


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("optimizer_cls", [torch.optim.Adam, torch.optim.AdamW])
# experts: [E, 2F, H] by hand; mixtral: transformers' gate_up_proj, gate and up as dim-1
# ranges; gpt_oss: gate and up interleaved along the last dim (every other index)
@pytest.mark.parametrize(
    "model_kind", ["gpt2", "phi3", "gpt_neox", "experts", "mixtral", "gpt_oss"]
)
@pytest.mark.parametrize("device", DEVICES)
def test_every_kernel_steps_exactly_the_trainable_parts(device, model_kind, optimizer_cls, kernel):
    model, loss, masks = _setup(model_kind, device)
    assert any(parts is not None for parts in masks[0].trainable_parts().values())
    reference = Reference(model, optimizer_cls, KERNELS[kernel])
    opt = HFTOptimizer(
        model, masks[0], optimizer_cls, lr=1e-2, weight_decay=WEIGHT_DECAY, **KERNELS[kernel]
    )
    step = 0
    for stage, mask in enumerate(masks):
        if stage:
            opt.redraw(mask)
        reference.start_stage(mask)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        for _ in range(STEPS):
            loss(step).backward()
            reference.step()
            opt.step()
            opt.zero_grad()
            reference.check()
            step += 1
        moved = 0
        for name, trainable in _trainable(mask, model).items():
            now = dict(model.named_parameters())[name].detach()
            assert torch.equal(now[~trainable], start[name][~trainable]), f"{name}: frozen moved"
            moved += int((now[trainable] != start[name][trainable]).sum())
        assert moved > 0.9 * sum(int(t.sum()) for t in _trainable(mask, model).values())
