"""DDP with a redraw: the new half trains on every rank, in sync; the frozen half stays put."""

from __future__ import annotations

import pytest
import torch

from hft_plugins import HFTMask
from tests.helpers import same_on_all_ranks


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("ddp")
    runs = {}
    for mode in ("rebuild", "plain"):
        torchrun("ddp_redraw.py", str(out), mode)
        runs[mode] = torch.load(out / f"ddp_{mode}.pt", weights_only=False)
    return runs


def test_ddp_trains_the_half_and_ranks_agree(ddp_runs):
    ranks = ddp_runs["rebuild"]["ranks"]
    trainable = set(HFTMask.from_json(ddp_runs["rebuild"]["masks"][0]).params())
    assert same_on_all_ranks([r["snapshots"] for r in ranks], "stage0")
    start, after = ranks[0]["snapshots"]["start"], ranks[0]["snapshots"]["stage0"]
    for name in start:
        if name in trainable:
            assert not torch.equal(start[name], after[name]), f"{name} did not train"
        else:
            assert torch.equal(start[name], after[name]), f"frozen {name} moved"


def test_ddp_redraw_trains_the_new_half_in_sync(ddp_runs):
    run = ddp_runs["rebuild"]
    ranks = run["ranks"]
    assert [r["error"] for r in ranks] == [None, None]
    old, new = (set(HFTMask.from_json(m).params()) for m in run["masks"])
    newly_trainable = new - old
    assert newly_trainable and old - new  # the redraw really changed the half
    assert same_on_all_ranks([r["snapshots"] for r in ranks], "stage1")
    before, after = ranks[0]["snapshots"]["stage0"], ranks[0]["snapshots"]["stage1"]
    for name in before:
        if name in new:
            assert not torch.equal(before[name], after[name]), f"{name} did not train"
        else:
            assert torch.equal(before[name], after[name]), f"frozen {name} moved"


def test_ddp_without_the_rebuild_breaks(ddp_runs):
    """What the rebuild prevents: DDP still waits for the old half, and ranks drift."""
    ranks = ddp_runs["plain"]["ranks"]
    assert all("Expected to have finished reduction" in r["error"] for r in ranks)
    assert not same_on_all_ranks([r["snapshots"] for r in ranks], "stage1")


def test_redraws_that_cannot_work_are_refused_before_anything_changes(ddp_runs):
    for rank in ddp_runs["rebuild"]["ranks"]:
        refusals = rank["refusals"]
        assert refusals["unbound_callback"].startswith(
            "a redraw with several processes needs the wrapped model"
        )
        assert refusals["static_graph"].startswith(
            "an HFT redraw under DDP needs static_graph=False"
        )
        assert refusals["mask_unchanged"]
