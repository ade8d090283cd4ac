"""The ``hft`` command: inspect a layout, half-reset a model, list plugins; plugins add more.

``hft demo`` and ``hft bench`` come from the ``hft-bench`` distribution in ``benchmarks/``
through the ``register_commands`` hook.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

from . import registry
from .core import catalog
from .core.atomic import atomic_directory
from .core.config import HFTConfig
from .core.errors import HFTError
from .core.mask import select
from .registry.manager import BUILTIN

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _add_selection_args(parser: argparse.ArgumentParser) -> None:
    """One option per HFTConfig field, with its default and help: the config is the source."""
    from .integrations._common import SETTINGS

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
    return HFTConfig(
        **{spec.name: getattr(args, spec.name) for spec in dataclasses.fields(HFTConfig)}
    )


def _load_config(path: str):
    """A transformers config from a model directory, a config.json, or ``tiny:FAMILY``."""
    from transformers import AutoConfig

    if path.startswith("tiny:"):
        from .tiny import tiny_config

        return tiny_config(path.removeprefix("tiny:"))
    target = Path(path)
    if target.is_dir():
        target = target / "config.json"
    if not target.is_file():
        raise HFTError(f"no config.json at {path}")
    try:
        return AutoConfig.from_pretrained(str(target))
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HFTError(f"cannot read model config {target}: {first}") from None


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


def _load_model(path: str, what: str):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if not (Path(path) / "config.json").is_file():
        raise HFTError(f"{what} model directory {path} has no config.json")
    try:
        return AutoModelForCausalLM.from_pretrained(path)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HFTError(f"cannot load {what} model from {path}: {first}") from None


def cmd_inspect(args) -> int:
    model = _meta_model(_load_config(args.model))
    print(select(model, _config(args)).summary())
    return 0


def cmd_reset(args) -> int:
    from .core.reset import half_reset

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise HFTError(f"output directory {out} exists; pass --overwrite to replace it")
    base = _load_model(args.base, "base")
    tuned = _load_model(args.tuned, "tuned")
    mask = select(tuned, _config(args))
    half_reset(base, tuned, mask)
    with atomic_directory(out) as staging:  # a crash never leaves a half-written output
        tuned.save_pretrained(staging)
        for item in Path(args.tuned).iterdir():  # tokenizer and other non-weight files
            if (
                item.is_file()
                and not item.name.endswith(WEIGHT_SUFFIXES)
                and not (staging / item.name).exists()
            ):
                shutil.copy2(item, staging / item.name)
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
    inspect.add_argument("model", help="model directory, config.json, or tiny:FAMILY")
    _add_selection_args(inspect)
    inspect.set_defaults(run=cmd_inspect)

    reset = sub.add_parser("reset", help="write the paper's half-reset model")
    reset.add_argument("--base", required=True, help="the base model directory")
    reset.add_argument("--tuned", required=True, help="the fine-tuned model directory")
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
HARNESS_COMMANDS = ("demo", "bench")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in HARNESS_COMMANDS and argv[0] not in parser.commands:
        print(
            f"hft: error: 'hft {argv[0]}' comes with the hft-bench harness: run `make demo` "
            "in a clone of hft-plugins, or `pip install -e benchmarks` there",
            file=sys.stderr,
        )
        return 2
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except HFTError as exc:
        print(f"hft: error: {exc}", file=sys.stderr)
        return 2
