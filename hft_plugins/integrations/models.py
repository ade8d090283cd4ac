"""Naming a model as Hugging Face tools do: a directory, a config.json, a Hub id or a GGUF file.

Every entry point that names a model (``hft inspect``, ``hft reset``, the stage rule's
:func:`previous_stage`,
``HFTModel.from_pretrained`` and ``AutoHFTModelForCausalLM``, the harness's ``--model``)
resolves the name here and loads through transformers' and huggingface_hub's own
functions, so the Hub cache, ``HF_HUB_OFFLINE``, ``revision`` and ``token`` behave as
users know them:

- a local directory, or a ``config.json`` in one;
- a Hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``), from the cache when offline;
- a ``.gguf`` file: a local path, or ``org/name/file.gguf`` for a file in a Hub repo.

transformers reads a GGUF file's config and tokenizer itself and dequantizes its weights
into ordinary float tensors (unless it has a GGUF kernel for the device: :func:`load_model`
asks for float weights), but still marks the model quantized: the Trainer refuses to
fine-tune it and ``save_pretrained`` to write it. :func:`plain_weights` clears that mark
(saying so once), so HFT trains the dequantized weights and saves a normal checkpoint; a
model whose GGUF weights stay quantized is refused in one line.

The previous HFT stage of a model (what the stage rule, ``core/stage.py``, follows) is
found here too: the mask an HFT trainer recorded on the model object, else ``hft_mask.json``
beside its weights.

Only transformers and huggingface_hub are imported, inside the functions.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..core.errors import HFTError
from ..core.mask import HFTMask
from ..core.stage import MASK_NAME, PreviousStage

__all__ = [
    "ModelRef",
    "load_config",
    "load_model",
    "load_tokenizer",
    "model_file",
    "plain_weights",
    "previous_stage",
    "record_trained_mask",
]

logger = logging.getLogger(__name__)
GGUF_SUFFIX = ".gguf"
# (repo, file) pairs taken as absent because offline: each is said once
_GUESSED_ABSENT: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class ModelRef:
    """Where a model is: ``source`` (a local directory or a Hub repo id) and, for a GGUF
    model, the file inside it; with the Hub ``revision`` and ``token`` to load it by."""

    name: str  # as given
    source: str
    gguf_file: str | None = None
    revision: str | None = None
    token: bool | str | None = None

    @property
    def local(self) -> bool:
        return os.path.isdir(self.source)

    def hub_kwargs(self) -> dict:
        return {"revision": self.revision, "token": self.token}

    def load_kwargs(self) -> dict:
        """What ``from_pretrained`` takes besides the source."""
        gguf = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        return {**gguf, **({} if self.local else self.hub_kwargs())}


def _looks_local(name: str) -> bool:
    return (
        os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name) or "\\" in name
    )


def resolve(name, *, revision: str | None = None, token: bool | str | None = None) -> ModelRef:
    """A :class:`ModelRef` for ``name``: a model directory, a config.json, a .gguf file
    (local, or ``org/name/file.gguf`` in a Hub repo) or a Hub repo id. A local name that
    does not exist is refused here; a Hub id is checked when it is loaded."""
    if isinstance(name, ModelRef):
        return replace(name, revision=revision or name.revision, token=token or name.token)
    if not isinstance(name, str | os.PathLike):
        raise HFTError(f"a model is named by a path or a Hub id, got {type(name).__name__}")
    text = os.fspath(name)
    path = Path(os.path.expanduser(text))
    hub = {"revision": revision, "token": token}
    if path.is_dir():
        return ModelRef(text, str(path), **hub)
    if path.is_file():
        if path.suffix == GGUF_SUFFIX:
            return ModelRef(text, str(path.parent), path.name, **hub)
        if path.name == "config.json":
            return ModelRef(text, str(path.parent), **hub)
        raise HFTError(f"{text} is a file, but not a config.json or a {GGUF_SUFFIX} file")
    if _looks_local(text):
        raise HFTError(f"no model directory, config.json or {GGUF_SUFFIX} file at {text}")
    pieces = text.split("/")
    if text.endswith(GGUF_SUFFIX) and len(pieces) >= 3:  # org/name/[folder/]file.gguf
        return ModelRef(text, "/".join(pieces[:2]), "/".join(pieces[2:]), **hub)
    if len(pieces) > 2 or not all(pieces):
        raise HFTError(f"{text!r} is neither a local path nor a Hub id (org/name)")
    return ModelRef(text, text, **hub)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _refusal(what: str, ref: ModelRef, exc: BaseException) -> HFTError:
    where = f"{ref.name} (revision {ref.revision})" if ref.revision else ref.name
    return HFTError(f"cannot load the {what} of {where}: {_first_line(exc)}")


def _check_local_config(ref: ModelRef) -> None:
    """A local model directory names its model by its config.json (a GGUF file by itself);
    without one transformers' own message ("Unrecognized model ... should have a
    `model_type` key") hides what is missing."""
    if not ref.local or ref.gguf_file or (Path(ref.source) / "config.json").is_file():
        return
    gguf = sorted(Path(ref.source).glob(f"*{GGUF_SUFFIX}"))
    hint = f" (to load a GGUF file, name the file: {gguf[0]})" if gguf else ""
    raise HFTError(f"no config.json in the model directory {ref.name}{hint}")


