"""HFTTrainer and HFTCallback on the real transformers Trainer, on CPU with a tiny llama."""

import pytest
import torch
from transformers import Trainer

from hft_plugins import HFTConfig, HFTError, HFTOptimizer, select
from hft_plugins.core import sliced_grad
from hft_plugins.integrations.transformers import HFTCallback, HFTTrainer, unwrap_optimizer
from hft_plugins.testing import tiny_model
from tests.helpers import assert_half_trained, lm_dataset, mark_as_gguf, snapshot, training_args


def test_trains_only_the_half_and_logs_the_fraction(tmp_path):
    model = tiny_model("llama")
    config = HFTConfig(seed=3)
    before = snapshot(model)
    trainer = HFTTrainer(
        model=model,
        args=training_args(tmp_path, adam_beta1=0.8, adam_beta2=0.99, adam_epsilon=1e-6),
        train_dataset=lm_dataset(),
        hft_config=config,
    )
    trainer.train()
    opt = trainer.hft_optimizer
    assert isinstance(opt, HFTOptimizer) and isinstance(opt.inner, torch.optim.AdamW)
    assert opt.mask == select(model, config)
    defaults = opt.inner.defaults
    assert (defaults["lr"], defaults["betas"], defaults["eps"]) == (1e-2, (0.8, 0.99), 1e-6)
    assert [g["weight_decay"] for g in opt.inner.param_groups] == [0.1, 0.0]
    assert_half_trained(opt.mask, before, model)
    done, total = opt.mask.fractions()["total"]
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged and all(e["hft_trainable_fraction"] == done / total for e in logged)
    assert all(e["hft_stage"] == 0 for e in logged)


# row slices; column slices (c_attn); 3-D routed experts' gate_up_proj
@pytest.mark.parametrize("family", ["phi3", "gpt2", "mixtral"])
def test_fused_tensors_keep_their_frozen_slices_and_get_the_sliced_backward(tmp_path, family):
    """Under the Trainer's default optimizer (adamw_torch_fused) too."""
    model = tiny_model(family)
    before = snapshot(model)
    trainer = HFTTrainer(
        model=model,
        args=training_args(tmp_path),
        train_dataset=lm_dataset(),
        hft_config=HFTConfig(),
    )
    trainer.train()
    sliced = {n: s for n, s in trainer.hft_mask.params().items() if s is not None}
    installed = sliced_grad.installed(model)
    # every partly trained weight gets it (biases keep the optimizer's hook)
    weights = {n: s for n, s in sliced.items() if "bias" not in n.rpartition(".")[2]}
    assert installed and installed == weights
    assert_half_trained(trainer.hft_mask, before, model)


def test_next_stage_redraws_between_train_calls(tmp_path):
    model = tiny_model("llama")
    trainer = HFTTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=2),
        train_dataset=lm_dataset(),
        hft_config=HFTConfig(),
    )
    trainer.train()
    first = trainer.hft_mask
    trainer.next_stage()
    before = snapshot(model)
    trainer.train()
    second = trainer.hft_mask
    assert second.config.stage == 1 and second.trainable != first.trainable
    assert unwrap_optimizer(trainer.optimizer).mask == second
    assert_half_trained(second, before, model)


def test_every_epoch_redraw(tmp_path):
    model = tiny_model("llama")
    trainer = HFTTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=-1, num_train_epochs=3),  # 4 steps per epoch
        train_dataset=lm_dataset(),
        hft_config=HFTConfig(),
        callbacks=[HFTCallback(redraw_every_epoch=True)],
    )
    trainer.train()
    stages = [e["hft_stage"] for e in trainer.state.log_history if "loss" in e]
    assert stages == [0] * 4 + [1] * 4 + [2] * 4
    assert trainer.hft_mask == select(model, HFTConfig(stage=2))
    # the next stage follows the stage the epoch redraws reached, not the starting config
    assert trainer.next_stage() == HFTConfig(stage=3)
    assert trainer.hft_mask == select(model, HFTConfig(stage=3))


