"""resume_from_checkpoint mid-stage and across redraws ends bit-identical to the straight run.

3 epochs of 4 steps, a redraw at each epoch start, a checkpoint every 2 steps:
checkpoint-2 lies inside stage 0 (the resumed run then makes both redraws itself),
checkpoint-4 at the end of stage 0 (the redraw comes right after resuming),
checkpoint-6 inside stage 1 (resuming must restore the stage-1 mask from the checkpoint).
"""

from __future__ import annotations

import pytest
import torch

from hft_plugins import HFTConfig
from hft_plugins.integrations.transformers import HFTCallback, HFTTrainer
from hft_plugins.testing import tiny_model
from tests.helpers import lm_dataset, training_args, truncate


def _train(out, family: str, resume=None) -> HFTTrainer:
    trainer = HFTTrainer(
        model=tiny_model(family, seed=0),
        args=training_args(
            out, max_steps=-1, num_train_epochs=3, save_strategy="steps", save_steps=2
        ),
        train_dataset=lm_dataset(),
        hft_config=HFTConfig(seed=11),
        callbacks=[HFTCallback(redraw_every_epoch=True)],
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _assert_same_state(a: dict, b: dict, path: str = "state") -> None:
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_same_state(a[key], b[key], f"{path}.{key}")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    runs = {}
    for family in ("llama", "phi3"):
        out = tmp_path_factory.mktemp(f"straight-{family}")
        runs[family] = (out, _train(out, family))
    return runs


@pytest.mark.parametrize(
    "family, checkpoint",
    [("llama", 2), ("llama", 4), ("llama", 6), ("phi3", 6)],  # phi3: fused slices
)
def test_resume_is_bit_identical(straight, tmp_path, family, checkpoint):
    out, full = straight[family]
    resumed = _train(tmp_path, family, resume=str(out / f"checkpoint-{checkpoint}"))
    assert resumed.state.global_step == full.state.global_step == 12
    assert resumed.hft_mask == full.hft_mask and resumed.hft_mask.config.stage == 2
    for (name, a), (_, b) in zip(
        full.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    _assert_same_state(full.hft_optimizer.state_dict(), resumed.hft_optimizer.state_dict())
    _assert_same_state(full.lr_scheduler.state_dict(), resumed.lr_scheduler.state_dict())
    stages = [e["hft_stage"] for e in resumed.state.log_history if "loss" in e]
    assert stages == [0] * 4 + [1] * 4 + [2] * 4  # the history carried over, stage by stage


def test_resume_from_truncated_or_missing_checkpoints(tmp_path):
    _train(tmp_path / "run", "llama")
    checkpoint = tmp_path / "run" / "checkpoint-2"
    truncate(checkpoint / "optimizer.pt")
    with pytest.raises(RuntimeError, match="checkpoint file is corrupted"):
        _train(tmp_path / "again", "llama", resume=str(checkpoint))
    with pytest.raises(ValueError, match="Can't find a valid checkpoint at"):
        _train(tmp_path / "again", "llama", resume=str(tmp_path / "nowhere"))
