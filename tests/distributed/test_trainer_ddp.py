"""HFTTrainer under torchrun: DDP through accelerate, a redraw at the epoch boundary."""

from __future__ import annotations

import pytest
import torch

from hft_plugins import HFTMask
from tests.helpers import same_on_all_ranks


@pytest.fixture(scope="module")
def run(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("trainer_ddp")
    torchrun("trainer_ddp.py", str(out))
    return torch.load(out / "trainer_ddp.pt", weights_only=False)


def _check(before, after, trainable) -> None:
    for name in before:
        if name in trainable:
            assert not torch.equal(before[name], after[name]), f"{name} did not train"
        else:
            assert torch.equal(before[name], after[name]), f"frozen {name} moved"


def test_trainer_runs_ddp_with_unused_parameter_search(run):
    # The Trainer's default for models without checkpointing: with it, a plain redraw would
    # not fail but leave the new half un-synchronised (ranks silently drift).
    assert run["distributed_type"] == "DistributedType.MULTI_CPU"
    assert run["wrapper"] == "DistributedDataParallel" and run["find_unused_parameters"]


def test_trainer_ddp_ranks_agree_and_train_the_half(run):
    ranks = run["ranks"]
    first, second = (set(HFTMask.from_json(m).params()) for m in run["masks"])
    assert HFTMask.from_json(run["masks"][1]).config.stage == 1 and first != second
    assert same_on_all_ranks(ranks, "stage0")
    _check(ranks[0]["start"], ranks[0]["stage0"], first)


def test_trainer_ddp_redraw_trains_the_new_half_on_every_rank(run):
    ranks = run["ranks"]
    second = set(HFTMask.from_json(run["masks"][1]).params())
    assert same_on_all_ranks(ranks, "stage1")
    for rank in ranks:
        _check(rank["stage0"], rank["stage1"], second)