def _run(tmp_path, resume=None, **kw):
    model = tiny_model("llama")
    trainer = HFTTrainer(
        model=model,
        args=training_args(
            tmp_path,
            **{
                "max_steps": -1,
                "num_train_epochs": 3,
                "save_strategy": "steps",
                "save_steps": 2,
                **kw,
            },
        ),
        train_dataset=lm_dataset(),
        hft_config=HFTConfig(),
        callbacks=[HFTCallback(redraw_every_epoch=True)],
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer, model


@pytest.mark.parametrize("step", [4, 6])
def test_resume_is_bit_identical(tmp_path, step):
    _, full = _run(tmp_path / "full")
    # checkpoint-6 lies mid-way through epoch 2 (stage 1): resuming must redraw to that mask;
    # checkpoint-4 ends epoch 1 (stage 0): the resumed run must redraw to stage 1 itself
    trainer, resumed = _run(
        tmp_path / "resumed", resume=str(tmp_path / "full" / f"checkpoint-{step}")
    )
    assert trainer.hft_mask.config.stage == 2
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_resume_with_a_mask_of_another_model_is_refused(tmp_path):
    _run(tmp_path / "full", max_steps=2)
    ckpt = tmp_path / "full" / "checkpoint-2"
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)
    other = tiny_model("llama", intermediate_size=48)
    state["mask"] = select(other, HFTConfig()).to_json()
    torch.save(state, ckpt / "optimizer.pt")
    with pytest.raises(HFTError, match="mask does not match the model") as err:
        _run(tmp_path / "again", resume=str(ckpt), max_steps=4)
    assert "\n" not in str(err.value)


def test_resume_from_a_plain_optimizer_checkpoint_is_refused(tmp_path):
    plain = Trainer(
        model=tiny_model(),
        args=training_args(tmp_path / "plain", max_steps=2, save_strategy="steps", save_steps=2),
        train_dataset=lm_dataset(),
    )
    plain.train()
    with pytest.raises(HFTError, match="not an HFT optimizer state"):
        _run(tmp_path / "hft", resume=str(tmp_path / "plain" / "checkpoint-2"), max_steps=4)


def test_bad_hft_config_type(tmp_path):
    with pytest.raises(HFTError, match="hft_config must be an hft_plugins.HFTConfig, got dict"):
        HFTTrainer(
            model=tiny_model(),
            args=training_args(tmp_path),
            train_dataset=lm_dataset(),
            hft_config={},
        )


def test_a_plain_optimizer_is_refused(tmp_path):
    model = tiny_model()
    plain = torch.optim.AdamW(model.parameters())
    with pytest.raises(HFTError, match="HFTTrainer needs an HFTOptimizer"):
        HFTTrainer(
            model=model,
            args=training_args(tmp_path),
            train_dataset=lm_dataset(),
            optimizers=(plain, None),
            hft_config=HFTConfig(),
        )


def test_a_user_hft_optimizer_is_used(tmp_path):
    model = tiny_model()
    mask = select(model, HFTConfig(seed=5))
    opt = HFTOptimizer(model, mask, torch.optim.SGD, lr=0.1)
    before = snapshot(model)
    trainer = HFTTrainer(
        model=model,
        args=training_args(tmp_path),
        train_dataset=lm_dataset(),
        optimizers=(opt, None),
    )
    trainer.train()
    assert trainer.hft_optimizer is opt and trainer.hft_config == HFTConfig(seed=5)
    assert_half_trained(mask, before, model)
    with pytest.raises(HFTError, match="differs from the mask of the HFTOptimizer"):
        HFTTrainer(
            model=model,
            args=training_args(tmp_path),
            train_dataset=lm_dataset(),
            optimizers=(opt, None),
            hft_config=HFTConfig(seed=6),
        )


