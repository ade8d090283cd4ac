"""One config surface: every HFTConfig field reaches the CLI, the TRL arguments and the Axolotl
keys under the same name (``hft_`` prefix outside the ``hft`` command) and with the same default;
``hft_config=None`` means HFT off; an ``hft_*`` value given while HFT is off is an error."""

import dataclasses
import warnings

import pytest
from trl import SFTConfig, TrlParser

from hft_plugins import HFTConfig, HFTError, get_hft_config
from hft_plugins.cli import build_parser
from hft_plugins.core.config import SETTINGS
from hft_plugins.integrations import trl as hft_trl
from hft_plugins.integrations.axolotl import HFTArgs, check_config
from hft_plugins.integrations.transformers import HFTTrainer
from hft_plugins.testing import tiny_model, tiny_tokenizer
from tests.helpers import lm_dataset, training_args

FIELDS = [f.name for f in dataclasses.fields(HFTConfig)]
# a value other than the default for every field
OTHER = {
    "strategy": "layer",
    "ratio": 0.25,
    "seed": 7,
    "stage": 3,
    "train_embeddings": False,
    "train_head": False,
    "train_final_norm": False,
    "guess_layout": True,
    "whole_tensors": True,
}
CONFIGS = [getattr(hft_trl, name) for name in hft_trl.__all__ if name.endswith("Config")]
CPU = ["--output_dir", "/tmp/unused", "--use_cpu", "--bf16", "false"]


def _cli_value(value) -> list[str]:
    return [str(value).lower()] if isinstance(value, bool) else [str(value)]


def test_every_field_has_a_setting_and_a_test_value():
    assert [s.field for s in SETTINGS] == FIELDS
    assert set(OTHER) == set(FIELDS)
    assert all(OTHER[f] != HFTConfig.__dataclass_fields__[f].default for f in FIELDS)


def test_cli_options_are_the_fields_with_their_defaults():
    inspect = build_parser()._subparsers._group_actions[0].choices["inspect"]
    actions = {a.dest: a for a in inspect._actions}
    for spec in dataclasses.fields(HFTConfig):
        assert actions[spec.name].default == spec.default, spec.name
        assert actions[spec.name].help == spec.metadata["help"], spec.name
        assert f"--{spec.name.replace('_', '-')}" in actions[spec.name].option_strings


@pytest.mark.parametrize("config_cls", CONFIGS, ids=lambda c: c.__name__)
def test_trl_arguments_are_the_fields_none_meaning_the_default(config_cls):
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    assert fields["hft"].default is False
    for name in FIELDS:
        spec = fields[f"hft_{name}"]
        assert spec.default is None, name  # not given: HFTConfig's default (stage: the rule)
        assert HFTConfig.__dataclass_fields__[name].metadata["help"] in spec.metadata["help"]


@pytest.mark.parametrize("name", FIELDS)
def test_each_field_from_the_trl_command_line(name):
    parse = TrlParser((hft_trl.HFTSFTConfig,)).parse_args_and_config
    (args,) = parse([*CPU, "--hft", f"--hft_{name}", *_cli_value(OTHER[name])])
    assert get_hft_config(args) == HFTConfig(**{"stage": None, name: OTHER[name]})


def test_all_fields_from_a_trl_yaml_config(tmp_path):
    lines = ["hft: true", *(f"hft_{n}: {str(v).lower()}" for n, v in OTHER.items())]
    (tmp_path / "cfg.yaml").write_text("\n".join(lines) + "\n")
    parse = TrlParser((hft_trl.HFTDPOConfig,)).parse_args_and_config
    (args,) = parse([*CPU, "--config", str(tmp_path / "cfg.yaml")])
    assert get_hft_config(args) == HFTConfig(**OTHER)


def test_bool_field_false_on_the_trl_command_line():
    """``--hft_train_embeddings false`` was "not used by the HfArgumentParser"."""
    parse = TrlParser((hft_trl.HFTSFTConfig,)).parse_args_and_config
    (args,) = parse([*CPU, "--hft", "--hft_train_embeddings", "false"])
    assert get_hft_config(args).train_embeddings is False


