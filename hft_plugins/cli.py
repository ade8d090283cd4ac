"""The ``hft`` command: inspect a layout, half-reset a model, list plugins; plugins add more.

``hft demo`` and ``hft bench`` come from the ``hft-bench`` distribution (the evidence
harness) through the ``register_commands`` hook.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from . import registry
from .core import catalog
from .core.atomic import atomic_directory
from .core.config import SETTINGS, HFTConfig
from .core.errors import HFTError
from .core.mask import select
from .registry.manager import BUILTIN

# The tuned model's weights in any format, and shard indexes: never copied beside the
# half-reset weights that hft reset writes (they would be the tuned, not the reset, ones)
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".gguf",
    ".h5",
    ".msgpack",
    ".onnx",
    ".tflite",
    ".ckpt",
    ".index.json",
)


def _add_selection_args(parser: argparse.ArgumentParser) -> None:
    """One option per HFTConfig field, with its default and help: the config is the source."""
    for setting in SETTINGS:
        if setting.type is bool:
            parser.add_argument(
                setting.flag,
                action=argparse.BooleanOptionalAction,
                default=setting.default,
                help=setting.help,
            )
        else:
            parser.add_argument(
                setting.flag, type=setting.type, default=setting.default, help=setting.help
            )


def _config(args) -> HFTConfig:
    """The HFTConfig of the options :func:`_add_selection_args` added."""
    return HFTConfig(**{setting.field: getattr(args, setting.field) for setting in SETTINGS})


def _load_config(args):
    """A transformers config of ``args.model`` (a directory, a config.json, a Hub id, a .gguf
    file: integrations/models.py), or of ``tiny:FAMILY``."""
    if args.model.startswith("tiny:"):
        from .testing import tiny_config

        return tiny_config(args.model.removeprefix("tiny:"))
    from .integrations import models

    return models.load_config(args.model, revision=args.revision, token=args.token)


def _meta_model(config):
    """The model of ``config`` on the meta device: shapes without memory."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    with torch.device("meta"):
        for auto in (AutoModelForCausalLM, AutoModelForSeq2SeqLM):
            try:
                return auto.from_config(config)
            except ValueError:
                continue
        return AutoModel.from_config(config)  # neither (e.g. BERT): the bare model


def _load_model(name: str, revision: str | None, token: str | None):
    from transformers.utils import logging as hf_logging

    from .integrations import models

    hf_logging.disable_progress_bar()
    return models.load_model(name, revision=revision, token=token)


def _copy_non_weight_files(name: str, revision: str | None, token: str | None, staging: Path):
    """The tuned model's tokenizer and other files beside its weights, into ``staging``: from
    its directory or Hub snapshot; a GGUF file's tokenizer from its header."""
    from .integrations import models

    ref = models.resolve(name, revision=revision, token=token)
    if ref.gguf_file:
        models.load_tokenizer(ref).save_pretrained(staging)
        return
    folder = Path(ref.source)
    if not ref.local:
        from huggingface_hub import snapshot_download

        # only the files at the top of the repo are copied: no folder is downloaded
        patterns = ["*/*", *(f"*{suffix}" for suffix in WEIGHT_SUFFIXES)]
        folder = Path(snapshot_download(ref.source, ignore_patterns=patterns, **ref.hub_kwargs()))
    for item in folder.iterdir():
        if (
            item.is_file()
            and not item.name.endswith(WEIGHT_SUFFIXES)
            and not (staging / item.name).exists()
        ):
            shutil.copy2(item, staging / item.name)


def cmd_inspect(args) -> int:
    model = _meta_model(_load_config(args))
    print(select(model, _config(args)).summary())
    return 0


def cmd_reset(args) -> int:
    from .core.reset import half_reset

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise HFTError(f"output directory {out} exists; pass --overwrite to replace it")
    base = _load_model(args.base, args.base_revision, args.token)
    tuned = _load_model(args.tuned, args.tuned_revision, args.token)
    mask = select(tuned, _config(args))
    half_reset(base, tuned, mask)
    with atomic_directory(out) as staging:  # a crash never leaves a half-written output
        tuned.save_pretrained(staging)
        _copy_non_weight_files(args.tuned, args.tuned_revision, args.token, staging)
        mask.save(staging / "hft_reset_mask.json")
    done, total = mask.fractions()["blocks"]
    print(f"half-reset {done:,} of {total:,} block parameters to {args.base}; wrote {out}")
    return 0


def cmd_plugins(args) -> int:
    pm = registry.manager()
    print("plugins:")
    for name, plugin in pm.list_name_plugin():
        if name.startswith(f"{BUILTIN}:"):
            name, origin = BUILTIN, f"built in: {plugin.__name__}"
        else:
            origin = getattr(plugin, "__name__", repr(plugin))
        print(f"  {name:<24} {origin}")
    print("strategies:")
    for name, entry in sorted(catalog.strategies().items()):
        print(f"  {name:<24} [{entry.source}] {entry.help}")
    print("layouts:")
    for name, entry in catalog.layout_entries().items():
        print(f"  {name:<24} [{entry.source}] model types: {entry.help or '-'}")
    for name, reason in registry.failures().items():
        print(f"skipped plugin {name}: {reason}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hft", description="Half Fine-Tuning tools")
    sub = parser.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser("inspect", help="print which half a strategy trains, per block")
    inspect.add_argument(
        "model", help="model directory, config.json, Hub id, .gguf file, or tiny:FAMILY"
    )
    inspect.add_argument("--revision", help="Hub revision (branch, tag or commit) of the model")
    inspect.add_argument("--token", help="Hub token (default: the one huggingface_hub finds)")
    _add_selection_args(inspect)
    inspect.set_defaults(run=cmd_inspect)

    reset = sub.add_parser("reset", help="write the paper's half-reset model")
    model = "directory, config.json, Hub id or .gguf file"
    reset.add_argument("--base", required=True, help=f"the base model: {model}")
    reset.add_argument("--tuned", required=True, help=f"the fine-tuned model: {model}")
    reset.add_argument("--base-revision", help="Hub revision of --base")
    reset.add_argument("--tuned-revision", help="Hub revision of --tuned")
    reset.add_argument("--token", help="Hub token (default: the one huggingface_hub finds)")
    reset.add_argument("--out", required=True, help="where to write the half-reset model")
    reset.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_selection_args(reset)
    reset.set_defaults(run=cmd_reset)

    listing = sub.add_parser("plugins", help="list plugins, strategies and layouts")
    listing.set_defaults(run=cmd_plugins)

    registry.notify("register_commands", subparsers=sub)
    parser.commands = sub.choices  # name -> parser, the plugins' included
    return parser


# commands that come with the evidence harness, not with this package
HARNESS_COMMANDS = ("demo", "bench", "toy")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in HARNESS_COMMANDS and argv[0] not in parser.commands:
        print(
            f"hft: error: 'hft {argv[0]}' comes with hft-bench, the evidence harness of "
            "hft-plugins, which is not installed here",
            file=sys.stderr,
        )
        return 2
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except HFTError as exc:
        print(f"hft: error: {exc}", file=sys.stderr)
        return 2
