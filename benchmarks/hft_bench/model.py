"""The embedded default model and its cached "base": a tiny Llama trained on the base tasks.

The base is built once per machine (about a minute or two on one CPU core) and cached
in ``$HFT_CACHE_DIR`` or ``~/.cache/hft-plugins`` as safetensors plus a JSON record of
its SHA-256. A cache whose bytes do not match the record, or that cannot be read, is
reported on stderr and rebuilt; it is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path

import torch

from hft_plugins.core.atomic import atomic_files

from . import engine, tasks
from .common import writable_dir
from .tokenizer import VOCAB
from .training import Scheduled

CACHE_FORMAT = "hft-demo-base/1"
MODEL_CONFIG = dict(
    vocab_size=len(VOCAB),
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
    pad_token_id=VOCAB["<pad>"],
    bos_token_id=VOCAB["<bos>"],
    eos_token_id=VOCAB["<eos>"],
    tie_word_embeddings=False,
)
BASE_RECIPE = dict(tasks=list(tasks.BASE_TASKS), steps=1200, batch_size=32, lr=3e-3, seed=0)


def build_model(seed: int = 0):
    """A freshly initialised embedded-default Llama (about 171k parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**MODEL_CONFIG))


def cache_dir() -> Path:
    return Path(os.environ.get("HFT_CACHE_DIR") or Path.home() / ".cache" / "hft-plugins")


def _data_digest() -> str:
    digest = hashlib.sha256()
    for name in sorted(tasks.TASKS):
        for split in tasks.SPLITS:
            digest.update((tasks.DATA_DIR / f"{name}.{split}.jsonl").read_bytes())
    return digest.hexdigest()


def _key() -> str:
    # the vocabulary too: a base trained on other ids must be rebuilt, never misread
    recipe = {"format": CACHE_FORMAT, "model": MODEL_CONFIG, "recipe": BASE_RECIPE}
    recipe["vocab"] = VOCAB
    recipe["data"] = _data_digest()
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def base_paths() -> tuple[Path, Path]:
    stem = cache_dir() / f"demo-base-{_key()}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_base(progress=None):
    """Train the base model from scratch on the base tasks (linear decay of the lr)."""
    r = BASE_RECIPE
    model = build_model(r["seed"])
    rows = [row for name in r["tasks"] for row in tasks.load(name, "train")]
    random.Random(r["seed"]).shuffle(rows)
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / r["steps"])
    engine.train_steps(
        model, Scheduled(opt, sched), rows, r["steps"], r["batch_size"], r["seed"], progress
    )
    model.eval()
    return model


def _read_cached(weights: Path, record: Path):
    """The cached base model, or the reason it cannot be used."""
    from safetensors.torch import load_file

    if not weights.exists() and not record.exists():
        return None, None
    try:
        meta = json.loads(record.read_text())
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != _key():
            return None, "its record does not describe this base"
        if _sha256(weights) != meta["sha256"]:
            return None, "its checksum does not match"
        model = build_model()
        state = load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        return None, f"it cannot be read ({type(exc).__name__})"
    model.eval()
    return model, None


def load_base(progress_factory=None, log=None):
    """The cached base model; trains and caches it when absent or corrupt."""
    log = log or sys.stderr
    from safetensors.torch import save_file

    weights, record = base_paths()
    model, problem = _read_cached(weights, record)
    if model is not None:
        return model
    if problem:
        print(
            f"hft demo: cached base model {weights} is corrupt ({problem}); rebuilding it", file=log
        )
    else:
        print(f"hft demo: training the base model once; it will be cached in {weights}", file=log)
    writable_dir(weights.parent, "cache directory")
    progress = progress_factory(BASE_RECIPE["steps"], "base model") if progress_factory else None
    model = train_base(progress)
    if progress is not None:
        progress.close()
    # the weights first: a crash between the two renames leaves a record that does not match
    with atomic_files(weights.parent, [weights.name, record.name]) as tmp:
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp[weights.name])
        )
        meta = {
            "format": CACHE_FORMAT,
            "key": _key(),
            "sha256": _sha256(tmp[weights.name]),
            "recipe": BASE_RECIPE,
        }
        tmp[record.name].write_text(json.dumps(meta, indent=1))
    return model
