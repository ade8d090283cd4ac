"""Fused projections split into the right logical matrices, checked by what the model computes.

Reading a family's forward tells how its fused tensor splits; these tests check that the
units named q, k, v (or gate, up) really are those matrices. Attention logits depend on q
and k only through q.k, so scaling the unit named q by 2 and the one named k by 1/2 must
leave the model's output unchanged (to float64 rounding), while scaling q alone must not;
scaling v by 2 and the output projection's weight by 1/2 must leave it unchanged, v alone
not; likewise up by 2 and down's weight by 1/2 in a GLU feed-forward, gate by 2 not. Per
head (the first key/value group's q heads with its k head) the same holds, which pins the
head order too; where k has a bias and no rotary embedding, shifting k's bias leaves the
softmax unchanged and shifting q's does not, which tells q from k. A wrong split (a slice
of k inside "q", per-head interleaving read as thirds) breaks at least one of these.

:func:`assert_split_functional` is the one helper; every family below (and the built-in
GPT-2, Phi-3 and GPT-NeoX splits) calls it through :data:`CASES`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import torch
import transformers as tf
from torch import nn

from hft_plugins import HFTConfig, select
from hft_plugins.core.partition import partition
from hft_plugins.core.units import Partition, Unit
from hft_plugins.tiny import tiny_model

# ---- the helper ------------------------------------------------------------------------


def _indices(unit: Unit, part_index: int, chunk: tuple[int, int] | None) -> list[int] | None:
    """The output indices one part of ``unit`` covers (None: the whole tensor); ``chunk``
    (h, n) keeps the h-th of n equal pieces of them, in the unit's own order (its heads)."""
    part = unit.parts[part_index]
    if part.ranges is None:
        if chunk is None:
            return None
        raise ValueError(f"{unit.name}: a whole-tensor part cannot be cut into heads")
    indices = [i for a, b in part.ranges for i in range(a, b, part.step)]
    if chunk is not None:
        h, n = chunk
        size, rest = divmod(len(indices), n)
        assert rest == 0, (unit.name, len(indices), n)
        indices = indices[h * size : (h + 1) * size]
    return indices


