"""A PEFT-style API for HFT: the same method names, our own classes.

PEFT cannot register a third-party method into ``get_peft_model``, so HFT offers the
names users know: ``get_hft_model``, ``print_trainable_parameters``,
``save_pretrained`` / ``HFTModel.from_pretrained`` / ``push_to_hub``, ``get_base_model``,
``unload``, ``merge_and_unload`` and ``disable_adapter``, with PEFT's arguments. A save
holds only the trained tensors (the trainable ranges of fused tensors) plus the config
and the mask, so it is the trainable fraction of a full checkpoint. ``disable_adapter``
needs the base values of the trained half: ``get_hft_model`` keeps a copy of them (their
bytes, the trainable half only), so a reference forward needs no second model.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..core.atomic import atomic_files
from ..core.config import HFTConfig, checked_config
from ..core.errors import HFTError
from ..core.mask import HFTMask, select
from ..core.optim import release
from ..core.stage import MASK_NAME
from ..core.units import range_key, range_view
from .model_card import hft_model_card
from .models import _first_line, _looks_local, load_model, plain_weights

__all__ = ["AutoHFTModelForCausalLM", "HFTModel", "get_hft_model", "reject_peft"]

WEIGHTS_NAME = "hft_model.safetensors"
CONFIG_NAME = "hft_config.json"
CARD_NAME = "README.md"
FORMAT = "hft-model/1"
# Written in this order: the weights file, which carries its own config and mask, commits a save.
SAVE_FILES = (WEIGHTS_NAME, CONFIG_NAME, MASK_NAME, CARD_NAME)


def get_hft_model(model: nn.Module, config: HFTConfig | None = None) -> HFTModel:
    """Draw ``config``'s half of ``model``, freeze the rest and wrap it PEFT-style."""
    config = checked_config(config) or HFTConfig()
    if isinstance(model, HFTModel):
        raise HFTError("the model is already an HFTModel; unwrap it with merge_and_unload() first")
    reject_peft(model)
    plain_weights(model)  # a GGUF-loaded model: trained and saved as a plain one (said once)
    return HFTModel(model, select(model, config))


def reject_peft(model: nn.Module) -> None:
    """HFT trains half of the base weights; a PEFT adapter freezes them all: refuse the mix."""
    if hasattr(model, "peft_config") or any(
        "lora_" in name for name, _ in model.named_parameters()
    ):
        raise HFTError(
            "HFT cannot be combined with a PEFT adapter on the same model: use one or the other"
        )


def _pieces(mask: HFTMask, model: nn.Module) -> dict[str, torch.Tensor]:
    """Tensor key -> view of what trains: whole tensors by name, slices as ``name[dim:a:b]``."""
    params = dict(model.named_parameters())
    return _cut(mask, lambda name: params[name].detach())


def _cut(mask: HFTMask, tensor_of) -> dict[str, torch.Tensor]:
    out = {}
    for name, slices in mask.params().items():
        tensor = tensor_of(name)
        if slices is None:
            out[name] = tensor
        else:
            for a, b in slices.ranges:
                view = range_view(tensor, slices.dim, a, b, slices.step)
                out[range_key(name, slices.dim, a, b, slices.step)] = view
    return out


def _of_state_dict(mask: HFTMask, state_dict: dict) -> dict[str, torch.Tensor]:
    """What trains, taken from a full state dict (the model's, or the HFTModel's keys)."""
    prefix = "base_model." if all(k.startswith("base_model.") for k in state_dict) else ""

    def tensor_of(name):
        if prefix + name not in state_dict:
            raise HFTError(f"state_dict= has no tensor {prefix + name!r}, which the mask trains")
        return state_dict[prefix + name]

    return _cut(mask, tensor_of)