def test_optim_from_training_arguments_is_wrapped(tmp_path):
    trainer = HFTTrainer(
        model=tiny_model(),
        args=training_args(tmp_path, optim="adafactor"),
        train_dataset=lm_dataset(),
        hft_config=HFTConfig(),
    )
    trainer.create_optimizer()
    assert type(trainer.hft_optimizer.inner).__name__ == "Adafactor"


def test_an_optimizer_factory_is_refused(tmp_path):
    def factory(params, **kw):
        return torch.optim.SGD(params, lr=0.1)

    with pytest.raises(HFTError, match="HFT wraps torch optimizer classes") as err:
        HFTTrainer(  # refused when the trainer is built, not once training has started
            model=tiny_model(),
            args=training_args(tmp_path),
            train_dataset=lm_dataset(),
            optimizer_cls_and_kwargs=(factory, {}),
            hft_config=HFTConfig(),
        )
    assert "optimizer_cls_and_kwargs gives" in str(err.value) and "\n" not in str(err.value)


def test_callback_on_a_plain_trainer_needs_hft_optimizer(tmp_path):
    trainer = Trainer(
        model=tiny_model(),
        args=training_args(tmp_path),
        train_dataset=lm_dataset(),
        callbacks=[HFTCallback()],
    )
    with pytest.raises(HFTError, match="HFTCallback needs an HFTOptimizer"):
        trainer.train()


# ---- an HFTModel in the Trainer saves as an HFT save ---------------------------------------


