"""The one model comparison: names and shapes, the first difference in one line."""

import pytest
import torch

from hft_plugins import HFTConfig, HFTError, select
from hft_plugins.core.reset import half_reset
from hft_plugins.core.shapes import Difference, check_same_shapes, first_difference, shapes
from hft_plugins.integrations.trl import _check_same_shapes
from hft_plugins.tiny import tiny_model

MESSAGES = {"missing": "no {name}", "shape": "{name}: {have} vs {want}", "extra": "extra {name}"}


def test_shapes_lists_every_parameter_once():
    model = tiny_model("llama", tie_word_embeddings=True)
    found = shapes(model)
    assert found == {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert "lm_head.weight" not in found  # tied to the embeddings: named once


def test_first_difference_in_order_then_extra():
    want = {"a": (2, 3), "b": (4,), "c": (1,)}
    assert first_difference(dict(want), want) is None
    assert first_difference({"a": (2, 3), "c": (1,)}, want) == Difference("b", None, (4,))
    assert first_difference({"a": (3, 2), "b": (5,)}, want) == Difference("a", (3, 2), (2, 3))
    more = {**want, "z": (1,), "y": (2,)}
    assert first_difference(more, want) == Difference("y", (2,), None)
    assert first_difference(more, want, extra=False) is None


@pytest.mark.parametrize(
    "have, message",
    [
        ({"a": (2, 3)}, "no 'b'"),
        ({"a": (2, 3), "b": (5,)}, "'b': [5] vs [4]"),
        ({"a": (2, 3), "b": (4,), "q": (1,)}, "extra 'q'"),
    ],
)
def test_check_same_shapes_raises_one_line_naming_the_first_difference(have, message):
    with pytest.raises(HFTError) as info:
        check_same_shapes(have, {"a": (2, 3), "b": (4,)}, **MESSAGES)
    assert str(info.value) == message


def test_extra_parameters_are_allowed_without_a_message():
    check_same_shapes({"a": (1,), "x": (2,)}, {"a": (1,)}, missing="m", shape="s")


def test_the_three_users_name_the_first_difference():
    small, big = tiny_model("llama", intermediate_size=48), tiny_model("llama")
    name = "'model.layers.0.mlp.gate_proj.weight'"
    with pytest.raises(HFTError) as info:
        select(big, HFTConfig()).check(small)
    assert str(info.value) == (
        f"mask does not match the model: parameter {name} has shape [48, 32], "
        "the mask expects [64, 32]"
    )
    with pytest.raises(HFTError) as info:
        _check_same_shapes(big, small)
    assert str(info.value) == (
        f"ref_model does not match the policy: {name} has shape [48, 32], the policy's is [64, 32]"
    )
    with pytest.raises(HFTError) as info:
        half_reset(small, big, select(big, HFTConfig()))
    assert str(info.value) == f"base and tuned models differ at {name}: [48, 32] vs [64, 32]"
    with torch.no_grad():
        extra = tiny_model("llama")
        extra.register_parameter("more", torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(
        HFTError, match="ref_model does not match the policy: extra parameter 'more'"
    ):
        _check_same_shapes(big, extra)
    with pytest.raises(HFTError, match="parameter 'more' is not in it"):
        select(big, HFTConfig()).check(extra)