def _save_directory(model_id, subfolder, **hub) -> Path:
    """The local directory of an HFT save: a path, or a Hub repo downloaded (or cached)."""
    name = os.fspath(model_id)
    local = Path(os.path.expanduser(name))
    if local.is_dir() or _looks_local(name):
        return local / subfolder if subfolder else local
    from huggingface_hub import snapshot_download

    inside = f"{subfolder}/" if subfolder else ""
    try:
        root = snapshot_download(name, allow_patterns=[inside + f for f in SAVE_FILES], **hub)
    except Exception as exc:  # offline, unknown repo, no access: huggingface_hub's own errors
        raise HFTError(
            f"no HFT save in {name}: not a local directory, and the Hub gave "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None
    return Path(root) / subfolder if subfolder else Path(root)


def _read_save(directory: Path) -> tuple[HFTMask, dict[str, torch.Tensor]]:
    """The mask and tensors of an HFT save. The weights file carries the mask it was saved
    with; ``hft_mask.json`` is its readable copy."""
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise HFTError(f"no HFT save in {directory}: {WEIGHTS_NAME} is missing")
    try:
        with safe_open(weights, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # safetensors raises its own error type for a bad file
        raise HFTError(f"corrupt HFT save {weights}: {exc}") from None
    if "hft_mask" not in metadata:
        raise HFTError(f"corrupt HFT save {weights}: it carries no mask")
    if metadata.get("format") != FORMAT:
        raise HFTError(
            f"unsupported HFT save {weights}: its format is {metadata.get('format')!r}, "
            f"this version reads {FORMAT!r}"
        )
    try:
        mask = HFTMask.from_json(json.loads(metadata["hft_mask"]))
    except json.JSONDecodeError as exc:
        raise HFTError(f"corrupt HFT save {weights}: its mask: {exc}") from None
    readable = directory / MASK_NAME
    if readable.is_file():
        try:
            same = HFTMask.load(readable) == mask
        except HFTError:
            same = False
        if not same:
            warnings.warn(
                f"{readable} is not the mask {WEIGHTS_NAME} was saved with (a save was "
                "interrupted after writing its weights); loading the weights' own mask; "
                "save again to rewrite it",
                stacklevel=3,
            )
    return mask, tensors


class HFTModel(nn.Module):
    """A model training one HFT half; forwards and answers attributes like the model itself."""

    def __init__(self, model: nn.Module, mask: HFTMask, *, is_trainable: bool = True):
        super().__init__()
        if is_trainable:
            mask.apply(model)
        else:
            mask.check(model)
            for param in model.parameters():
                param.requires_grad_(False)
        self.base_model = model
        self.hft_mask = mask
        self._base_values = {k: v.clone() for k, v in _pieces(mask, model).items()}
        # The model's own forward, so its signature (which the Trainer reads) shows through.
        self.forward = model.forward

    @property
    def hft_config(self) -> HFTConfig:
        return self.hft_mask.config

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
        base = super().__getattr__("base_model")
        try:
            return getattr(base, name)
        except AttributeError:
            if hasattr(type(base), name):
                raise  # a property of the model failed: its own error says why
            raise AttributeError(
                f"'{type(self).__name__}' object has no attribute '{name}' "
                f"(nor has the {type(base).__name__} it wraps)"
            ) from None

    def get_base_model(self) -> nn.Module:
        """The wrapped model (PEFT's name); it holds the tuned weights."""
        return self.base_model

    # ---- what trains --------------------------------------------------------

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameter counts; a fused tensor counts only its trainable ranges.
        A model loaded with ``is_trainable=False`` trains nothing."""
        total = sum(p.numel() for p in self.base_model.parameters())
        if not any(p.requires_grad for p in self.base_model.parameters()):
            return 0, total
        return self.hft_mask.trainable_numel, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )

    # ---- saving -------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        selected_adapters: list[str] | None = None,
        save_embedding_layers: str | bool = "auto",
        is_main_process: bool = True,
        path_initial_model_for_weight_conversion: str | None = None,
        *,
        state_dict: dict[str, torch.Tensor] | None = None,
        max_shard_size: int | str | None = None,
    ) -> None:
        """Write the trained tensors, config, mask and a model card into ``save_directory``.

        PEFT's arguments: only the main process writes; the save is one safetensors file
        (``max_shard_size`` is accepted and, as in PEFT, not used); ``state_dict`` (a
        gathered full state dict, as the Trainer passes under FSDP or DeepSpeed) supplies
        the tensors. Other files in the directory stay. Each file is written beside its
        name and renamed into place, the weights first: they carry their own config and
        mask, so a crash leaves the previous save or the new one loadable.
        """
        self._check_save_arguments(
            safe_serialization,
            selected_adapters,
            save_embedding_layers,
            path_initial_model_for_weight_conversion,
        )
        target = Path(save_directory)
        if target.exists() and not target.is_dir():
            raise HFTError(f"cannot save an HFT model to {target}: it is a file")
        if is_main_process:
            self._write(target, state_dict)

    def _check_save_arguments(self, safe, adapters, embedding_layers, initial) -> None:
        if safe is not True:
            raise HFTError(
                f"safe_serialization={safe!r}: HFT saves only safetensors (no pickled .bin)"
            )
        if adapters is not None and list(adapters) != ["default"]:
            raise HFTError(
                f"selected_adapters={list(adapters)!r}: an HFTModel has one half, 'default'"
            )
        trains_outer = any(
            u.block is None and u.category in ("embed", "head") and self.hft_mask.is_trainable(u)
            for u in self.hft_mask.partition.units
        )
        if embedding_layers is False and trains_outer:
            raise HFTError(
                "save_embedding_layers=False would leave out the embeddings and head this half "
                "trains; freeze them with HFTConfig(train_embeddings=False, train_head=False)"
            )
        if embedding_layers not in ("auto", True, False):
            raise HFTError(
                f"save_embedding_layers must be 'auto', True or False, got {embedding_layers!r}"
            )
        if initial is not None:
            raise HFTError(
                "path_initial_model_for_weight_conversion is for PiSSA/OLoRA/CorDA adapters; "
                "an HFT save already holds the trained tensors themselves"
            )

    def _saved_config(self) -> dict:
        name = getattr(self.base_model, "name_or_path", None)
        return {**self.hft_config.to_dict(), "base_model_name_or_path": str(name) if name else None}

    def _write(self, target: Path, state_dict=None, tags: list[str] | None = None) -> None:
        pieces = (
            _pieces(self.hft_mask, self.base_model)
            if state_dict is None
            else _of_state_dict(self.hft_mask, state_dict)
        )
        tensors = {k: v.detach().contiguous().cpu() for k, v in pieces.items()}
        config = self._saved_config()
        mask = json.dumps(self.hft_mask.to_json())
        old_card = target / CARD_NAME
        card = hft_model_card(
            old_card.read_text() if old_card.is_file() else None,
            self.hft_mask,
            base_model=config["base_model_name_or_path"],
            tags=tags or (),
        )
        with atomic_files(target, SAVE_FILES) as temporary:
            metadata = {"format": FORMAT, "hft_config": json.dumps(config), "hft_mask": mask}
            save_file(tensors, temporary[WEIGHTS_NAME], metadata=metadata)
            temporary[CONFIG_NAME].write_text(json.dumps(config, indent=2))
            temporary[MASK_NAME].write_text(mask)
            temporary[CARD_NAME].write_text(card)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = None,
        tags: list[str] | None = None,
        safe_serialization: bool = True,
    ):
        """Upload what :meth:`save_pretrained` writes, and nothing else, to the Hub repo
        ``repo_id`` (transformers' and PEFT's arguments)."""
        from huggingface_hub import HfApi

        self._check_save_arguments(safe_serialization, None, "auto", None)
        api = HfApi()
        repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        if revision is not None and not revision.startswith("refs/pr"):
            api.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            self._write(Path(folder), tags=list(tags or []))
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message or "Upload HFT model",
                commit_description=commit_description,
                token=token,
                revision=revision,
                create_pr=create_pr,
            )

    # ---- loading ------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module | str | os.PathLike,
        model_id: str | os.PathLike,
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: HFTConfig | None = None,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        token: bool | str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> HFTModel:
        """``model`` with the saved half put back: the tuned model, exactly.

        PEFT's arguments: ``model`` is a module, or a directory, Hub id or GGUF file
        (loaded by ``models.load_model``); ``model_id`` a save directory or a Hub repo;
        ``is_trainable=False`` (the default) freezes every parameter and sets eval mode,
        ``True`` trains the saved half again.
        """
        if adapter_name != "default":
            raise HFTError(f"adapter_name={adapter_name!r}: an HFTModel has one half, 'default'")
        hub = {"revision": revision, "token": token, "cache_dir": cache_dir}
        directory = _save_directory(model_id, subfolder, **hub)
        mask, saved = _read_save(directory)
        config = checked_config(config)
        if config is not None and config != mask.config:
            raise HFTError(
                f"config= (stage {config.stage}, seed {config.seed}) differs from the saved mask "
                f"(stage {mask.config.stage}, seed {mask.config.seed}); leave it out"
            )
        if isinstance(model, str | os.PathLike):  # a directory, Hub id or GGUF file
            model = load_model(model, token=token)  # (revision is the save's)
        plain_weights(model)
        mask.check(model)
        reject_peft(model)
        hft = cls(model, mask, is_trainable=bool(is_trainable))
        hft._copy_in(saved, directory)
        if not is_trainable:
            hft.eval()
        return hft

    @staticmethod
    def holds_hft_save(directory: str | os.PathLike) -> bool:
        return (Path(directory) / WEIGHTS_NAME).is_file()

    def load_hft_save(self, directory: str | os.PathLike) -> None:
        """Copy an HFT save of this model's half (a Trainer checkpoint) into it, in place."""
        mask, saved = _read_save(Path(directory))
        if mask != self.hft_mask:
            raise HFTError(
                f"HFT save in {directory} holds another half (stage {mask.config.stage}, seed "
                f"{mask.config.seed}) than this HFTModel trains (stage {self.hft_config.stage}, "
                f"seed {self.hft_config.seed})"
            )
        self._copy_in(saved, Path(directory))

    def _copy_in(self, saved: dict[str, torch.Tensor], directory: Path) -> None:
        expected = _pieces(self.hft_mask, self.base_model)
        if set(saved) != set(expected):
            odd = sorted(set(saved) ^ set(expected))[0]
            raise HFTError(f"HFT save in {directory} does not match its mask: tensor {odd!r}")
        with torch.no_grad():
            for key, view in expected.items():
                if saved[key].shape != view.shape:
                    raise HFTError(
                        f"HFT save in {directory}: {key!r} has shape {list(saved[key].shape)}, "
                        f"the model's is {list(view.shape)}"
                    )
                view.copy_(saved[key])

    # ---- leaving ------------------------------------------------------------

    def unload(self) -> nn.Module:
        """The base model without what training changed (PEFT's ``unload``): the trained
        half gets its base values back; every parameter trainable, as ``merge_and_unload``."""
        with torch.no_grad():
            for key, view in _pieces(self.hft_mask, self.base_model).items():
                view.copy_(self._base_values[key])
        return self.merge_and_unload()

    def merge_and_unload(
        self, progressbar: bool = False, safe_merge: bool = False, adapter_names=None
    ) -> nn.Module:
        """The plain model, every parameter trainable again (HFT has nothing to merge), its
        backward the model's own again (an HFTOptimizer on it is closed)."""
        _check_adapter_names(adapter_names)
        release(self.base_model)
        for param in self.base_model.parameters():
            param.requires_grad_(True)
        return self.base_model

    @contextlib.contextmanager
    def disable_adapter(self):
        """Inside, the trained half holds its base values: the model before tuning."""
        pieces = _pieces(self.hft_mask, self.base_model)
        tuned = {k: v.clone() for k, v in pieces.items()}
        with torch.no_grad():
            for key, view in pieces.items():
                view.copy_(self._base_values[key])
        try:
            yield self
        finally:
            with torch.no_grad():
                for key, view in pieces.items():
                    view.copy_(tuned[key])


class AutoHFTModelForCausalLM:
    """PEFT's ``AutoPeftModelForCausalLM`` for HFT saves: ``from_pretrained(hft_dir)`` loads the
    base model the save names (``base_model_name_or_path``: a directory, Hub id or GGUF file)
    and puts the saved half on top; the same model as
    ``HFTModel.from_pretrained(base_model, hft_dir)``."""

    def __init__(self, *args, **kwargs):
        raise HFTError(
            "AutoHFTModelForCausalLM is not built directly: use "
            "AutoHFTModelForCausalLM.from_pretrained(hft_dir)"
        )

    @classmethod
    def from_pretrained(
        cls,
        model_id: str | os.PathLike,
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: HFTConfig | None = None,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        token: bool | str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> HFTModel:
        """The tuned model of the HFT save ``model_id`` (a directory or a Hub repo; ``revision``
        is the save's). The base loads at its default revision, with ``token``."""
        hub = {"revision": revision, "token": token, "cache_dir": cache_dir}
        directory = _save_directory(model_id, subfolder, **hub)
        base = _saved_base_name(directory)
        try:
            model = load_model(base, token=token)
        except HFTError as exc:
            raise HFTError(f"the base model of the HFT save in {directory}: {exc}") from None
        return HFTModel.from_pretrained(
            model, directory, adapter_name, is_trainable, config, token=token
        )


def _saved_base_name(directory: Path) -> str:
    """``base_model_name_or_path`` of the HFT save in ``directory``, or a one-line refusal."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise HFTError(f"no HFT save in {directory}: {CONFIG_NAME} is missing")
    try:
        base = json.loads(path.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as exc:
        raise HFTError(f"no HFT save in {directory}: cannot read {CONFIG_NAME} ({exc})") from None
    if not base:
        raise HFTError(
            f"the HFT save in {directory} names no base model (it was built in code): "
            f"load it with HFTModel.from_pretrained(base_model, {str(directory)!r})"
        )
    return base


def _check_adapter_names(adapter_names) -> None:
    if adapter_names is not None and list(adapter_names) != ["default"]:
        raise HFTError(
            f"adapter_names={list(adapter_names)!r}: an HFTModel has one half, 'default'"
        )
