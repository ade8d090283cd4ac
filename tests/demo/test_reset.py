import pytest
import torch

from hft_plugins import HFTConfig, HFTError, select
from hft_plugins.core.reset import half_reset
from hft_plugins.tiny import tiny_model


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2"])
def test_drawn_block_half_returns_to_base_and_the_rest_stays_tuned(family):
    """Slices of fused tensors (phi3 qkv/gate_up, gpt2 c_attn) are reset slice by slice."""
    base, tuned = tiny_model(family, seed=0), tiny_model(family, seed=1)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(1.0)  # norms start equal in both; make every tensor differ
    before = {n: p.detach().clone() for n, p in tuned.named_parameters()}
    mask = select(tuned, HFTConfig(seed=3))
    assert half_reset(base, tuned, mask) is tuned
    base_p, tuned_p = dict(base.named_parameters()), dict(tuned.named_parameters())
    reset_numel = 0
    for unit in mask.partition.units:
        to_base = unit.block is not None and unit.key in mask.trainable
        for part in unit.parts:
            got, want = tuned_p[part.param], (base_p if to_base else before)[part.param]
            for a, b in part.ranges or [(0, got.shape[part.dim])]:
                d = part.dim
                assert torch.equal(got.narrow(d, a, b - a), want.narrow(d, a, b - a)), unit.key
        reset_numel += unit.numel if to_base else 0
    done, total = mask.fractions()["blocks"]
    assert reset_numel == done and 0.4 < done / total < 0.6


def test_shape_mismatch_names_the_parameter():
    base = tiny_model("llama", seed=0, intermediate_size=48)
    tuned = tiny_model("llama", seed=1)
    with pytest.raises(HFTError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight") as err:
        half_reset(base, tuned, select(tuned))
    assert "\n" not in str(err.value)


def test_mask_of_another_model_is_refused():
    small = tiny_model("llama", seed=0, num_hidden_layers=2)
    with pytest.raises(HFTError, match="mask does not match"):
        half_reset(tiny_model("llama"), tiny_model("llama"), select(small))
