import math

import pytest

from hft_plugins import HFTConfig, HFTError


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, math.nan, "0.5", True])
def test_bad_ratio_is_one_line_error(ratio):
    with pytest.raises(HFTError, match="ratio") as err:
        HFTConfig(ratio=ratio)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("field", "value"),
    # stage=None is "not given", for a trainer to decide (test below)
    [(f, v) for f in ("seed", "stage") for v in (-1, 1.5, "3", None) if (f, v) != ("stage", None)],
)
def test_seed_and_stage_must_be_non_negative_ints(field, value):
    with pytest.raises(HFTError, match=field):
        HFTConfig(**{field: value})


def test_stage_none_is_for_trainers_to_decide():
    """stage=None means "not given"; select() and next_stage() need a number."""
    from hft_plugins import select
    from hft_plugins.testing import tiny_model

    config = HFTConfig(stage=None)
    with pytest.raises(HFTError, match=r"select\(\) needs a stage number") as err:
        select(tiny_model(), config)
    assert "\n" not in str(err.value)
    with pytest.raises(HFTError, match=r"next_stage\(\) needs a stage number"):
        config.next_stage()


def test_next_stage_and_dict_round_trip():
    config = HFTConfig(strategy="layer", ratio=0.4, seed=3, stage=1)
    assert config.next_stage().stage == 2
    assert config.next_stage().seed == 3
    assert HFTConfig.from_dict(config.to_dict()) == config


def test_unknown_key_names_it():
    with pytest.raises(HFTError, match="'ratoi'"):
        HFTConfig.from_dict({"ratoi": 0.5})