def _rotation(n: int) -> torch.Tensor:
    """One fixed n x n orthogonal matrix (the same wherever it is used in one change)."""
    noise = torch.randn(n, n, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    return torch.linalg.qr(noise)[0]


def _apply(model: nn.Module, units: dict[str, Unit], spec: str, how, generator) -> None:
    """Scale (a float), shift ("shift": add noise to the bias) or rotate ("rotate": turn
    the outputs by one fixed orthogonal matrix) the unit that ``spec`` names.

    ``spec`` is a block-relative unit name, optionally with ``#h/n`` (the h-th of n equal
    pieces of its outputs: a head or a key/value group) or ``.weight`` (its weight only,
    for an output projection whose bias must stay).
    """
    name, chunk = spec, None
    if "#" in name:
        name, _, piece = name.partition("#")
        h, _, n = piece.partition("/")
        chunk = (int(h), int(n))
    weight_only = name not in units and name.endswith(".weight")
    if weight_only:
        name = name[: -len(".weight")]
    unit = units[name]
    params = dict(model.named_parameters())
    touched = False
    for i, part in enumerate(unit.parts):
        is_bias = part.param.endswith("bias")
        if (weight_only and is_bias) or (how == "shift" and not is_bias):
            continue
        param = params[part.param]
        dim = part.dim if part.ranges is not None else 0
        indices = _indices(unit, i, chunk)
        index = [slice(None)] * param.dim()
        if indices is not None:
            index[dim] = torch.tensor(indices)
        index = tuple(index)
        with torch.no_grad():
            if how == "shift":
                values = param[index]
                param[index] = values + torch.randn(
                    values.shape, generator=generator, dtype=values.dtype
                )
            elif how == "rotate":
                values = param[index].movedim(dim, 0)
                turned = torch.tensordot(_rotation(values.shape[0]), values, dims=1)
                param[index] = turned.movedim(0, dim)
            else:
                param[index] = param[index] * how
        touched = True
    assert touched, f"{spec}: nothing to {how}"


def _output_after(model, run, units, change: dict, seed: int = 0) -> torch.Tensor:
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(seed)
    try:
        for spec, how in change.items():
            _apply(model, units, spec, how, generator)
        with torch.no_grad():
            return run(model)
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(saved[n])


@contextmanager
def _recorded_attention():
    """Record the query, key and value every attention module hands to transformers'
    attention interface (families whose forward calls it), keyed by module name."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    seen: dict[int, tuple[torch.Tensor, ...]] = {}

    def record(module, query, key, value, attention_mask, **kwargs):
        seen[id(module)] = (query, key, value)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    mapping = ALL_ATTENTION_FUNCTIONS._local_mapping
    old = dict(mapping)
    mapping.update(eager=record, sdpa=record)
    try:
        yield seen
    finally:
        mapping.clear()
        mapping.update(old)


def _check_roles(model, run, units, roles: dict[str, str]) -> None:
    """Zeroing the unit named for q (k, v) must zero exactly the query (key, value) that
    the block's attention module computes: this tells q from k where no transformation of
    the weights can (rotary embeddings, no bias)."""
    some = units[roles["k"]].parts[0].param.split(".")
    modules = dict(model.named_modules())
    owners = [id(modules[".".join(some[:i])]) for i in range(len(some) - 1, 0, -1)]
    for role in ("q", "k", "v"):
        with _recorded_attention() as seen:
            _output_after(model, run, units, {roles[role]: 0.0})
        owner = next((o for o in owners if o in seen), None)
        assert owner is not None, "the attention module never called the attention interface"
        tensors = dict(zip("qkv", seen[owner], strict=True))
        for other, tensor in tensors.items():
            zero = not tensor.any()
            assert zero == (other == role), (role, roles[role], other, "zero" if zero else "not")


def assert_split_functional(
    model: nn.Module,
    run: Callable[[nn.Module], torch.Tensor],
    partitioned: Partition,
    block: int,
    *,
    same: list[dict] = (),
    differs: list[dict] = (),
    affine: list[str] = (),
    not_affine: list[str] = (),
    roles: dict[str, str] | None = None,
) -> None:
    """Check what the units of ``block`` do to ``run(model)`` (a float64 tensor, in eval).

    ``same``: changes (unit spec -> factor, or "shift" for its bias; see :func:`_apply`)
    after which the output must equal the original; ``differs``: changes after which it
    must not. ``affine``: units on which the output depends affinely (scaling by 2 moves
    it half as far as scaling by 3: an "up" entering a GLU as ``up * f(gate)`` or
    ``(up + 1) * f(gate)``, measured on a probe of that module's output); ``not_affine``:
    units on which it must not (the gate, through its activation). ``roles``: the units
    named q, k and v, zeroed one at a time, must zero the query, key or value that the
    attention interface receives (:func:`_check_roles`).
    """
    units = {u.name: u for u in partitioned.block_units() if u.block == block}
    if roles:
        _check_roles(model, run, units, roles)
    with torch.no_grad():
        base = run(model)
    scale = base.abs().max()
    assert scale > 0

    def gap(out):
        return float((out - base).abs().max() / scale)

    for change in same:
        # a shift changes the scores (not their softmax): families that take the softmax
        # in float32 (Bloom, GPTBigCode, SAM-style vision) round it at 1e-7
        tol = 1e-6 if "shift" in change.values() else 1e-9
        assert gap(_output_after(model, run, units, change)) < tol, ("same", block, change)
    for change in differs:
        assert gap(_output_after(model, run, units, change)) > 1e-5, ("differs", block, change)
    for spec, want in [(s, True) for s in affine] + [(s, False) for s in not_affine]:
        two = _output_after(model, run, units, {spec: 2.0}) - base
        three = _output_after(model, run, units, {spec: 3.0}) - base
        assert float(two.abs().max() / scale) > 1e-5, ("no effect", block, spec)
        err = float((three - 2 * two).abs().max() / scale)
        assert (err < 1e-9) == want, ("affine" if want else "not affine", block, spec, err)


# ---- the standard checks -----------------------------------------------------------------


def _weight(name: str) -> str:
    return name if name.endswith(".weight") else f"{name}.weight"


def qk(q: str, k: str) -> dict:
    """q by 2 and k by 1/2 keep q.k; q alone changes it."""
    return dict(same=[{q: 2.0, k: 0.5}], differs=[{q: 2.0}])


def vo(v: str, o: str) -> dict:
    """v by 2 and the output projection's weight by 1/2 cancel; v alone does not."""
    return dict(same=[{v: 2.0, _weight(o): 0.5}], differs=[{v: 2.0}])


def heads(q: str, k: str, num_heads: int, kv_heads: int) -> dict:
    """The first key/value group: its q heads by 2, its k head by 1/2; one q head alone
    (when a group has several) or the group's q without its k changes the output."""
    return dict(
        same=[{f"{q}#0/{kv_heads}": 2.0, f"{k}#0/{kv_heads}": 0.5}],
        differs=[{f"{q}#0/{num_heads}": 2.0}, {f"{q}#0/{kv_heads}": 2.0}],
    )


def k_shift(q: str, k: str) -> dict:
    """Without rotary embeddings, q.(k + c) adds the same q.c to every key of a query:
    softmax ignores it. Shifting q's bias is seen."""
    return dict(same=[{k: "shift"}], differs=[{q: "shift"}])


def glu(gate: str, up: str, down: str) -> dict:
    """up enters linearly (up * act(gate)): up by 2 and down's weight by 1/2 cancel,
    gate by 2 does not."""
    return dict(same=[{up: 2.0, _weight(down): 0.5}], differs=[{gate: 2.0, _weight(down): 0.5}])


def fused(path: str, *roles: str) -> tuple[str, ...]:
    return tuple(f"{path}[{r}]" for r in roles)


def attention(path, o, *, num_heads=4, kv_heads=4, shift=False, interface=False) -> list:
    """The checks of a fused q/k/v projection ``path`` with output projection ``o``;
    ``shift`` where k has a bias and no rotary embedding, ``interface`` where the family
    calls transformers' attention interface (the q/k/v it receives can be recorded)."""
    q, k, v = fused(path, "q", "k", "v")
    checks = [qk(q, k), vo(v, o), heads(q, k, num_heads, kv_heads)]
    checks += [k_shift(q, k)] if shift else []
    return checks + ([dict(roles=dict(q=q, k=k, v=v))] if interface else [])


# ---- tiny models -------------------------------------------------------------------------

V = 96
IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _inputs():
    return torch.randint(3, V, (2, 7), generator=torch.Generator().manual_seed(0))


def logits(model):
    return model(input_ids=_inputs(), use_cache=False).logits


def probe(path: str, block: int, stack: str = "model.layers"):
    """Run the model and return what module ``path`` of block ``block`` output."""

    def run(model):
        module = model.get_submodule(f"{stack}.{block}.{path}")
        seen = []
        handle = module.register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            logits(model)
        finally:
            handle.remove()
        return seen[0][0] if isinstance(seen[0], tuple) else seen[0]

    return run


def _randomise(model: nn.Module, seed: int = 0) -> None:
    """Random weights everywhere (inits leave biases, some experts, rel-pos tables zero,
    which would make the checks vacuous); norms near one."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            leaf = name.lower()
            if "norm" in leaf or ".ln" in leaf or leaf.startswith("ln"):
                param.copy_(1 + 0.1 * noise)
            elif param.dim() >= 2:
                param.copy_(noise / param.shape[-1] ** 0.5)
            else:
                param.copy_(0.1 * noise)


def _no_dropout(config) -> None:
    for conf in [config, *[getattr(config, k) for k in vars(config) if k.endswith("_config")]]:
        for key, value in list(vars(conf).items()):
            if ("dropout" in key or "pdrop" in key) and isinstance(value, float):
                setattr(conf, key, 0.0)


@dataclass
class Case:
    config: Callable[[], object]
    layout: str  # a layout name the resolved model must use
    checks: list[dict] = field(default_factory=list)  # for every block holding their units
    model: Callable | None = None  # default AutoModelForCausalLM.from_config
    run: Callable | None = None  # default: logits; may take the block (a probe)
    fraction_tol: float = 0.01
    builtin: str | None = None  # a hft_plugins.tiny family instead of config


def build(case: Case) -> nn.Module:
    if case.builtin:
        model = tiny_model(case.builtin)
    else:
        config = case.config()
        _no_dropout(config)
        torch.manual_seed(0)
        make = case.model or (lambda c: tf.AutoModelForCausalLM.from_config(c))
        config._attn_implementation = "eager"
        config._experts_implementation = "eager"  # grouped_mm has no float64 kernel
        model = make(config)
    model = model.double().eval()
    _randomise(model)
    return model


ATTN = "self_attention"
CASES: dict[str, Case] = {
    # built-in splits, checked the same way
    "gpt2": Case(
        None,
        "gpt2",
        attention("attn.c_attn", "attn.c_proj", shift=True, interface=True),
        builtin="gpt2",
    ),
    "phi3": Case(
        None,
        "phi3",
        attention("self_attn.qkv_proj", "self_attn.o_proj", kv_heads=2, interface=True)
        + [glu(*fused("mlp.gate_up_proj", "gate", "up"), "mlp.down_proj")],
        builtin="phi3",
    ),
    "gpt_neox": Case(
        None,
        "gpt_neox",
        attention("attention.query_key_value", "attention.dense", interface=True),
        builtin="gpt_neox",
    ),
    # families of hft_plugins.builtin.families
    "bloom": Case(
        lambda: tf.BloomConfig(vocab_size=V, hidden_size=32, n_layer=4, n_head=4, **IDS),
        "bloom",
        attention(f"{ATTN}.query_key_value", f"{ATTN}.dense", shift=True),
    ),
    "falcon-multi-query": Case(
        lambda: tf.FalconConfig(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            bias=True,
            multi_query=True,
            new_decoder_architecture=False,
            **IDS,
        ),  # fmt: skip
        "falcon",
        attention(f"{ATTN}.query_key_value", f"{ATTN}.dense", kv_heads=1),
    ),
    "falcon-interleaved-alibi": Case(
        lambda: tf.FalconConfig(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            bias=True,
            multi_query=False,
            new_decoder_architecture=False,
            alibi=True,
            parallel_attn=False,
            **IDS,
        ),  # fmt: skip
        "falcon",
        attention(f"{ATTN}.query_key_value", f"{ATTN}.dense", shift=True),
    ),
    "falcon-new-decoder": Case(
        lambda: tf.FalconConfig(
            vocab_size=V,
            hidden_size=48,
            num_hidden_layers=4,
            num_attention_heads=6,
            num_kv_heads=2,
            new_decoder_architecture=True,
            **IDS,
        ),  # fmt: skip
        "falcon",
        attention(f"{ATTN}.query_key_value", f"{ATTN}.dense", num_heads=6, kv_heads=2),
    ),
    "mpt": Case(
        lambda: tf.MptConfig(vocab_size=V, d_model=32, n_heads=4, n_layers=4, max_seq_len=64),
        "mpt",
        attention("attn.Wqkv", "attn.out_proj"),
    ),
    "dbrx": Case(
        lambda: tf.DbrxConfig(
            vocab_size=V,
            d_model=32,
            n_heads=4,
            n_layers=4,
            max_seq_len=64,
            attn_config=dict(kv_n_heads=2, clip_qkv=1e6, rope_theta=10000.0),
            ffn_config=dict(ffn_hidden_size=16, moe_num_experts=4, moe_top_k=2),
            **IDS,
        ),  # fmt: skip
        "dbrx",
        attention(
            "norm_attn_norm.attn.Wqkv", "norm_attn_norm.attn.out_proj", kv_heads=2, interface=True
        ),
    ),
    "gpt_bigcode-multi-query": Case(
        lambda: tf.GPTBigCodeConfig(
            vocab_size=V, n_embd=32, n_layer=4, n_head=4, n_positions=64, multi_query=True, **IDS
        ),
        "gpt_bigcode",
        attention("attn.c_attn", "attn.c_proj", kv_heads=1, shift=True, interface=True),
    ),
    "gpt_bigcode-multi-head": Case(
        lambda: tf.GPTBigCodeConfig(
            vocab_size=V, n_embd=32, n_layer=4, n_head=4, n_positions=64, multi_query=False, **IDS
        ),
        "gpt_bigcode",
        attention("attn.c_attn", "attn.c_proj", shift=True, interface=True),
    ),
    "persimmon": Case(
        lambda: tf.PersimmonConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            qk_layernorm=False,
            **IDS,
        ),  # fmt: skip
        "persimmon",
        attention("self_attn.query_key_value", "self_attn.dense", interface=True),
    ),
    # with q/k layer norms (its default) scaling q or k is normalised away: v and o only
    "persimmon-qk-layernorm": Case(
        lambda: tf.PersimmonConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            qk_layernorm=True,
            **IDS,
        ),  # fmt: skip
        "persimmon",
        [vo("self_attn.query_key_value[v]", "self_attn.dense")],
    ),
    "fuyu": Case(
        lambda: tf.FuyuConfig(
            text_config=dict(
                model_type="persimmon",
                vocab_size=V,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=4,
                num_attention_heads=4,
                qk_layernorm=False,
            ),
            image_size=30,
            patch_size=10,
            hidden_size=32,
            image_token_id=V - 1,
            **IDS,
        ),  # fmt: skip
        "persimmon",
        attention("self_attn.query_key_value", "self_attn.dense", interface=True),
        model=lambda c: tf.FuyuForCausalLM(c),
    ),
    "codegen": Case(
        lambda: tf.CodeGenConfig(
            vocab_size=V,
            n_embd=32,
            n_layer=4,
            n_head=4,
            rotary_dim=4,
            n_positions=64,
            n_ctx=64,
            **IDS,
        ),  # fmt: skip
        "codegen",
        attention("attn.qkv_proj", "attn.out_proj", interface=True),
    ),
    "gpt_neox_japanese": Case(
        lambda: tf.GPTNeoXJapaneseConfig(
            vocab_size=V, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, **IDS
        ),
        "gpt_neox_japanese",
        attention("attention.query_key_value", "attention.dense"),
    ),
    # q/k norms normalise a scaled q or k away, and the norm after attention a scaled v: which
    # of q, k and v the attention interface receives when one unit is zeroed pins the split
    "ergo": Case(
        lambda: tf.ErgoConfig(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            first_dense_intermediate_size=64,
            moe_intermediate_size=16,
            shared_intermediate_size=32,
            num_experts=4,
            num_experts_per_tok=2,
            sliding_window=4,
            global_attention_every_n_layers=2,
            **IDS,
        ),  # fmt: skip
        "ergo",
        [
            dict(
                roles=dict(
                    q="self_attn.qkv_proj[q]", k="self_attn.qkv_proj[k]", v="self_attn.qkv_proj[v]"
                )
            ),
        ],
    ),
    "openai-gpt": Case(
        lambda: tf.OpenAIGPTConfig(vocab_size=V, n_embd=32, n_layer=4, n_head=4, n_positions=64),
        "openai-gpt",
        attention("attn.c_attn", "attn.c_proj", shift=True),
    ),
    # JetMoE: q and o are the attention experts (whole), k | v one fused tensor; its FFN
    # experts' input_linear is gate | up
    "jetmoe": Case(
        lambda: tf.JetMoeConfig(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=4,
            num_key_value_heads=2,
            kv_channels=8,
            intermediate_size=16,
            num_local_experts=4,
            num_experts_per_tok=2,
            **IDS,
        ),  # fmt: skip
        "jetmoe",
        [
            qk(f"{ATTN}.experts.input_linear", f"{ATTN}.kv_proj[k]"),
            vo(f"{ATTN}.kv_proj[v]", f"{ATTN}.experts.output_linear"),
            glu(*fused("mlp.input_linear", "gate", "up"), "mlp.output_linear.weight"),
            dict(
                roles=dict(
                    q=f"{ATTN}.experts.input_linear", k=f"{ATTN}.kv_proj[k]", v=f"{ATTN}.kv_proj[v]"
                )
            ),
        ],
    ),
    # MiniMax lightning layers: linear attention out = sum (q.k) v, normalised over all
    # heads, after an activation on the fused output (made the identity here). Scaling
    # whole units is normalised away, so per head: q by 2 with k (or v) by 1/2 cancels,
    # one head's q, k or v alone does not; turning q and k by one rotation keeps q.k
    # (no rotary embedding here), turning k and v does not: that tells v from q and k.
    "minimax": Case(
        lambda: tf.MiniMaxConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=16,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            num_local_experts=4,
            block_size=4,
            hidden_act="linear",
            **IDS,
        ),  # fmt: skip
        "minimax_lightning",
        [
            dict(
                same=[
                    {"self_attn.qkv_proj[q]#0/4": 2.0, "self_attn.qkv_proj[k]#0/4": 0.5},
                    {"self_attn.qkv_proj[k]#1/4": 2.0, "self_attn.qkv_proj[v]#1/4": 0.5},
                    {"self_attn.qkv_proj[q]#3/4": 2.0, "self_attn.qkv_proj[v]#3/4": 0.5},
                    {"self_attn.qkv_proj[q]#2/4": "rotate", "self_attn.qkv_proj[k]#2/4": "rotate"},
                ],
                differs=[
                    {"self_attn.qkv_proj[q]#0/4": 2.0},
                    {"self_attn.qkv_proj[k]#1/4": 2.0},
                    {"self_attn.qkv_proj[v]#3/4": 2.0},
                    {"self_attn.qkv_proj[q]#0/4": 2.0, "self_attn.qkv_proj[k]#1/4": 0.5},
                    {"self_attn.qkv_proj[k]#2/4": "rotate", "self_attn.qkv_proj[v]#2/4": "rotate"},
                ],
            )
        ],
    ),
    # gate | up experts without transformers' metadata
    "llama4_text": Case(
        lambda: tf.Llama4TextConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=16,
            intermediate_size_mlp=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            num_local_experts=4,
            **IDS,
        ),  # fmt: skip
        "llama4",
        [
            glu(
                *fused("feed_forward.experts.gate_up_proj", "gate", "up"),
                "feed_forward.experts.down_proj",
            )
        ],  # fmt: skip
    ),
    "longcat_flash": Case(
        lambda: tf.LongcatFlashConfig(
            vocab_size=V,
            hidden_size=32,
            num_layers=2,
            num_attention_heads=4,
            ffn_hidden_size=32,
            q_lora_rank=16,
            kv_lora_rank=16,
            qk_nope_head_dim=8,
            qk_rope_head_dim=4,
            head_dim=4,
            v_head_dim=8,
            moe_topk=2,
            n_routed_experts=4,
            zero_expert_num=2,
            expert_ffn_hidden_size=16,
            **IDS,
        ),  # fmt: skip
        "longcat_flash",
        [glu(*fused("mlp.experts.gate_up_proj", "gate", "up"), "mlp.experts.down_proj")],
    ),
    # kv_proj is one matrix read as both key and value: nothing to split, only to place.
    # Its attention category is many unequal units (hyper-connection tables the size of
    # q_b_proj in a model this small); the category rule's draw is only near half.
    "deepseek_v4": Case(
        lambda: tf.DeepseekV4Config(
            vocab_size=V,
            hidden_size=32,
            moe_intermediate_size=16,
            num_hidden_layers=4,
            num_attention_heads=4,
            head_dim=16,
            q_lora_rank=16,
            n_routed_experts=4,
            num_experts_per_tok=2,
            o_groups=2,
            o_lora_rank=16,
            index_n_heads=2,
            index_head_dim=8,
            index_topk=4,
            sliding_window=4,
            **IDS,
        ),  # fmt: skip
        "deepseek_v4_csa",
        fraction_tol=0.05,
    ),
    "glm": Case(
        lambda: tf.GlmConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            **IDS,
        ),  # fmt: skip
        "glm",
        [glu(*fused("mlp.gate_up_proj", "gate", "up"), "mlp.down_proj")],
    ),
    "glm4": Case(
        lambda: tf.Glm4Config(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            **IDS,
        ),  # fmt: skip
        "glm",
        [glu(*fused("mlp.gate_up_proj", "gate", "up"), "mlp.down_proj")],
    ),
    # (up + 1) * swiglu(gate): up enters affinely, so checked on the MLP's own output
    "minimax_m3_vl_text": Case(
        lambda: tf.MiniMaxM3VLTextConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=16,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            num_local_experts=4,
            num_experts_per_tok=2,
            dense_intermediate_size=32,
            shared_intermediate_size=16,
            rotary_dim=4,
            swiglu_limit=1e6,
            mlp_layer_types=["dense", "sparse", "dense", "sparse"],
            index_n_heads=2,
            index_head_dim=8,
            **IDS,
        ),  # fmt: skip
        "minimax_m3_vl",
        [
            dict(
                affine=["mlp.shared_experts.gate_up_proj[up]"],
                not_affine=["mlp.shared_experts.gate_up_proj[gate]"],
            ),
            dict(affine=["mlp.gate_up_proj[up]"], not_affine=["mlp.gate_up_proj[gate]"]),
        ],  # fmt: skip
        run=lambda block: probe("mlp", block),
    ),
}


def _got_ocr2():
    vision = dict(
        hidden_size=32, output_channels=16, num_hidden_layers=4, num_attention_heads=4,
        image_size=32, patch_size=8, window_size=2, global_attn_indexes=[2], mlp_dim=64,
        use_rel_pos=False,
    )  # fmt: skip
    text = dict(
        model_type="qwen2", vocab_size=V, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, **IDS,
    )  # fmt: skip
    return tf.GotOcr2Config(vision_config=vision, text_config=text, image_token_index=V - 1)


def _vision_tower(model):
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model.model.vision_tower(pixel_values=pixels.double()).last_hidden_state


CASES["got_ocr2"] = Case(
    _got_ocr2,
    "got_ocr2_vision",
    attention("attn.qkv", "attn.proj", shift=True),
    model=lambda c: tf.GotOcr2ForConditionalGeneration(c),
    run=lambda block: _vision_tower,
)


# ---- the tests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = build(CASES[name])
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(CASES))
def test_family_resolves_to_an_exact_half(name, models):
    model = models(name)
    case = CASES[name]
    mask = select(model, HFTConfig())
    assert case.layout in mask.partition.sorted_by.replace("(+structural)", "").split("+")
    done, total = mask.fractions()["blocks"]
    assert abs(done / total - 0.5) <= case.fraction_tol, done / total
    # every parameter in a unit; every element of a split tensor in exactly one unit
    params = dict(model.named_parameters())
    whole, counts = Counter(), {}
    for unit in mask.partition.units:
        for part in unit.parts:
            if part.ranges is None:
                whole[part.param] += 1
                continue
            count = counts.setdefault(part.param, torch.zeros(params[part.param].shape[part.dim]))
            for a, b in part.ranges:
                count[a : b : part.step] += 1
    assert set(whole) | set(counts) == set(params)
    assert all(n == 1 for n in whole.values())
    assert not set(whole) & set(counts)
    for name_, count in counts.items():
        assert torch.equal(count, torch.ones_like(count)), name_


def check_case(name: str, model: nn.Module, partitioned: Partition) -> None:
    """Run the checks of ``CASES[name]`` on every block that holds the units they name."""
    case = CASES[name]
    for check in case.checks:
        needed = {
            spec.partition("#")[0]
            for key in ("same", "differs")
            for change in check.get(key, ())
            for spec in change
        } | {spec for key in ("affine", "not_affine") for spec in check.get(key, ())}
        needed |= set(check.get("roles", {}).values())
        holding = []
        for block in range(partitioned.num_blocks):
            names = {u.name for u in partitioned.block_units() if u.block == block}
            if all(s in names or s.removesuffix(".weight") in names for s in needed):
                holding.append(block)
        assert holding, f"no block of {name} holds {sorted(needed)}"
        for block in sorted({holding[0], holding[-1]}):  # the first and the last: time
            run = case.run(block) if case.run else logits
            assert_split_functional(model, run, partitioned, block, **check)


@pytest.mark.parametrize("name", sorted(n for n in CASES if CASES[n].checks))
def test_split_is_functionally_right(name, models):
    model = models(name)
    check_case(name, model, partition(model))


# parameters a text-only forward of these tiny models never reaches (image embeddings and
# projector, DeepSeek-V4's compressor on 7 tokens) cannot move, whatever the mask says
_UNREACHED = {"fuyu", "got_ocr2", "deepseek_v4"}


@pytest.mark.parametrize("name", sorted(set(CASES) - _UNREACHED))
def test_half_trains_and_frozen_slices_stay(name):
    """Apply the mask and take optimizer steps: frozen tensors and the frozen slices of
    split tensors stay bit-identical, every trainable slice moves."""
    from hft_plugins import HFTOptimizer
    from tests.integrations._common import assert_half_trained, snapshot

    model = build(CASES[name]).float().train()
    before = snapshot(model)
    mask = select(model, HFTConfig(seed=1))
    mask.apply(model)
    optimizer = HFTOptimizer(model, mask, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    rows = _inputs()
    for _ in range(2):
        model(input_ids=rows, labels=rows).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert_half_trained(mask, before, model)


def test_splitter_refuses_sizes_that_do_not_add_up():
    from hft_plugins.builtin.splits import codegen_qkv
    from hft_plugins.core.errors import HFTError

    model = build(CASES["codegen"])
    block = model.transformer.h[0]
    with pytest.raises(HFTError, match="not 3 x 4 groups"):
        codegen_qkv(block, None, 3 * 32 + 6)


@pytest.mark.parametrize(
    "units",
    [
        {"q": [(0, 2)], "k": [(1, 6)]},  # overlap
        {"q": [(0, 2)], "k": [(3, 6)]},  # gap
        {"q": [(0, 6)], "k": [(2, 4)]},  # one inside another
        {"q": [(0, 3)], "k": [(3, 3), (3, 6)]},  # empty range
        {"q": [(0, 3)], "k": [(3, 7)]},  # past the end
    ],
)
def test_a_split_must_cover_every_output_once(units):
    from hft_plugins.builtin.splits import exact_cover
    from hft_plugins.core.errors import HFTError

    assert exact_cover("x", 6, {"q": [(0, 2), (4, 6)], "k": [(2, 4)]})["q"] == ((0, 2), (4, 6))
    with pytest.raises(HFTError, match="exactly once"):
        exact_cover("x", 6, units)


def test_codegen_reads_query_value_key_per_group():
    model = build(CASES["codegen"])
    split = partition(model)
    units = {u.name: u.parts[0].ranges for u in split.block_units() if u.block == 0}
    local = 32 // 4
    assert units["attn.qkv_proj[q]"][:2] == ((0, local), (3 * local, 4 * local))
    assert units["attn.qkv_proj[v]"][0] == (local, 2 * local)
    assert units["attn.qkv_proj[k]"][0] == (2 * local, 3 * local)