def _hft_model_run(tmp_path, resume=None, **kw):
    from hft_plugins.integrations.peft_style import get_hft_model
    from hft_plugins.testing import tiny_tokenizer

    model = get_hft_model(tiny_model("phi3"), HFTConfig(seed=1))
    trainer = HFTTrainer(
        model=model,
        args=training_args(
            tmp_path, **{"max_steps": 4, "save_strategy": "steps", "save_steps": 2, **kw}
        ),
        train_dataset=lm_dataset(),
        processing_class=tiny_tokenizer(),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer, model


def test_an_hft_model_saves_as_an_hft_save_in_save_model_and_checkpoints(tmp_path):
    from hft_plugins.integrations.peft_style import HFTModel

    trainer, model = _hft_model_run(tmp_path / "run")
    trainer.save_model(str(tmp_path / "final"))
    for directory in (tmp_path / "run" / "checkpoint-2", tmp_path / "run" / "checkpoint-4"):
        names = {p.name for p in directory.iterdir()}
        assert {"hft_model.safetensors", "hft_config.json", "hft_mask.json"} <= names
        assert {"optimizer.pt", "trainer_state.json", "tokenizer.json"} <= names
        assert not names & {"model.safetensors", "pytorch_model.bin"}, names
        HFTModel.from_pretrained(tiny_model("phi3"), directory)
    names = {p.name for p in (tmp_path / "final").iterdir()}
    assert "model.safetensors" not in names and "tokenizer.json" in names
    restored = HFTModel.from_pretrained(tiny_model("phi3"), tmp_path / "final")
    for name, param in model.base_model.named_parameters():
        assert torch.equal(restored.base_model.get_parameter(name), param), name
    at_4 = HFTModel.from_pretrained(tiny_model("phi3"), tmp_path / "run" / "checkpoint-4")
    assert all(
        torch.equal(a, b) for a, b in zip(at_4.parameters(), model.parameters(), strict=True)
    )


def test_an_hft_model_resumes_from_its_hft_checkpoint_bit_identically(tmp_path):
    _, full = _hft_model_run(tmp_path / "full")
    _, resumed = _hft_model_run(
        tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-2")
    )
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_an_hft_model_trains_one_stage(tmp_path):
    from hft_plugins.integrations.peft_style import get_hft_model

    with pytest.raises(HFTError, match="an HFTModel trains one stage: redraw_every_epoch"):
        HFTTrainer(
            model=get_hft_model(tiny_model()),
            args=training_args(tmp_path),
            train_dataset=lm_dataset(),
            callbacks=[HFTCallback(redraw_every_epoch=True)],
        )
    trainer = HFTTrainer(
        model=get_hft_model(tiny_model()), args=training_args(tmp_path), train_dataset=lm_dataset()
    )
    with pytest.raises(HFTError, match="an HFTModel trains one stage: its save_pretrained"):
        trainer.next_stage()


def test_an_hft_model_loads_its_best_checkpoint_at_the_end(tmp_path):
    from hft_plugins.integrations.peft_style import HFTModel, get_hft_model

    model = get_hft_model(tiny_model(), HFTConfig())
    trainer = HFTTrainer(
        model=model,
        args=training_args(
            tmp_path,
            max_steps=4,
            save_strategy="steps",
            save_steps=2,
            eval_strategy="steps",
            eval_steps=2,
            load_best_model_at_end=True,
            metric_for_best_model="loss",  # it rises here, so the best is the first
        ),
        train_dataset=lm_dataset(),
        eval_dataset=lm_dataset(4, seed=1),
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and best.endswith("checkpoint-2")
    saved = HFTModel.from_pretrained(tiny_model(), best)
    assert all(
        torch.equal(a, b) for a, b in zip(saved.parameters(), model.parameters(), strict=True)
    )


def test_an_hft_model_saves_a_gathered_state_dict_and_skips_an_empty_one(tmp_path):
    """Under FSDP or ZeRO-3 the Trainer hands _save the gathered state dict; without
    gathering (stage3_gather_16bit_weights_on_model_save=false) an empty one, then writes
    a DeepSpeed checkpoint itself."""
    from hft_plugins.integrations.peft_style import HFTModel, get_hft_model

    model = get_hft_model(tiny_model(), HFTConfig())
    trainer = HFTTrainer(model=model, args=training_args(tmp_path), train_dataset=lm_dataset())
    state = {k: v + 1 for k, v in model.state_dict().items()}
    trainer._save(str(tmp_path / "gathered"), state_dict=state)
    saved = HFTModel.from_pretrained(tiny_model(), tmp_path / "gathered")
    for name in model.hft_mask.params():
        assert torch.equal(saved.base_model.get_parameter(name), state[f"base_model.{name}"])
    trainer._save(str(tmp_path / "empty"), state_dict={})
    assert not (tmp_path / "empty" / "hft_model.safetensors").exists()
    assert (tmp_path / "empty" / "training_args.bin").is_file()


def test_a_gguf_loaded_model_trains_and_saves_a_normal_checkpoint(tmp_path):
    """The Trainer refuses a GGUF-loaded model ("purely quantized"); HFTTrainer trains its
    dequantized weights and saves a checkpoint with no GGUF mark. A GGUF whose weights stay
    packed is refused in one line."""
    model = mark_as_gguf(tiny_model("llama"))
    before = snapshot(model)
    trainer = HFTTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=2),
        train_dataset=lm_dataset(),
        hft_config=HFTConfig(),
    )
    trainer.train()
    assert_half_trained(trainer.hft_mask, before, model)
    trainer.save_model(str(tmp_path / "out"))
    assert "quantization_config" not in (tmp_path / "out" / "config.json").read_text()
    packed = mark_as_gguf(tiny_model("llama"))
    packed.model.layers[0].mlp.up_proj.weight = torch.nn.Parameter(
        torch.zeros(2, dtype=torch.uint8), requires_grad=False
    )
    with pytest.raises(HFTError, match="keeps its GGUF weights quantized .torch.uint8 tensors.; "):
        HFTTrainer(model=packed, args=training_args(tmp_path), hft_config=HFTConfig())


def test_two_hft_callbacks_are_refused(tmp_path):
    with pytest.raises(HFTError) as info:
        HFTTrainer(
            model=tiny_model("llama"),
            args=training_args(tmp_path),
            train_dataset=lm_dataset(),
            hft_config=HFTConfig(),
            callbacks=[HFTCallback(redraw_every_epoch=True), HFTCallback()],
        )
    assert str(info.value) == "callbacks holds 2 HFTCallbacks; a trainer runs one: pass one"
