"""A PEFT-style API for HFT: the same method names, our own classes.

PEFT cannot register a third-party method into ``get_peft_model``, so HFT offers the
names users know: ``get_hft_model``, ``print_trainable_parameters``,
``save_pretrained`` / ``HFTModel.from_pretrained``, ``merge_and_unload`` and
``disable_adapter``. A save holds only the trained tensors (the trainable ranges
of fused tensors) plus the config and the mask, so it is the trainable fraction
of a full checkpoint. ``disable_adapter`` needs the base values of the trained
half: ``get_hft_model`` keeps a copy of them (their bytes, the trainable half
only), so a reference forward needs no second model.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import atomic_directory
from ..config import HFTConfig
from ..errors import HFTError
from ..mask import Mask, Slices, range_view, select
from ..optim import release
from .transformers import check_hft_config, reject_peft

__all__ = ["HFTModel", "get_hft_model"]

WEIGHTS_NAME = "hft_model.safetensors"
CONFIG_NAME = "hft_config.json"
MASK_NAME = "hft_mask.json"


def get_hft_model(model: nn.Module, config: HFTConfig | None = None) -> HFTModel:
    """Draw ``config``'s half of ``model``, freeze the rest and wrap it PEFT-style."""
    config = check_hft_config(config)
    if isinstance(model, HFTModel):
        raise HFTError("the model is already an HFTModel; unwrap it with merge_and_unload() first")
    reject_peft(model)
    return HFTModel(model, select(model, config))


def _pieces(mask: Mask, model: nn.Module) -> dict[str, torch.Tensor]:
    """Tensor key -> view of what trains: whole tensors by name, slices as ``name[dim:a:b]``."""
    params = dict(model.named_parameters())
    out = {}
    for name, slices in mask.params().items():
        param = params[name].detach()
        if slices is None:
            out[name] = param
        else:
            for a, b in slices.ranges:
                view = range_view(param, slices.dim, a, b, slices.step)
                out[_slice_key(name, slices, a, b)] = view
    return out


def _slice_key(name: str, slices: Slices, a: int, b: int) -> str:
    step = f":{slices.step}" if slices.step != 1 else ""
    return f"{name}[{slices.dim}:{a}:{b}{step}]"


class HFTModel(nn.Module):
    """A model training one HFT half; forwards and answers attributes like the model itself."""

    def __init__(self, model: nn.Module, mask: Mask):
        super().__init__()
        mask.apply(model)
        self.base_model = model
        self.hft_mask = mask
        self._base_values = {k: v.clone() for k, v in _pieces(mask, model).items()}
        # The model's own forward, so its signature (which the Trainer reads) shows through.
        self.forward = model.forward

    @property
    def hft_config(self) -> HFTConfig:
        return self.hft_mask.config

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    # ---- what trains --------------------------------------------------------

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameter counts; a fused tensor counts only its trainable ranges."""
        total = sum(p.numel() for p in self.base_model.parameters())
        return self.hft_mask.trainable_numel, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )

    # ---- saving -------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write the trained tensors, config and mask; atomically (a temp dir, then rename)."""
        target = Path(save_directory)
        if target.exists() and not target.is_dir():
            raise HFTError(f"cannot save an HFT model to {target}: it is a file")
        with atomic_directory(target) as staging:
            tensors = {
                k: v.contiguous().cpu() for k, v in _pieces(self.hft_mask, self.base_model).items()
            }
            save_file(tensors, staging / WEIGHTS_NAME, metadata={"format": "hft-model/1"})
            (staging / CONFIG_NAME).write_text(json.dumps(self.hft_config.to_dict(), indent=2))
            self.hft_mask.save(staging / MASK_NAME)

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, save_directory: str | os.PathLike) -> HFTModel:
        """``base_model`` with the saved half put back: the tuned model, exactly."""
        directory = Path(save_directory)
        if not (directory / WEIGHTS_NAME).is_file():
            left = sorted(directory.parent.glob(f".{directory.name}.old-*/{WEIGHTS_NAME}"))
            if left and not directory.exists():
                raise HFTError(
                    f"no HFT save in {directory}: a save was interrupted while replacing it; "
                    f"the previous save is complete in {left[-1].parent}, rename it back"
                )
            raise HFTError(f"no HFT save in {directory}: {WEIGHTS_NAME} is missing")
        mask = Mask.load(directory / MASK_NAME)
        mask.check(base_model)
        reject_peft(base_model)
        try:
            saved = load_file(directory / WEIGHTS_NAME)
        except Exception as exc:  # safetensors raises its own error type for a bad file
            raise HFTError(f"corrupt HFT save {directory / WEIGHTS_NAME}: {exc}") from None
        model = cls(base_model, mask)
        expected = _pieces(mask, base_model)
        if set(saved) != set(expected):
            odd = sorted(set(saved) ^ set(expected))[0]
            raise HFTError(f"HFT save in {directory} does not match its mask: tensor {odd!r}")
        with torch.no_grad():
            for key, view in expected.items():
                if saved[key].shape != view.shape:
                    raise HFTError(
                        f"HFT save in {directory}: {key!r} has shape {list(saved[key].shape)}, "
                        f"the model's is {list(view.shape)}"
                    )
                view.copy_(saved[key])
        return model

    # ---- leaving ------------------------------------------------------------

    def merge_and_unload(self) -> nn.Module:
        """The plain model, every parameter trainable again (HFT has nothing to merge), its
        backward the model's own again (an HFTOptimizer on it is closed)."""
        release(self.base_model)
        for param in self.base_model.parameters():
            param.requires_grad_(True)
        return self.base_model

    @contextlib.contextmanager
    def disable_adapter(self):
        """Inside, the trained half holds its base values: the model before tuning."""
        pieces = _pieces(self.hft_mask, self.base_model)
        tuned = {k: v.clone() for k, v in pieces.items()}
        with torch.no_grad():
            for key, view in pieces.items():
                view.copy_(self._base_values[key])
        try:
            yield self
        finally:
            with torch.no_grad():
                for key, view in pieces.items():
                    view.copy_(tuned[key])
