"""The base model: a character tokenizer, a small Llama, its pretraining and its cache.

The base is pretrained on the ``base`` split (WordNet noun glosses, "headword: definition")
with the language-model loss on every token. Its weights are cached as fp16 safetensors
named by the sha256 of the settings and the data, written atomically; the shipped file
under ``data/`` is that cache. Everything downstream starts from the fp16-rounded weights,
so the base's published scores are those of the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch

from hft_plugins import HFTError
from hft_plugins.core.atomic import atomic_files, atomic_write_text

from ..engine import pair_batch, train_steps
from ..training import Scheduled
from .corpus import CHARS, Corpus

DATA_DIR = Path(__file__).resolve().parent / "data"
PAD, BOS, EOS = 0, 1, 2
VOCAB = {c: i + 3 for i, c in enumerate(CHARS)}
VOCAB_SIZE = 64
IGNORE = -100
assert len(VOCAB) + 3 <= VOCAB_SIZE

BASE_SETTINGS = dict(
    hidden=96,
    ffn=256,
    layers=4,
    heads=4,
    max_len=64,
    steps=6000,
    batch=32,
    lr=3e-3,
    warmup=100,
    min_lr_frac=0.1,
    seed=0,
)


def encode(text: str) -> list[int]:
    try:
        return [VOCAB[c] for c in text]
    except KeyError as exc:
        raise HFTError(f"character {exc.args[0]!r} is not in the tokenizer's vocabulary") from None


def decode(ids) -> str:
    inv = {i: c for c, i in VOCAB.items()}
    return "".join(inv.get(int(i), "") for i in ids)


def item_ids(prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """``(<bos> prompt, completion <eos>)`` as token ids."""
    return [BOS] + encode(prompt), encode(completion) + [EOS]


def make_batch(items, loss_on: str = "completion") -> dict[str, torch.Tensor]:
    """``<bos> prompt completion <eos>``, right-padded; labels on the completion and <eos>
    (``loss_on="completion"``) or on every token after <bos> (``"all"``)."""
    return pair_batch([item_ids(p, c) for p, c in items], PAD, loss_on)


def build_model(settings: dict, seed: int | None = None):
    """A LlamaForCausalLM built from config (no download), fp32, dropout off."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=settings["hidden"],
        intermediate_size=settings["ffn"],
        num_hidden_layers=settings["layers"],
        num_attention_heads=settings["heads"],
        num_key_value_heads=settings["heads"],
        max_position_embeddings=settings["max_len"],
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        tie_word_embeddings=False,
    )
    torch.manual_seed(settings["seed"] if seed is None else seed)
    return LlamaForCausalLM(cfg)


def cache_key(settings: dict, corpus: Corpus) -> str:
    """sha256 of the settings (sorted JSON) and the corpus digest."""
    blob = json.dumps(settings, sort_keys=True) + "\n" + corpus.digest()
    return hashlib.sha256(blob.encode()).hexdigest()


def pretrain(settings: dict, items, log=print):
    """Train a fresh model on ``items`` with the LM loss; returns (model, seconds)."""
    model = build_model(settings)
    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.0)
    steps, warm, floor = settings["steps"], settings["warmup"], settings["min_lr_frac"]

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    start, window = time.perf_counter(), []

    def report(step, model, loss):
        window.append(loss)
        if step % 250 == 0 or step == steps:
            el = time.perf_counter() - start
            log(f"pretrain step {step}/{steps} loss {sum(window) / len(window):.3f} {el:.0f}s")
            window.clear()

    train_steps(model, Scheduled(opt, sched), items, steps, settings["batch"], settings["seed"],
                to_batch=lambda rows: make_batch(rows, "all"), after_step=report)  # fmt: skip
    model.eval()
    return model, time.perf_counter() - start


def _save(model, path: Path, key: str) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    with atomic_files(path.parent, [path.name]) as tmp:
        save_file(tensors, str(tmp[path.name]), metadata={"key": key})


def _load(path: Path, key: str, settings: dict):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        found = (f.metadata() or {}).get("key")
        if found != key:
            raise HFTError(f"its key is {str(found)[:12]}..., expected {key[:12]}...")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    model = build_model(settings)
    state = {k: v.to(torch.float32) for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise HFTError(f"tensors missing {missing[:2]} / unexpected {unexpected[:2]}")
    model.eval()
    return model


def weights_path(settings: dict, corpus: Corpus, cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or DATA_DIR) / f"base-{cache_key(settings, corpus)[:16]}.safetensors"


def load_or_train(corpus: Corpus, settings: dict | None = None, cache_dir=None, log=None):
    """The base model for ``settings`` on ``corpus``: from the cache, else trained and cached.

    Returns ``(model, info)``; ``info["source"]`` is ``"cache"`` or ``"trained"``. An
    unreadable cache file (truncated, wrong key, wrong tensors) is reported in one line
    and rebuilt.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    settings = {**BASE_SETTINGS, **(settings or {})}
    key = cache_key(settings, corpus)
    path = weights_path(settings, corpus, cache_dir)
    if path.exists():
        try:
            return _load(path, key, settings), {"source": "cache", "path": str(path), "key": key}
        except Exception as exc:  # noqa: BLE001 - any unreadable file is rebuilt
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log(f"base cache {path} is unreadable ({msg}); retraining it")
    model, seconds = pretrain(settings, corpus.splits["base"], log)
    _save(model, path, key)
    meta = {"key": key, "settings": settings, "pretrain_seconds": round(seconds, 1)}
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1) + "\n")
    return _load(path, key, settings), {
        "source": "trained",
        "path": str(path),
        "key": key,
        "pretrain_seconds": seconds,
    }


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
