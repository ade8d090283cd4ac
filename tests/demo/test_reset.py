import pytest
import torch

from hft_plugins import HFTConfig, HFTError, select
from hft_plugins.reset import half_reset
from hft_plugins.tiny import tiny_model


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2"])
def test_frozen_parts_return_to_base_and_trained_parts_stay(family):
    base, tuned = tiny_model(family, seed=0), tiny_model(family, seed=1)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(1.0)  # norms start equal in both; make every tensor differ
    tuned_before = {n: p.detach().clone() for n, p in tuned.named_parameters()}
    mask = select(tuned, HFTConfig(seed=3))
    assert half_reset(base, tuned, mask) is tuned
    plan = mask.params()
    base_p = dict(base.named_parameters())
    for name, param in tuned.named_parameters():
        if name not in plan:
            assert torch.equal(param, base_p[name]), name
        elif plan[name] is None:
            assert torch.equal(param, tuned_before[name]), name
        else:
            kept = torch.zeros(param.shape[plan[name].dim], dtype=torch.bool)
            for a, b in plan[name].ranges:
                kept[a:b] = True
            idx_kept, idx_reset = kept.nonzero()[:, 0], (~kept).nonzero()[:, 0]
            d = plan[name].dim
            assert torch.equal(
                param.index_select(d, idx_kept), tuned_before[name].index_select(d, idx_kept)
            )
            assert torch.equal(
                param.index_select(d, idx_reset), base_p[name].index_select(d, idx_reset)
            )


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
