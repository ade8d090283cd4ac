import json

import pytest
import torch
from hft_bench import model

from hft_plugins import HFTError


def _same(a, b):
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_cached_base_is_reused_with_its_checksum(quick_base, capsys):
    weights, record = model.base_paths()
    meta = json.loads(record.read_text())
    assert meta["sha256"] == model._sha256(weights)
    again = model.load_base()
    assert _same(again, quick_base)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "bad_record"])
def test_corrupt_cache_is_reported_and_rebuilt_never_used(quick_base, capsys, damage):
    weights, record = model.base_paths()
    good = weights.read_bytes()
    if damage == "flip_byte":
        data = bytearray(good)
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(good[:100])
    else:
        record.write_text("{not json")
    rebuilt = model.load_base()
    err = capsys.readouterr().err
    assert "corrupt" in err and "rebuilding" in err and err.count("\n") == 1
    assert weights.read_bytes() == good  # training is deterministic: the same base again
    assert _same(rebuilt, quick_base)


def test_unwritable_cache_dir_is_one_line_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("HFT_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(HFTError, match="not writable") as err:
        model.load_base()
    assert "\n" not in str(err.value)
