"""The census of the transformers zoo (scripts/census.py): the targets, and that it can fail.

The slow tests run the whole census (a few minutes on 2 cores) and hold the layout
work to its targets: no type `failed`, at least 95% of the built decoder-only types
`supported`, every built MoE family `supported`. The fast tests check that the census
catches each kind of broken invariant on a tiny model, and that its tiny configs
keep both kinds of block where a family mixes them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "census.py"


def _load():
    spec = importlib.util.spec_from_file_location("hft_census", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


census = _load()


# ---- the targets (the whole zoo) -------------------------------------------------


@pytest.fixture(scope="module")
def records():
    return census.run(jobs=2)


def _show(rows) -> str:
    return "\n".join(f"{r['type']}: {r['status']} {r.get('message', '')}" for r in rows)


@pytest.mark.slow
@pytest.mark.census
def test_census_no_type_failed(records):
    failed = [r for r in records if r["status"] == "failed"]
    assert not failed, f"{len(failed)} types failed:\n{_show(failed)}"


@pytest.mark.slow
@pytest.mark.census
def test_census_supports_95_percent_of_built_decoders(records):
    built = [r for r in records if r["kind"] == "decoder" and r["status"] != "not built"]
    other = [r for r in built if r["status"] != "supported"]
    assert built and len(other) <= 0.05 * len(built), (
        f"{len(built) - len(other)}/{len(built)} built decoder-only types supported:\n{_show(other)}"
    )


@pytest.mark.slow
@pytest.mark.census
def test_census_supports_every_built_moe_family(records):
    moe = [r for r in records if r.get("moe") and r["status"] != "not built"]
    other = [r for r in moe if r["status"] != "supported"]
    assert moe and not other, f"MoE types not supported:\n{_show(other)}"


# ---- the census can fail ---------------------------------------------------------


@pytest.fixture
def one(monkeypatch):
    """Run the census of llama in this process, ``partition`` changed by ``edit``."""
    import hft_plugins.core.mask as mask_module
    from hft_plugins.core.partition import partition

    def run(edit=None, model_type="llama"):
        if edit is not None:
            monkeypatch.setattr(
                mask_module, "partition", lambda model, **kw: edit(partition(model, **kw))
            )
        row = next(r for r in census.zoo() if r[0] == model_type)
        return census.census_one(*row)

    return run


def _replace_units(partitioned, units):
    return dataclasses.replace(partitioned, units=units)


def test_census_supports_llama(one):
    record = one()
    assert record["status"] == "supported", record
    assert record["layout"] == "llama" and record["blocks"] == census.LAYERS
    assert record["block_fraction"] == 0.5


def test_census_catches_an_element_in_no_unit(one):
    def drop(partitioned):
        units = [u for u in partitioned.units if u.key != "block.1.mlp.down_proj"]
        return _replace_units(partitioned, units)

    record = one(drop)
    assert record["status"] == "failed"
    assert (
        "1 params with elements in no unit, e.g. model.layers.1.mlp.down_proj.weight (8192 of 8192)"
        in record["message"]
    )


def test_census_catches_an_element_in_two_units(one):
    def twice(partitioned):
        unit = next(u for u in partitioned.units if u.key == "block.0.self_attn.q_proj")
        part = dataclasses.replace(unit.parts[0], ranges=((0, 8),))
        extra = dataclasses.replace(unit, key="block.0.extra", parts=(part,), numel=8 * 64)
        return _replace_units(partitioned, [*partitioned.units, extra])

    record = one(twice)
    assert record["status"] == "failed"
    assert (
        "1 params with elements in several units, e.g. model.layers.0.self_attn.q_proj.weight (512 of 4096)"
        in record["message"]
    )


def test_census_catches_a_block_param_outside_the_blocks(one):
    def outer(partitioned):
        units = [
            dataclasses.replace(u, block=None, category="head") if u.key.endswith("o_proj") else u
            for u in partitioned.units
        ]
        return _replace_units(partitioned, units)

    record = one(outer)
    assert record["status"] == "failed"
    assert (
        "4 params in outer units, e.g. model.layers.0.self_attn.o_proj.weight" in record["message"]
    )


def test_census_catches_category_other(one):
    def other(partitioned):
        units = [
            dataclasses.replace(u, category="other") if u.name == "input_layernorm" else u
            for u in partitioned.units
        ]
        return _replace_units(partitioned, units)

    record = one(other)
    assert record["status"] == "failed"
    assert "block units of category 'other'" in record["message"]


def test_census_catches_a_fraction_off_the_ratio(one, monkeypatch):
    from hft_plugins.core import catalog

    def everything(name):
        return lambda partition, config, rng: {u.key for u in partition.block_units()}

    monkeypatch.setattr(catalog, "strategy", everything)
    record = one()
    assert record["status"] == "failed" and record["block_fraction"] == 1.0
    assert "block fraction 1.0000, not within 0.05 of 0.5" in record["message"]


def test_census_catches_a_frozen_element_that_moved(one, monkeypatch):
    from hft_plugins.core import optim

    step = optim.HFTOptimizer.step

    def leaky(self, closure=None):
        out = step(self, closure)
        plan = self.mask.params()
        frozen = next(p for n, p in self.model.named_parameters() if n not in plan)
        frozen.data.add_(1e-3)
        return out

    monkeypatch.setattr(optim.HFTOptimizer, "step", leaky)
    record = one()
    assert record["status"] == "failed"
    assert "foreach: 1 frozen params changed, e.g. model.layers.0.self_attn" in record["message"]


def test_census_catches_nothing_trained(one, monkeypatch):
    from hft_plugins.core import optim

    monkeypatch.setattr(optim.HFTOptimizer, "step", lambda self, closure=None: None)
    record = one()
    assert record["status"] == "failed"
    assert "no trainable element moved" in record["message"]


def test_census_calls_a_raw_exception_failed_and_hfterror_refused(one):
    from hft_plugins import HFTError

    def raw(layout):
        raise KeyError("mlp.gate_proj")

    record = one(raw)
    assert record["status"] == "failed" and "KeyError" in record["message"]

    def refuse(layout):
        raise HFTError("no transformer blocks found")

    record = one(refuse)
    assert record == {
        **record,
        "status": "refused",
        "message": "HFTError: no transformer blocks found",
    }


def test_census_calls_a_model_that_does_not_run_not_built(monkeypatch):
    def broken(model_type, class_name):
        raise ImportError("needs timm")

    monkeypatch.setattr(census, "build", broken)
    record = census.census_one("llama", "decoder", "LlamaForCausalLM")
    assert record["status"] == "not built" and record["message"] == "ImportError: needs timm"


def test_census_diff_lists_new_gone_and_changed_types():
    baseline = {
        "types": [
            {"type": "llama", "status": "supported"},
            {"type": "ergo", "status": "refused"},
            {"type": "old", "status": "supported"},
        ]
    }
    records = [
        {"type": "llama", "status": "supported"},
        {"type": "ergo", "status": "supported", "message": ""},
        {"type": "newer", "status": "refused", "message": "HFTError: no transformer blocks"},
    ]
    assert census.diff_lines(records, baseline) == [
        "changed ergo: refused -> supported",
        "new type newer: refused HFTError: no transformer blocks",
        "type gone old (was supported)",
    ]


# ---- the tiny configs -------------------------------------------------------------


def test_kinds_kept_cuts_a_pattern_and_keeps_every_kind():
    assert census._kinds_kept(["s"] * 5 + ["f"], 4) == ["s", "s", "s", "f"]
    assert census._kinds_kept(["a", "b", "c", "a", "b", "c", "d"], 4) == ["a", "b", "c", "d"]
    assert census._kinds_kept(["x"] * 8, 4) == ["x"] * 4


@pytest.mark.parametrize(
    "model_type, check",
    [
        ("gemma3_text", lambda c: set(c.layer_types) == {"sliding_attention", "full_attention"}),
        ("qwen2_moe", lambda c: c.mlp_only_layers == [0] and c.num_experts == census.EXPERTS),
        ("deepseek_v3", lambda c: c.first_k_dense_replace == 1 and c.n_routed_experts == 4),
        ("jamba", lambda c: c.attn_layer_period == 2 and c.expert_layer_period == 2),
        ("llama4_text", lambda c: c.moe_layers == [1, 3] and len(c.layer_types) == 4),
        ("deepseek_v2", lambda c: c.first_k_dense_replace == 1),
        ("lfm2", lambda c: c.full_attn_idxs == [0, 1, 2, 3]),
        ("gpt2", lambda c: (c.n_layer, c.n_embd, c.n_head, c.vocab_size) == (4, 64, 4, 128)),
    ],
)
def test_tiny_config_is_small_and_mixed(model_type, check):
    config = census.tiny_config(model_type)
    assert check(config), config
    assert all(
        v < census.VOCAB
        for k, v in vars(config).items()
        if k.endswith("token_id") and isinstance(v, int)
    )
