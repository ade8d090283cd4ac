"""Census of the transformers zoo: does HFT's category rule resolve every LM family?

For every model type in transformers' ``CONFIG_MAPPING`` with a causal-LM or a
seq2seq-LM class, build a tiny model from its config class (defaults shrunk by a
generic rule, a short per-type table where the rule cannot work), run ``select``
with the paper's category rule at ratio 0.5, then two AdamW steps through
``HFTOptimizer`` (``foreach=True`` and ``fused=True``, each from the same weights) and
check the invariants. Each type ends as exactly one of

- ``supported``: every element of every block parameter is in exactly one block
  unit, every block unit has a known category (not "other"), the block fraction
  is within 0.05 of 0.5, frozen elements are bit-identical after the steps and
  some trainable element moved;
- ``refused``: ``select`` or ``HFTOptimizer`` raised ``HFTError`` (a clear no);
- ``not built``: the tiny model could not be built or run forward/backward
  (pixel or audio inputs, custom kernels...): not ours, left out of the ratios;
- ``failed``: anything else: a raw exception from hft_plugins or a broken invariant.

Each type runs in a forked child (2 at a time by default) with a time limit.
``python scripts/census.py`` writes ``docs/architectures.md`` and
``docs/architectures.json``; ``--types llama gpt2`` runs a few; ``--blocks FILE``
writes every built type's block parameters (names and shapes); ``--diff JSON`` lists
what changed against an earlier census (``make test-latest`` runs it against the newest
transformers). It exits 1 when a type failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import resource
import signal
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LAYERS = 4
HIDDEN = 64
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 16
FFN = 128
MOE_FFN = 32
EXPERTS = 4
TOP_K = 2
VOCAB = 128
POSITIONS = 512
SEQ = 16
BUILD_LIMIT_S = 15  # build + plain forward/backward of one type (most take under 1 s)
TYPE_LIMIT_S = 90  # everything of one type (hard kill)
RATIO = 0.5
TOLERANCE = 0.05
STATUSES = ("supported", "refused", "not built", "failed")
OUTER = ("embed", "head", "final_norm")  # trainable whole by default; not in the table
# docs/architectures.md from this line to the end is scripts/census_sharded.py's, kept here
SHARDED_MARK = "<!-- the sharded census (scripts/census_sharded.py) -->"

# ---- the generic shrink --------------------------------------------------------

LAYER_COUNT_KEYS = (
    "num_hidden_layers n_layer num_layers n_layers encoder_layers decoder_layers num_decoder_layers"
).split()
_SET = (
    (
        HIDDEN,
        "hidden_size n_embd d_model dim emb_dim word_embed_proj_dim embedding_size "
        "adapter_in_dim adapter_input_size audio_hidden_size "
        "hidden_size_global",
    ),
    (
        HEADS,
        "num_attention_heads n_head num_heads n_heads encoder_attention_heads "
        "decoder_attention_heads attention_heads swa_num_attention_heads",
    ),
    (
        HEAD_DIM,
        "head_dim swa_head_dim d_kv d_head dim_head kv_channels v_head_dim",
    ),
    (
        FFN,
        "intermediate_size ffn_dim d_ff n_inner encoder_ffn_dim decoder_ffn_dim ffn_hidden_size "
        "dim_ff dff intermediate_size_mlp shared_expert_intermediate_size "
        "shared_experts_intermediate_size moe_shared_expert_intermediate_size "
        "shared_intermediate_size first_dense_intermediate_size",
    ),
    (MOE_FFN, "moe_intermediate_size expert_ffn_hidden_size"),
    (4, "num_filters"),
    (LAYERS, " ".join(LAYER_COUNT_KEYS)),
    (
        VOCAB,
        "vocab_size src_vocab_size tgt_vocab_size vocab_size_per_layer_input decoder_vocab_size "
        "encoder_hash_byte_group_vocab",
    ),
    (
        16,
        "kv_lora_rank q_lora_rank o_lora_rank qk_head_dim index_head_dim linear_key_head_dim "
        "linear_value_head_dim linear_head_dim mamba_d_state state_size ssm_state_size "
        "mamba_d_head mamba_head_dim mamba_headdim",
    ),
    (
        8,
        "qk_rope_head_dim qk_nope_head_dim rotary_dim attention_window time_step_rank mamba_dt_rank mamba_n_heads "
        "mamba_num_heads",
    ),
)
SIZES = {key: value for value, keys in _SET for key in keys.split()}
KV_KEYS = ("num_key_value_heads", "num_kv_heads", "swa_num_key_value_heads")
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOP_K_KEYS = ("num_experts_per_tok", "moe_topk", "moe_top_k", "moe_k", "num_experts_per_token")
SHARED_KEYS = ("n_shared_experts", "num_shared_experts", "moe_num_shared_experts")
GROUP_KEYS = ("n_group", "topk_group", "num_expert_group", "mamba_n_groups", "n_groups")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_target_positions")
TOWER = re.compile(r"vision|visual|audio|image|tower|speech|acoustic|semantic|vq|patch")
PERIOD = re.compile(r"(period|interval|_step$|frequency|pattern$|every_n|group_size|per_\w*block)")

# Only where the generic rule cannot work: type -> (config overrides, batch overrides).
# Mostly defaults that do not build as they are, or hybrid stacks placed by index.
_HYBRID = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
_QSA = dict(
    indexer_budget=8,
    indexer_compress_ratio=2,
    indexer_n_heads=2,
    indexer_kv_heads=1,
    indexer_head_dim=16,
)
OVERRIDES: dict[str, tuple[dict, dict]] = {
    "bamba": (dict(attn_layer_indices=[1, 3]), {}),
    # the next three: the default config does not build a model (transformers 5.24)
    "cohere_compass_text": (
        dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e4}}),
        {},
    ),
    "dbrx": (dict(attn_config=dict(rope_theta=1e4, clip_qkv=8.0)), {}),
    "qwen4_exp": (dict(text_config=dict(model_type="qwen4_exp_text", **_QSA)), {}),
    "qwen4_exp_text": (_QSA, {}),
    "dory": (dict(layer_types=None, n_input_layers=1, n_recurrent_layers=2, n_output_layers=1), {}),
    "dots1": (dict(n_routed_experts=EXPERTS, n_shared_experts=1), {}),
    "falcon_h1": (dict(mamba_d_ssm=128, mamba_n_heads=8, mamba_d_head=16), {}),
    "granitemoehybrid": (dict(layer_types=_HYBRID), {}),
    "jamba": (dict(attn_layer_period=2, attn_layer_offset=1), {}),
    "lfm2_moe": (dict(layer_types=["conv", "full_attention", "conv", "full_attention"]), {}),
    "mamba2": (dict(num_heads=8), {}),
    "musicgen": ({}, dict(rows=8, labels=False)),  # rows are batch x codebooks
    "musicgen_melody": ({}, dict(rows=8, labels=False)),
    "reformer": (
        dict(
            is_decoder=True,
            axial_pos_embds_dim=[32, 32],
            axial_pos_shape=[4, 4],
            lsh_attn_chunk_length=4,
            local_attn_chunk_length=4,
            num_buckets=4,
        ),
        {},
    ),
    "xlstm": (dict(qk_dim_factor=1.0), {}),  # the native kernel wants equal qk and v dims
    "xmod": (dict(default_language="en_XX"), {}),
    "zamba": (dict(layers_block_type=["linear_attention", "hybrid"] * 2), {}),  # shared twice
}


def _is_config_dict(value) -> bool:
    return isinstance(value, dict) and "model_type" in value


def _kinds_kept(values: list, n: int) -> list:
    """``values`` cut to ``n`` entries, its later kinds patched in from the end."""
    new = list(values[:n])
    missing = [
        v for v in dict.fromkeys(_hashable(v) for v in values) if v not in map(_hashable, new)
    ]
    for i, value in enumerate(missing[: max(n - 1, 0)]):
        new[n - 1 - i] = next(v for v in values if _hashable(v) == value)
    return new


def _hashable(value):
    return json.dumps(value, sort_keys=True)


def shrink(data: dict, ids: dict[int, int]) -> dict:
    """A tiny version of one config's ``to_dict()``, sub-configs recursively."""
    from hft_plugins.testing import is_dropout

    data = dict(data)
    old_layers = {data[k] for k in LAYER_COUNT_KEYS if isinstance(data.get(k), int)}
    old_heads = data.get("num_attention_heads")
    for key, value in list(data.items()):
        if _is_config_dict(value):
            data[key] = shrink(value, ids)
        elif isinstance(value, bool) or value is None:
            continue
        elif _index_list(key, value) or key.endswith(("token_id", "token_ids")):
            continue  # below
        elif key == "depths" and isinstance(value, list):
            data[key] = [1] * len(value)  # stages of a convolutional tower
        elif isinstance(value, list) and value and len(value) in old_layers:
            if key in SIZES and all(isinstance(v, int) for v in value):
                data[key] = [SIZES[key]] * LAYERS
            else:
                data[key] = _kinds_kept(value, LAYERS)
        elif is_dropout(key, value):
            data[key] = 0.0
        elif not isinstance(value, int):
            continue
        elif key in SIZES and value > 0:
            data[key] = SIZES[key]
        elif key in KV_KEYS:
            data[key] = 1 if value == 1 else (HEADS if value == old_heads else KV_HEADS)
        elif key in EXPERT_KEYS and value > EXPERTS:
            data[key] = EXPERTS
        elif key in TOP_K_KEYS and value > TOP_K:
            data[key] = TOP_K
        elif key in SHARED_KEYS and value > 1:
            data[key] = 1
        elif key in GROUP_KEYS and value > 1:
            data[key] = 1
        elif key in POSITION_KEYS and value > POSITIONS:
            data[key] = POSITIONS
        elif key in ("first_k_dense_replace", "num_dense_layers", "interleave_moe_layer_step"):
            data[key] = 1 if key != "interleave_moe_layer_step" else 2  # dense and MoE blocks
        elif key == "moe_layer_end_index" and value >= LAYERS:
            data[key] = LAYERS - 1
        elif key == "num_kv_shared_layers" and value > 0:
            data[key] = 0
        elif PERIOD.search(key) and value > 2:
            data[key] = 2
        elif "offset" in key and "layer" in key and value >= 2:
            data[key] = 1
    derived = {"head_dim": HEAD_DIM, "num_key_value_heads": HEADS, "num_experts_per_tok": TOP_K}
    for key, value in derived.items():
        if key in data and data[key] is None and "num_attention_heads" in data:
            data[key] = value
    if isinstance(data.get("qk_rope_head_dim"), int) and "head_dim" in data:
        data["head_dim"] = data["qk_rope_head_dim"]  # MLA: rotary acts on the rope part only
    for key, value in list(data.items()):  # lists of block indices
        if key == "mlp_only_layers":
            data[key] = [0]  # one dense block among sparse ones
        elif _index_list(key, value) and "moe" in key:
            data[key] = list(range(1, LAYERS, 2))  # MoE blocks among dense ones
        elif _index_list(key, value) and value:
            data[key] = [v for v in value if v < LAYERS] or [LAYERS - 1]
    for key, value in list(data.items()):  # token ids must fit the small vocabulary
        if key.endswith(("token_id", "token_index", "token_ids")):
            if isinstance(value, int) and not isinstance(value, bool):
                data[key] = _small_id(value, ids)
            elif isinstance(value, list) and all(isinstance(v, int) for v in value):
                data[key] = [_small_id(v, ids) for v in value]
    return data