def load_config(name, **hub):
    """The transformers config of a model (a GGUF file's is read from its header)."""
    from transformers import AutoConfig

    ref = resolve(name, **hub)
    _check_local_config(ref)
    try:
        return AutoConfig.from_pretrained(ref.source, **ref.load_kwargs())
    except (OSError, ValueError, KeyError) as exc:
        raise _refusal("config", ref, exc) from None


def load_tokenizer(name, **hub):
    """The tokenizer of a model, with its chat template (a GGUF file carries both)."""
    from transformers import AutoTokenizer

    ref = resolve(name, **hub)
    try:
        return AutoTokenizer.from_pretrained(ref.source, **ref.load_kwargs())
    except (OSError, ValueError, KeyError) as exc:
        raise _refusal("tokenizer", ref, exc) from None


def load_model(name, *, dtype=None, auto_class=None, **hub):
    """A model for training (``AutoModelForCausalLM`` unless ``auto_class``); a GGUF model
    dequantized (asked of transformers, which otherwise keeps the weights packed where it
    has a GGUF kernel) and marked plain (:func:`plain_weights`)."""
    if auto_class is None:
        from transformers import AutoModelForCausalLM as auto_class
    ref = resolve(name, **hub)
    _check_local_config(ref)
    kwargs = ref.load_kwargs()
    if ref.gguf_file:
        try:
            from transformers.utils.quantization_config import GgufConfig
        except ImportError:  # a transformers without it (5.16) always dequantizes GGUF files
            pass
        else:  # else, with a GGUF kernel installed, the weights would stay packed
            kwargs["quantization_config"] = GgufConfig(dequantize=True)
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        model = auto_class.from_pretrained(ref.source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _refusal("model", ref, exc) from None
    if ref.gguf_file and _gguf_source(model) is None:  # asked to dequantize, it left no mark
        _say_dequantized(model, ref.gguf_file)
        return model
    return plain_weights(model)


def model_file(model, filename: str) -> Path | None:
    """``filename`` beside a model's weights, if it has one: in the directory it was loaded
    from, or in its Hub repo (from the cache when offline). ``model`` is a model (its
    ``name_or_path``), a name or a :class:`ModelRef`; None when there is no such file."""
    if isinstance(model, ModelRef | str | os.PathLike):
        name = model
    else:
        config = getattr(model, "config", None)
        name = getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None)
        if not name:
            return None
    try:
        ref = resolve(name)
    except HFTError:
        return None
    if ref.local:
        found = Path(ref.source) / filename
        return found if found.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    revision = ref.revision or getattr(getattr(model, "config", None), "_commit_hash", None)
    try:
        return Path(hf_hub_download(ref.source, filename, revision=revision, token=ref.token))
    except LocalEntryNotFoundError:  # offline, and never fetched: absent is a guess, said once
        if (ref.source, filename) not in _GUESSED_ABSENT:
            _GUESSED_ABSENT.add((ref.source, filename))
            logger.warning(
                f"HFT: cannot tell whether {ref.name} has {filename}: the Hub is offline and "
                "the cache does not have it; going on as if it has none"
            )
        return None
    except EntryNotFoundError:  # the repo has no such file
        return None
    except Exception as exc:  # no such repo, no access: huggingface_hub's own errors
        raise HFTError(f"cannot look for {filename} in {ref.name}: {_first_line(exc)}") from None


