"""The ``optim=`` names users pick in TRL and Axolotl: each works with HFT, the frozen half
bit-identical, or is refused in one line before training.

8-bit and paged optimizers run through bitsandbytes' CPU build (paged falls back to
unpaged memory on CPU, with bitsandbytes' own warning). A tiny phi3 with wider layers so
that fused gate/up row slices and whole matrices exceed bitsandbytes' 4096-element
threshold for 8-bit state.
"""

import pytest
import torch

from hft_plugins import HFTConfig, HFTError
from hft_plugins.integrations.transformers import HFTTrainer
from hft_plugins.testing import tiny_model
from tests.helpers import assert_half_trained, lm_dataset, snapshot, training_args

WORK = [
    "adamw_torch",
    "adamw_torch_fused",
    "adafactor",
    "sgd",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "lion_8bit",
]
SCHEDULE_FREE = ["schedule_free_adamw", "schedule_free_sgd", "schedule_free_radam"]


def model():
    return tiny_model("phi3", hidden_size=64, intermediate_size=128)


def _state_dtypes(optimizer, tensor) -> set:
    return {v.dtype for v in optimizer.inner.state[tensor].values() if torch.is_tensor(v)}


@pytest.mark.parametrize("optim", WORK)
def test_optim_name_trains_the_half_and_leaves_the_frozen_half_exact(optim, tmp_path):
    if "8bit" in optim:
        pytest.importorskip("bitsandbytes")
    net = model()
    before = snapshot(net)
    trainer = HFTTrainer(
        model=net,
        args=training_args(tmp_path, max_steps=3, optim=optim),
        train_dataset=lm_dataset(),
        hft_config=HFTConfig(),
    )
    trainer.train()
    opt = trainer.hft_optimizer
    assert any(s is not None for s in trainer.hft_mask.params().values())  # fused row slices
    assert_half_trained(trainer.hft_mask, before, net)
    if "8bit" in optim:
        assert type(opt.inner).__module__.startswith("bitsandbytes")
        embed = net.model.embed_tokens.weight
        big = [t for t in opt.inner.state if t.numel() >= 4096 and t is not embed]
        assert big and all(torch.uint8 in _state_dtypes(opt, t) for t in big)  # 8-bit state
        assert any(t._base is not None for t in big)  # fused gate/up slices among them
        # as the Trainer does: embeddings keep 32-bit state under an 8-bit optimizer
        assert embed.numel() >= 4096 and _state_dtypes(opt, embed) == {torch.float32}


def test_an_8bit_optimizer_resumes_bit_identically(tmp_path):
    pytest.importorskip("bitsandbytes")

    def run(out, resume=None):
        net = model()
        trainer = HFTTrainer(
            model=net,
            args=training_args(
                out, optim="adamw_bnb_8bit", max_steps=4, save_strategy="steps", save_steps=2
            ),
            train_dataset=lm_dataset(),
        )
        trainer.train(resume_from_checkpoint=resume)
        return net

    full = run(tmp_path / "full")
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-2"))
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("optim", SCHEDULE_FREE)
def test_schedule_free_is_refused_before_training(optim, tmp_path):
    with pytest.raises(HFTError) as err:
        HFTTrainer(
            model=model(),
            args=training_args(tmp_path, max_steps=3, optim=optim),
            train_dataset=lm_dataset(),
            hft_config=HFTConfig(),
        )
    message = str(err.value)
    assert message.startswith(f"HFT cannot wrap schedule-free optimizers (optim='{optim}' gives")
    assert "\n" not in message


def test_a_schedule_free_class_in_optimizer_cls_and_kwargs_is_refused(tmp_path):
    schedulefree = pytest.importorskip("schedulefree")
    with pytest.raises(HFTError, match="HFT cannot wrap schedule-free optimizers"):
        HFTTrainer(
            model=model(),
            args=training_args(tmp_path, max_steps=3),
            train_dataset=lm_dataset(),
            optimizer_cls_and_kwargs=(schedulefree.AdamWScheduleFree, {"lr": 1e-3}),
            hft_config=HFTConfig(),
        )


def test_trl_takes_an_8bit_optimizer(tmp_path):
    pytest.importorskip("bitsandbytes")
    from trl import SFTConfig

    from hft_plugins.integrations.trl import HFTSFTTrainer
    from hft_plugins.testing import tiny_tokenizer
    from tests.helpers import CPU_NO_CHECKPOINTING, sft_data

    net = model()
    before = snapshot(net)
    trainer = HFTSFTTrainer(
        model=net,
        args=SFTConfig(
            output_dir=str(tmp_path), max_steps=2, optim="lion_8bit", **CPU_NO_CHECKPOINTING
        ),
        train_dataset=sft_data(),
        processing_class=tiny_tokenizer(),
        hft_config=HFTConfig(),
    )
    trainer.train()
    assert type(trainer.hft_optimizer.inner).__name__ == "Lion"
    assert_half_trained(trainer.hft_mask, before, net)


@pytest.mark.parametrize("optim", WORK)
def test_optim_name_keeps_gpt2s_frozen_column_slices(optim, tmp_path):
    """Column slices (GPT-2's c_attn) are non-contiguous: fused and 8-bit kernels step a
    contiguous copy, never the frozen columns beside them."""
    if "8bit" in optim:
        pytest.importorskip("bitsandbytes")
    net = tiny_model("gpt2", n_embd=64)
    before = snapshot(net)
    trainer = HFTTrainer(
        model=net,
        args=training_args(tmp_path, max_steps=3, optim=optim),
        train_dataset=lm_dataset(),
        hft_config=HFTConfig(),
    )
    trainer.train()
    assert any(s is not None and s.dim == 1 for s in trainer.hft_mask.params().values())
    assert_half_trained(trainer.hft_mask, before, net)
