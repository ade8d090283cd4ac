import math

import pytest

from hft_plugins import HFTConfig, HFTError


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, math.nan, "0.5", True])
def test_bad_ratio_is_one_line_error(ratio):
    with pytest.raises(HFTError, match="ratio") as err:
        HFTConfig(ratio=ratio)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("field", ["seed", "stage"])
@pytest.mark.parametrize("value", [-1, 1.5, "3", None])
def test_seed_and_stage_must_be_non_negative_ints(field, value):
    with pytest.raises(HFTError, match=field):
        HFTConfig(**{field: value})


def test_next_stage_and_dict_round_trip():
    config = HFTConfig(strategy="layer", ratio=0.4, seed=3, stage=1)
    assert config.next_stage().stage == 2
    assert config.next_stage().seed == 3
    assert HFTConfig.from_dict(config.to_dict()) == config


def test_unknown_key_names_it():
    with pytest.raises(HFTError, match="'ratoi'"):
        HFTConfig.from_dict({"ratoi": 0.5})
