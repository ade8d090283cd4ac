"""The chat-model benchmark on the real model (SmolLM2-135M-Instruct), a step at a time.

The probes are built from the real base (its own greedy answers, the facts it knows); a
DPO step of HFT through the harness's loop leaves the frozen half bit-identical and moves
every trainable tensor; one step per stage of the sequence yields a record per stage with
every metric.
"""

import copy

import pytest
import torch
from hft_bench import methods
from hft_bench.chat_evidence import probes, runs, tasks
from hft_bench.chat_evidence.experiment import Grid, setup
from hft_bench.evidence.corpus import build_corpus

from hft_plugins import HFTConfig, select
from tests.helpers import require_real_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def su():
    """The set-up on the real model, with a third of each probe set: every scoring pass is
    the real one on fewer items."""
    require_real_model()
    from hft_bench import chat_eval
    from hft_bench.real_model import load

    torch.set_num_threads(1)  # a second thread mostly waits on a shared machine
    grid = Grid(methods=["fft", "hft-category"], lrs=[1e-5], steps=[1], sequence_lrs=[1e-5],
                sequence_steps=1, batch_size=2, heldout=4, answer_tokens=32)  # fmt: skip
    base, tokenizer = load(progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probes, "DRIFT_PROMPTS", probes.DRIFT_PROMPTS[:4])
        mp.setattr(probes, "TEXT_PASSAGES", 6)
        mp.setattr(chat_eval, "FACTS", chat_eval.FACTS[:6])
        yield setup(base, tokenizer, build_corpus(), grid, model_name="smollm2",
                    log=lambda m: None)  # fmt: skip


def test_the_real_base_gives_its_probes(su):
    info, base = su.info, su.base_scores
    assert info["facts_known"] >= 4 and 0 < info["base_ended_turn"] <= info["drift_prompts"] == 4
    assert base["facts_choice"] == 1.0  # it knows what it gets right, among four choices
    # its own answers are its likeliest text; a new task's answers are not
    assert base["drift_nll"] < 1.0 < base["task_nll/define"]
    assert base["pref_acc/kind-of"] > 0.5 and base["text_nll"] > base["drift_nll"]


def test_an_hft_dpo_step_keeps_the_frozen_half_and_moves_the_rest(su):
    model = copy.deepcopy(su.model)
    rows = runs.dpo_rows(model, su.rows["kind-of"][:2], su.probes.pad)
    rows, loop = runs.loop_options(su, "dpo", "hft-category", rows)
    mask = select(model, HFTConfig(seed=0, stage=1))
    methods.run_stage("hft-category", model, rows, steps=1, lr=1e-4, seed=0, stage=1,
                      batch_size=2, **loop)  # fmt: skip
    plan = mask.params()
    base = dict(su.model.named_parameters())
    moved = 0
    for name, param in model.named_parameters():
        if name in plan:
            assert plan[name] is None, name  # no fused tensors: whole tensors train
            assert not torch.equal(param, base[name]), name
            moved += param.numel()
        else:
            assert torch.equal(param, base[name]), name
    assert moved == mask.trainable_numel


def test_one_step_a_stage_records_every_metric(su):
    recs = runs.run_sequence(su, domains=list(tasks.SEQUENCE), method="fft", lr=1e-5, steps=1,
                             seed=0)  # fmt: skip
    assert [r["domain"] for r in recs] == list(tasks.SEQUENCE)
    for r in recs:
        assert not r["diverged"] and r["drift_nll"] != su.base_scores["drift_nll"]
    assert set(su.base_scores) <= set(recs[-1])