# Where an HFT trainer's train() records the mask it trained with, on the model object.
RECORD_ATTR = "_hft_trained_mask"


def record_trained_mask(model, mask: HFTMask) -> None:
    """Note on ``model`` that it was trained with ``mask`` (read by the next stage's rule)."""
    setattr(model, RECORD_ATTR, mask)


def previous_stage(model) -> PreviousStage | None:
    """The model's previous HFT stage: recorded on the object, else ``hft_mask.json`` beside
    its weights, in its directory or its Hub repo (:func:`model_file`). ``model`` is a model
    or a name; None for a model without one."""
    if model is None:
        return None
    if not isinstance(model, str | os.PathLike):
        recorded = model.__dict__.get(RECORD_ATTR) if hasattr(model, "__dict__") else None
        if isinstance(recorded, HFTMask):
            return PreviousStage(recorded, "recorded on the model by its last HFT training")
    found = model_file(model, MASK_NAME)
    return PreviousStage(HFTMask.load(found), str(found)) if found is not None else None


def _gguf_source(model) -> str | None:
    quantizer = getattr(model, "hf_quantizer", None)
    config = getattr(quantizer, "quantization_config", None)
    method = getattr(getattr(config, "quant_method", None), "value", None)
    if method != "gguf":
        return None
    return getattr(config, "gguf_file", None) or "a GGUF file"


def _name_the_file(model, gguf_file: str) -> None:
    """Make ``name_or_path`` the GGUF file itself (the directory it names holds no config),
    so the stage rule and a saved half's ``base_model_name_or_path`` find the model again."""
    folder = getattr(model, "name_or_path", None)
    if not folder or str(folder).endswith(GGUF_SUFFIX) or os.path.isabs(gguf_file):
        return
    named = os.path.join(folder, gguf_file) if os.path.isdir(folder) else f"{folder}/{gguf_file}"
    model.name_or_path = named
    model.config.name_or_path = named


def plain_weights(model):
    """A model loaded from a GGUF file, made a plain float model: the quantized mark that
    transformers leaves on it (``hf_quantizer``, ``config.quantization_config``) is removed,
    so the Trainer trains it and ``save_pretrained`` writes a normal checkpoint. Says so
    once; a model whose GGUF weights stay quantized (packed, not float) is refused. Any
    other model is returned as it is."""
    source = _gguf_source(model)
    if source is None:
        return model
    packed = sorted({str(p.dtype) for p in model.parameters() if not p.dtype.is_floating_point})
    if packed:
        raise HFTError(
            f"this model keeps its GGUF weights quantized ({', '.join(packed)} tensors); HFT "
            "trains float weights: load it with quantization_config=GgufConfig(dequantize=True)"
        )
    del model.hf_quantizer
    model.is_quantized = False
    for config in {
        id(m.config): m.config for m in model.modules() if hasattr(m, "config")
    }.values():
        if getattr(config, "quantization_config", None) is not None:
            del config.quantization_config
    _say_dequantized(model, source)
    return model


def _say_dequantized(model, gguf_file: str) -> None:
    """Name the GGUF file as the model's source and say, once, that its float weights train."""
    _name_the_file(model, gguf_file)
    dtype = next(model.parameters()).dtype
    logger.warning(
        f"HFT: {gguf_file} was dequantized to {dtype} on load; training those weights and "
        "saving them as a normal checkpoint"
    )