def test_axolotl_keys_are_the_fields():
    assert set(HFTArgs.model_fields) == {"hft", *(f"hft_{n}" for n in FIELDS)}
    assert all(spec.default is None for spec in HFTArgs.model_fields.values())
    for name in FIELDS:
        assert get_hft_config({"hft": True, f"hft_{name}": OTHER[name]}) == HFTConfig(
            **{"stage": None, name: OTHER[name]}
        )


def test_nothing_given_is_hftconfigs_default_everywhere():
    """Not given is the default; the stage is then decided by the stage rule (SFT: 0)."""
    (args,) = TrlParser((hft_trl.HFTSFTConfig,)).parse_args_and_config([*CPU, "--hft"])
    cli = build_parser().parse_args(["inspect", "tiny:llama"])
    from_cli = HFTConfig(**{n: getattr(cli, n) for n in FIELDS})
    assert from_cli == HFTConfig()
    assert get_hft_config(args) == get_hft_config({"hft": True}) == HFTConfig(stage=None)
    assert check_config({"hft": True}) == HFTConfig()  # axolotl SFT on a fresh model: stage 0


@pytest.mark.parametrize("name", FIELDS)
def test_a_trl_value_while_hft_is_off_is_a_one_line_error(name):
    parse = TrlParser((hft_trl.HFTSFTConfig,)).parse_args_and_config
    with pytest.raises(HFTError, match=f"hft_{name} is set but HFT is off: add --hft") as err:
        parse([*CPU, f"--hft_{name}", *_cli_value(OTHER[name])])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("cfg", [{"hft_ratio": 0.3}, {"hft": False, "hft_seed": 1}])
def test_an_axolotl_key_while_hft_is_off_is_a_one_line_error(cfg):
    with pytest.raises(HFTError, match="is set but HFT is off: add hft: true") as err:
        check_config(cfg)
    assert "\n" not in str(err.value)


def test_get_hft_config_is_none_when_off():
    (args,) = TrlParser((hft_trl.HFTSFTConfig,)).parse_args_and_config(CPU)
    assert get_hft_config(args) is None
    assert get_hft_config(SFTConfig(output_dir="/tmp/unused", use_cpu=True, bf16=False)) is None


def _sft(tmp_path, **kw):
    return hft_trl.HFTSFTTrainer(
        model=tiny_model(),
        args=SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[]),
        train_dataset=lm_dataset(),
        processing_class=tiny_tokenizer(),
        **kw,
    )


def test_hft_config_none_is_off(tmp_path):
    """``peft_config=get_peft_config(args)`` style: None is the plain trainer, silently."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no hft_config")
        trainer = _sft(tmp_path, hft_config=None)
    assert trainer.hft_config is None
    assert all(p.requires_grad for p in trainer.model.parameters())
    args = training_args(tmp_path)
    plain = HFTTrainer(model=tiny_model(), args=args, train_dataset=lm_dataset(), hft_config=None)
    assert plain.hft_config is None and plain.hft_callback is None


def test_no_hft_config_at_all_warns_that_hft_is_off(tmp_path):
    args = training_args(tmp_path)
    with pytest.warns(UserWarning, match="HFTTrainer got no hft_config: HFT is off"):
        trainer = HFTTrainer(model=tiny_model(), args=args, train_dataset=lm_dataset())
    assert trainer.hft_config is None
    with pytest.warns(UserWarning, match="HFTSFTTrainer got no hft_config"):
        _sft(tmp_path)


def test_hft_config_and_hft_arguments_must_agree(tmp_path):
    args = hft_trl.HFTSFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, hft=True)
    with pytest.raises(HFTError, match="hft_config differs from the --hft_\\* arguments"):
        hft_trl.HFTSFTTrainer(
            model=tiny_model(),
            args=args,
            train_dataset=lm_dataset(),
            processing_class=tiny_tokenizer(),
            hft_config=HFTConfig(seed=3),
        )
    same = hft_trl.HFTSFTTrainer(
        model=tiny_model(),
        args=args,
        train_dataset=lm_dataset(),
        processing_class=tiny_tokenizer(),
        hft_config=get_hft_config(args),
    )
    assert same.hft_config == HFTConfig()