def _index_list(key: str, value) -> bool:
    """A list of block indices (``mlp_only_layers``, ``full_attn_idxs``...)."""
    return (
        isinstance(value, list)
        and key.endswith(("layers", "layer_indices", "layer_ids", "_idxs"))
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def _small_id(value: int, ids: dict[int, int]) -> int:
    if value < 100:
        return value
    if value not in ids:
        ids[value] = VOCAB - 1 - len(ids)
    return ids[value]


# ---- the zoo -------------------------------------------------------------------


def zoo() -> list[tuple[str, str, str]]:
    """(model type, kind, model class name) of every type with a causal or seq2seq LM class."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL,
    )
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES as SEQ2SEQ,
    )

    rows = []
    for model_type in CONFIG_MAPPING_NAMES:
        if model_type in SEQ2SEQ:
            rows.append((model_type, "seq2seq", _first(SEQ2SEQ[model_type])))
        elif model_type in CAUSAL:
            rows.append((model_type, "decoder", _first(CAUSAL[model_type])))
    return rows


def _first(names) -> str:
    return names if isinstance(names, str) else names[0]


def tiny_config(model_type: str):
    """The config of a tiny ``model_type``: defaults, shrunk, plus OVERRIDES."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config_cls = CONFIG_MAPPING[model_type]
    overrides = OVERRIDES.get(model_type, ({}, {}))[0]
    try:
        defaults = config_cls().to_dict()
    except Exception:  # noqa: BLE001 - a few defaults do not validate without the overrides
        defaults = config_cls(**overrides).to_dict()
    changed = _merged(_changed(defaults, shrink(defaults, {})), overrides)
    return config_cls(**changed)


def _merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


def _changed(old: dict, new: dict) -> dict:
    """The keys ``shrink`` changed: the config's own __post_init__ derives the rest from them."""
    out = {}
    for key, value in new.items():
        if _is_config_dict(value) and isinstance(old.get(key), dict):
            sub = _changed(old[key], value)
            if sub:
                out[key] = {"model_type": value["model_type"], **sub}
        elif old.get(key) != value:
            out[key] = value
    return out


def build(model_type: str, class_name: str):
    """The tiny model, float32 on CPU, eager attention where the class accepts it."""
    import torch
    import transformers

    config = tiny_config(model_type)
    model_cls = getattr(transformers, class_name)
    wanted = getattr(model_cls, "config_class", None)
    if isinstance(wanted, type) and not isinstance(config, wanted):
        # e.g. Llama4ForCausalLM takes Llama4Config's text_config
        config = next((v for v in vars(config).values() if isinstance(v, wanted)), config)
    torch.manual_seed(0)
    try:
        model = model_cls._from_config(config, attn_implementation="eager", dtype=torch.float32)
    except (ValueError, TypeError) as exc:
        if "attn" not in str(exc) and "eager" not in str(exc):
            raise
        torch.manual_seed(0)
        model = model_cls._from_config(config, dtype=torch.float32)
    return model.float().train()


def batch_for(kind: str, model_type: str) -> dict:
    """Random token ids (clear of the special ids moved to the top of the vocabulary)."""
    import torch

    extra = OVERRIDES.get(model_type, ({}, {}))[1]
    g = torch.Generator().manual_seed(0)
    rows, seq = extra.get("rows", 2), extra.get("seq", SEQ)
    ids = torch.randint(4, 100, (rows, seq), generator=g)
    if kind == "seq2seq":
        target = torch.randint(4, 100, (rows, seq // 2), generator=g)
        return {"input_ids": ids, "decoder_input_ids": target, "labels": target}
    return {"input_ids": ids, "labels": ids} if extra.get("labels", True) else {"input_ids": ids}


def loss_of(output):
    loss = getattr(output, "loss", None)
    if loss is not None and loss.requires_grad:
        return loss
    logits = getattr(output, "logits", None)
    if logits is None:
        logits = output[0]
    return logits.float().square().mean()


def stacks(model, kind: str) -> list[tuple[str, object]]:
    """The block stacks: every outermost ModuleList holding a fifth or more of the largest
    one's parameters (a decoder's layers; an encoder's and a decoder's; a vision or audio
    tower's layers beside the language model's, which HFT halves too)."""
    from torch import nn

    lists = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or not len(module):
            continue
        if all(any(True for _ in child.children()) for child in module):  # no leaf lists
            if any(name.startswith(f"{other}.") for other, _, _ in lists):
                continue  # a list inside a block (experts, heads)
            size = sum(p.numel() for p in module.parameters())
            if size:
                lists.append((name, module, size))
    if not lists:
        return []
    largest = max(size for _, _, size in lists)
    return [(name, module) for name, module, size in lists if size >= largest / 5]


def block_params(model, kind: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter inside a block (names as named_parameters gives them)."""
    prefixes = [f"{name}." for name, _ in stacks(model, kind)]
    return {n: tuple(p.shape) for n, p in model.named_parameters() if n.startswith(tuple(prefixes))}


def block_classes(model, kind: str) -> list[dict]:
    """One entry per distinct block (class and parameter shapes) of each stack."""
    seen, out = set(), []
    for stack_name, blocks in stacks(model, kind):
        for index, block in enumerate(blocks):
            params = [(n, list(p.shape)) for n, p in block.named_parameters()]
            key = (stack_name, type(block).__name__, json.dumps(params))
            if key in seen:
                continue
            seen.add(key)
            out.append(
                {
                    "stack": stack_name,
                    "index": index,
                    "class": type(block).__name__,
                    "params": params,
                }
            )
    return out


def is_moe(model) -> bool:
    return any(
        "expert" in n.lower() or ".moe" in n.lower() or "router" in n.lower()
        for n, _ in model.named_parameters()
    )


# ---- the checks ----------------------------------------------------------------


def coverage(partitioned, params: dict[str, tuple[int, ...]]) -> list[str]:
    """Violations of: every element of every block parameter is in exactly one block unit.

    One line per kind of violation: how many parameters, and the first as an example.
    """
    import torch

    from hft_plugins.core.units import range_view

    counts = {n: torch.zeros(s, dtype=torch.int16) for n, s in params.items()}
    found: dict[str, list[str]] = {}
    for unit in partitioned.units:
        for part in unit.parts:
            if part.param not in counts:
                if unit.block is not None:
                    found.setdefault("not in a block, in block units", []).append(
                        f"{part.param} in {unit.key}"
                    )
                continue
            if unit.block is None:
                found.setdefault("in outer units", []).append(f"{part.param} in {unit.key}")
            tensor = counts[part.param]
            if part.ranges is None:
                tensor += 1
            else:
                for a, b in part.ranges:
                    range_view(tensor, part.dim, a, b, part.step).add_(1)
    for name, tensor in counts.items():
        for what, hit in (("in no unit", tensor == 0), ("in several units", tensor > 1)):
            if hit.any():
                found.setdefault(f"with elements {what}", []).append(
                    f"{name} ({int(hit.sum())} of {tensor.numel()})"
                )
    return [f"{len(v)} params {k}, e.g. {v[0]}" for k, v in found.items()]


def trainable_elements(mask, name: str, shape: tuple[int, ...]) -> int:
    plan = mask.params()
    numel = 1
    for s in shape:
        numel *= s
    if name not in plan:
        return 0
    slices = plan[name]
    return numel if slices is None else numel // shape[slices.dim] * slices.size


def frozen_and_moved(mask, before: dict, model) -> tuple[list[str], bool]:
    """(frozen elements that changed, whether any trainable element moved)."""
    import torch

    from hft_plugins.core.units import range_view

    plan = mask.params()
    changed, moved = [], False
    for name, param in model.named_parameters():
        old, new = before[name], param.detach()
        if name not in plan:
            if not torch.equal(old, new):
                changed.append(name)
            continue
        slices = plan[name]
        if slices is None:
            moved = moved or not torch.equal(old, new)
            continue
        keep = torch.ones(old.shape[slices.dim], dtype=torch.bool)
        for a, b in slices.ranges:
            keep[a : b : slices.step] = False
            part = (slices.dim, a, b, slices.step)
            moved = moved or not torch.equal(range_view(old, *part), range_view(new, *part))
        idx = keep.nonzero().flatten()
        if not torch.equal(old.index_select(slices.dim, idx), new.index_select(slices.dim, idx)):
            changed.append(f"{name} (a frozen slice)")
    return changed, moved


def check(model, batch: dict, kind: str) -> dict:
    """Run select and the two optimizers on ``model``; the record of the outcome.

    ``model`` must already run forward and backward (that is the build's test).
    """
    import torch

    from hft_plugins import HFTConfig, HFTError, HFTOptimizer, select
    from hft_plugins.core.layouts import BLOCK_CATEGORIES

    record: dict = {}
    try:
        mask = select(model, HFTConfig(strategy="category", ratio=RATIO, seed=0))
    except HFTError as exc:
        return {"status": "refused", "message": _line(exc)}
    partitioned = mask.partition
    params = block_params(model, kind)
    known = set(BLOCK_CATEGORIES) - {"other"}
    total = sum(_numel(s) for s in params.values())
    done = sum(trainable_elements(mask, n, s) for n, s in params.items())
    fractions = {
        cat: round(a / b, 4) for cat, (a, b) in sorted(mask.fractions().items()) if b and cat
    }
    record.update(
        layout=partitioned.sorted_by,
        blocks=partitioned.num_blocks,
        block_fraction=round(done / total, 4) if total else None,
        fractions=fractions,
    )
    problems = coverage(partitioned, params)
    others = Counter(u.category for u in partitioned.block_units() if u.category not in known)
    problems += [f"{n} block units of category {c!r}" for c, n in sorted(others.items())]
    if not total:
        problems.append("no block parameters found")
    elif abs(done / total - RATIO) > TOLERANCE:
        problems.append(f"block fraction {done / total:.4f}, not within {TOLERANCE} of {RATIO}")
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for mode in ("foreach", "fused"):
        with torch.no_grad():  # each mode from the same weights (no deepcopy: weight_norm)
            for name, param in model.named_parameters():
                param.copy_(start[name])
        try:
            optimizer = HFTOptimizer(
                model, mask, torch.optim.AdamW, lr=1e-2, weight_decay=0.1, **{mode: True}
            )
        except HFTError as exc:
            return {**record, "status": "refused", "message": _line(exc)}
        with optimizer:
            for _ in range(2):
                loss_of(model(**batch)).backward()
                optimizer.step()
                optimizer.zero_grad()
        changed, moved = frozen_and_moved(mask, start, model)
        if changed:
            problems.append(f"{mode}: {len(changed)} frozen params changed, e.g. {changed[0]}")
        if not moved:
            problems.append(f"{mode}: no trainable element moved")
    if problems:
        return {**record, "status": "failed", "message": "; ".join(problems[:4])}
    return {**record, "status": "supported", "message": ""}


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])
    return f"{type(exc).__name__}: {text}"[:300]


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout(f"over {BUILD_LIMIT_S} s")


def census_one(model_type: str, kind: str, class_name: str, send=None) -> dict:
    """Build, check and classify one model type (in the calling process)."""
    send = send or (lambda *a: None)
    record = {"type": model_type, "kind": kind, "class": class_name, "moe": None}
    start = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(BUILD_LIMIT_S)
    try:
        model = build(model_type, class_name)
        kind = "seq2seq" if getattr(model.config, "is_encoder_decoder", False) else "decoder"
        record.update(kind=kind, moe=is_moe(model))
        record["model_type"] = model.config.model_type
        record["block_classes"] = block_classes(model, kind)
        batch = batch_for(kind, model_type)
        loss_of(model(**batch)).backward()
        model.zero_grad(set_to_none=True)
    except BaseException as exc:  # noqa: BLE001 - anything here is the model's, not ours
        signal.alarm(0)
        if isinstance(exc, KeyboardInterrupt):
            raise
        record.update(status="not built", message=_line(exc), seconds=_since(start))
        return record
    signal.alarm(0)
    record["build_seconds"] = _since(start)
    send("phase", "hft")
    try:
        record.update(check(model, batch, kind))
    except Exception as exc:  # a raw exception from hft_plugins (or a broken step)
        tb = traceback.extract_tb(exc.__traceback__)
        where = next(
            (
                f"{Path(f.filename).name}:{f.lineno}"
                for f in reversed(tb)
                if "hft_plugins" in f.filename
            ),
            "",
        )
        record.update(status="failed", message=f"{_line(exc)} [{where}]")
    record["seconds"] = _since(start)
    return record


def _since(start: float) -> float:
    return round(time.monotonic() - start, 2)


# ---- running the zoo -----------------------------------------------------------


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _child(model_type, kind, class_name, conn) -> None:
    import torch

    torch.set_num_threads(1)
    _quiet()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1), os.dup2(devnull, 2)  # models print; the parent reports
    try:
        record = census_one(model_type, kind, class_name, lambda *m: conn.send(m))
    except BaseException as exc:  # noqa: BLE001
        record = {"status": "failed", "message": f"census crashed: {_line(exc)}"}
    usage = resource.getrusage(resource.RUSAGE_SELF)  # this child's own, from its fork
    record["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 2)
    conn.send(("result", record))
    conn.close()


def _warm() -> None:
    """Import what every child needs once, before forking."""
    _quiet()
    import torch  # noqa: F401
    import transformers
    import transformers.modeling_utils  # noqa: F401

    from hft_plugins.core import catalog

    transformers.logging.set_verbosity_error()
    catalog.layouts()


def run(types=None, jobs: int = 2, limit: float = TYPE_LIMIT_S, progress=None) -> list[dict]:
    """Census of ``types`` (default: the whole zoo), ``jobs`` children at a time."""
    _warm()
    rows = zoo()
    if types:
        wanted = set(types)
        unknown = wanted - {r[0] for r in rows}
        if unknown:
            raise SystemExit(f"not in the zoo: {sorted(unknown)}")
        rows = [r for r in rows if r[0] in wanted]
    ctx = multiprocessing.get_context("fork")
    pending, running, results = list(rows), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            row = pending.pop(0)
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(*row, writer), daemon=True)
            proc.start()
            writer.close()
            running[row[0]] = [proc, reader, time.monotonic(), "build", row]
        ready = multiprocessing.connection.wait([r[1] for r in running.values()], timeout=0.5)
        for model_type, entry in list(running.items()):
            proc, reader, start, phase, row = entry
            record = None
            if reader in ready:
                try:
                    message = reader.recv()
                except EOFError:
                    record = _lost(row, phase, f"child died (exit code {proc.exitcode})")
                else:
                    if message[0] == "phase":
                        entry[3] = message[1]
                        continue
                    record = message[1]
            elif time.monotonic() - start > limit:
                proc.kill()
                record = _lost(row, phase, f"over the {limit:.0f} s limit")
            if record is None:
                continue
            proc.join(timeout=5)
            reader.close()
            record.setdefault("seconds", round(time.monotonic() - start, 2))
            record = {"type": row[0], "kind": row[1], "class": row[2], **record}
            results[model_type] = record
            del running[model_type]
            if progress:
                progress(record)
    return [results[r[0]] for r in rows]


def _lost(row, phase: str, why: str) -> dict:
    status = "not built" if phase == "build" else "failed"
    return {
        "type": row[0],
        "kind": row[1],
        "class": row[2],
        "moe": None,
        "status": status,
        "message": f"{why} while {'building' if phase == 'build' else 'checking HFT'}",
    }


# ---- reports -------------------------------------------------------------------


def summary(records: list[dict]) -> dict:
    """Counts by status, overall and by kind and MoE, and the targets' ratios."""
    counts: dict = {"all": Counter(r["status"] for r in records)}
    for kind in ("decoder", "seq2seq"):
        counts[kind] = Counter(r["status"] for r in records if r["kind"] == kind)
    counts["moe"] = Counter(r["status"] for r in records if r.get("moe"))
    built_decoder = [r for r in records if r["kind"] == "decoder" and r["status"] != "not built"]
    ok = sum(r["status"] == "supported" for r in built_decoder)
    return {
        **{k: dict(v) for k, v in counts.items()},
        "decoder_supported_ratio": round(ok / len(built_decoder), 4) if built_decoder else None,
    }


def report_lines(records: list[dict]) -> list[str]:
    """One line a type: type, kind, moe, status, layout, block fraction, message."""
    lines = []
    for r in records:
        frac = r.get("block_fraction")
        lines.append(
            "\t".join(
                [
                    r["type"],
                    r["kind"],
                    "moe" if r.get("moe") else "-",
                    r["status"],
                    r.get("layout") or "-",
                    "-" if frac is None else f"{frac:.4f}",
                    r.get("message") or "",
                ]
            )
        )
    return lines


def suspicious(record: dict) -> bool:
    """Failed, or supported only by the structural guess or far from the ratio."""
    frac = record.get("block_fraction")
    return record["status"] == "failed" or (
        record["status"] == "supported"
        and (record.get("layout") == "structural" or frac is None or abs(frac - RATIO) > 0.01)
    )


def report_text(records: list[dict]) -> str:
    """The census for the layout work: a line a type, then the blocks of the doubtful ones."""
    lines = [
        "# census: type, kind, moe, status, layout, block fraction, message (tab-separated)",
        f"# {json.dumps(summary(records))}",
        *report_lines(records),
        "",
        "# blocks of every failed type and every supported one that is structural or off 0.5",
        "",
    ]
    lines += [blocks_text(r) + "\n" for r in records if suspicious(r) and r.get("block_classes")]
    return "\n".join(lines) + "\n"


def diff_lines(records: list[dict], baseline: dict) -> list[str]:
    """What changed against an earlier census (its docs/architectures.json): new types with
    their status, types gone, and changed statuses, one line each."""
    old = {r["type"]: r for r in baseline["types"]}
    new = {r["type"]: r for r in records}
    lines = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before is None:
            lines.append(
                f"new type {name}: {after['status']} {after.get('message') or ''}".rstrip()
            )
        elif after is None:
            lines.append(f"type gone {name} (was {before['status']})")
        elif before["status"] != after["status"]:
            lines.append(
                f"changed {name}: {before['status']} -> {after['status']} "
                f"{after.get('message') or ''}".rstrip()
            )
    return lines


def blocks_text(record: dict) -> str:
    head = f"## {record['type']} (model_type {record.get('model_type', '?')}, {record['class']})"
    out = [head]
    if record.get("status"):
        out.append(
            f"  {record['status']} {record.get('layout') or ''} {record.get('message') or ''}"
        )
    for block in record.get("block_classes") or []:
        out.append(f"  [{block['stack']}.{block['index']}] {block['class']}")
        out += [f"    {n} {s}" for n, s in block["params"]]
    return "\n".join(out)


def markdown(records: list[dict], seconds: float | None = None) -> str:
    import transformers

    s = summary(records)
    lines = [
        "# Architectures: the census of the transformers zoo",
        "",
        f"Every model type of transformers {transformers.__version__} with a causal-LM or a "
        "seq2seq-LM class, built tiny from its config class (the defaults shrunk by a generic "
        f"rule to {LAYERS} blocks of width {HIDDEN}, {EXPERTS} experts; settings that mix block "
        "kinds kept on so that both kinds appear), masked with the category rule at ratio "
        f"{RATIO}, then two AdamW steps (weight decay 0.1; `foreach=True` and `fused=True`, each "
        "from the same starting weights) through `HFTOptimizer`. Regenerate with `make census` or "
        "`python scripts/census.py` (this file and `architectures.json`; a few minutes on 2 cores).",
        "",
        "- **supported**: every element of every block parameter is in exactly one block unit, "
        f"every block unit has a known category (not `other`), the block fraction is within "
        f"{TOLERANCE} of {RATIO}, frozen elements (whole tensors and frozen slices) are "
        "bit-identical after the steps and some trainable element moved.",
        "- **refused**: `select` or `HFTOptimizer` raised `HFTError`: a clear no.",
        "- **not built**: the tiny model could not be built or run forward/backward on token ids "
        "(it needs pixel or audio inputs, another model's states, an optional package...). "
        "Not ours; left out of the ratios.",
        "- **failed**: anything else: a raw exception from hft-plugins or a broken invariant. A bug.",
        "",
        "Blocks are those of every outermost `ModuleList` of composite modules holding a fifth "
        "or more of the largest one's parameters: the language model's layers, an encoder's and "
        "a decoder's, and a vision or audio tower's layers beside them (HFT halves those too). "
        "Kind: `seq2seq` when the built model is an encoder-decoder. Categories: the trainable "
        "fraction of each block category; embeddings, heads and the final norm train whole by "
        "default and are not shown.",
        "",
        "| | supported | refused | not built | failed |",
        "|---|---|---|---|---|",
    ]
    for key in ("all", "decoder", "seq2seq", "moe"):
        c = s[key]
        lines.append(f"| {key} | " + " | ".join(str(c.get(st, 0)) for st in STATUSES) + " |")
    ratio = s["decoder_supported_ratio"]
    cpu = sum(r.get("cpu_seconds") or 0 for r in records)
    lines += [
        "",
        f"Supported among built decoder-only types: {'-' if ratio is None else f'{ratio:.1%}'} "
        "(target 95%)."
        + (
            f" This census took {seconds:.0f} s and {cpu:.0f} CPU-seconds "
            f"(load average {os.getloadavg()[0]:.1f} at the end)."
            if seconds
            else ""
        ),
        "",
        "| model type | kind | MoE | status | layout | blocks | block fraction | categories / reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        frac = r.get("block_fraction")
        cats = r.get("fractions") or {}
        detail = ", ".join(
            f"{c} {v:.2f}" for c, v in cats.items() if c not in ("total", "blocks", *OUTER)
        )
        if r["status"] != "supported":
            detail = (r.get("message") or "").replace("|", "\\|")
        lines.append(
            f"| {r['type']} | {r['kind']} | {'yes' if r.get('moe') else 'no'} | {r['status']} | "
            f"{r.get('layout') or ''} | {r.get('blocks') or ''} | "
            f"{'' if frac is None else f'{frac:.3f}'} | {detail} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", nargs="*", help="model types (default: the whole zoo)")
    parser.add_argument("--jobs", type=int, default=2, help="children at a time (default 2)")
    parser.add_argument("--out", default=str(REPO / "docs" / "architectures.md"))
    parser.add_argument("--report", help="also write one line a type here")
    parser.add_argument("--blocks", help="also write every built type's block parameters here")
    parser.add_argument(
        "--diff",
        metavar="JSON",
        help="also report new types and changed statuses against an earlier census's JSON",
    )
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    baseline = json.loads(Path(args.diff).read_text()) if args.diff else None
    if baseline is not None and args.types:  # only the types asked for
        baseline["types"] = [r for r in baseline["types"] if r["type"] in args.types]
    start = time.monotonic()

    def progress(record):
        if not args.quiet:
            print(report_lines([record])[0], flush=True)

    records = run(args.types, args.jobs, progress=progress)
    seconds = time.monotonic() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = out.read_text().partition(SHARDED_MARK) if out.exists() else ("", "", "")
    text = markdown(records, seconds if not args.types else None)
    out.write_text(text + (f"\n{SHARDED_MARK}{kept[2]}" if kept[1] else ""))
    slim = [{k: v for k, v in r.items() if k != "block_classes"} for r in records]
    out.with_suffix(".json").write_text(
        json.dumps({"summary": summary(records), "types": slim}, indent=1) + "\n"
    )
    if args.report:
        Path(args.report).write_text(report_text(records))
    if args.blocks:
        built = [r for r in records if r.get("block_classes")]
        Path(args.blocks).write_text("\n\n".join(blocks_text(r) for r in built) + "\n")
    print(json.dumps(summary(records)), f"{seconds:.0f} s", file=sys.stderr)
    if baseline is not None:
        changed = diff_lines(records, baseline)
        print(f"census against {args.diff}: {len(changed)} change(s)")
        print("\n".join(f"  {line}" for line in changed) if changed else "  (none)")
    failed = [r["type"] for r in records if r["status"] == "failed"]
    if failed:
        print(f"census: {len(failed)} type(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
