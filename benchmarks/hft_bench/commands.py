"""``hft demo`` and ``hft bench`` (forgetting, step), added to the ``hft`` console script
by a plugin hook.

This module is the harness's entry point in the ``hft_plugins`` group: its
``register_commands`` hook adds the parsers; ``run_demo(args)``, ``run_bench(args)`` and
``run_step(args)`` run them and return an exit code. Bad input raises HFTError (one line) for the console
script to print.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from hft_plugins import hookimpl
from hft_plugins.core.catalog import strategies


def _command() -> str:
    return "hft " + " ".join(shlex.quote(a) for a in sys.argv[1:])


REAL_DEMO_LR = 5e-5
# the real-model demo's options (on `hft demo` itself); given before a toy
# demo's name (`hft demo --steps 5 tasks`) they would be read by nobody, so that is refused
REAL_DEMO_FLAGS = (
    "--model", "--steps", "--batch-size", "--heldout", "--answer-tokens", "--lr", "--seed",
    "--strategy",
)  # fmt: skip


def _real_dest(flag: str) -> str:
    return "real_" + flag[2:].replace("-", "_")


def _common_demo_options(parser, *, threads_default, threads_help) -> None:
    parser.add_argument("--out", default="hft-demo", help="directory for the results and pictures")
    parser.add_argument("--threads", type=int, default=threads_default, help=threads_help)


def _strategy_help() -> str:
    return f"HFT strategy ({', '.join(sorted(strategies()))} or a plugin's)"


def add_demo_parser(subparsers):
    from .chat_demo import Size
    from .evidence.corpus import DOMAINS
    from .tasks import SEQUENCE_TASKS

    size = Size()
    p = subparsers.add_parser(
        "demo",
        help="FFT vs HFT on a real chat model: what each learned, kept and cost",
        description="SmolLM2-135M-Instruct (or --model) taught a new task from WordNet "
        "('Define the word X') through TRL: SFTTrainer for full fine-tuning and "
        "HFTSFTTrainer(hft_config=HFTConfig()) for HFT, same rows, order, lr and steps. "
        "Prints what each learned (held-out words), what each forgot (drift from the base's "
        "own answers, world facts), trainable share, optimizer state, step time, the frozen "
        "half checked bit-identical, and a few prompts answered by base, FFT and HFT; writes "
        "results.json and demo.png. Under 5 minutes on 2 CPU cores. The toy settings are "
        "subcommands: `hft demo wordnet`, `hft demo tasks`.",
    )
    options = (  # flag, type, default, metavar, help
        ("--model", str, None, "MODEL",
         "a Hub id, a model directory or a .gguf file (SmolLM2-135M-Instruct)"),
        ("--steps", int, size.steps, "N", "optimizer steps per run"),
        ("--batch-size", int, size.batch_size, "N", "rows per step"),
        ("--heldout", int, size.heldout, "N", "held-out words scored for learning"),
        ("--answer-tokens", int, size.answer_tokens, "N",
         "greedy tokens per shown answer and per base answer that drift is read on"),
        ("--lr", float, REAL_DEMO_LR, "LR", "learning rate of both runs"),
        ("--seed", int, 0, "N", "seed of the HFT draw and of training"),
        ("--strategy", str, "category", "NAME", _strategy_help()),
    )  # fmt: skip
    for flag, kind, default, metavar, text in options:
        shown = f" ({default:g})" if isinstance(default, float) else f" ({default})"
        p.add_argument(flag, dest=_real_dest(flag), type=kind, default=default, metavar=metavar,
                       help=text + ("" if default is None or flag == "--strategy" else shown))  # fmt: skip
    _common_demo_options(
        p,
        threads_default=1,
        threads_help="torch CPU threads (1: the demo's timing holds on a busy machine; 2 or "
        "more is faster on an idle one)",
    )
    p.set_defaults(run=run_demo, setting=None)
    p.set_defaults(real_defaults={f: p.get_default(_real_dest(f)) for f in REAL_DEMO_FLAGS})
    toys = p.add_subparsers(dest="setting", metavar="{wordnet,tasks}")

    w = toys.add_parser(
        "wordnet",
        help="the toy base: a 455K-parameter model pretrained here on WordNet glosses",
        description="From the shipped base pretrained on WordNet glosses, fine-tune a new "
        "domain with full fine-tuning and with HFT over a short grid of learning rates and "
        "step counts; print forgetting at matched learning and draw the frontier (70-90 s on "
        "2 CPU cores; needs Debian's wordnet-base).",
    )
    w.add_argument("--domain", default="nouns_new", help=f"new domain: one of {', '.join(DOMAINS)}")
    w.add_argument("--seeds", default="0,1", help="comma list of seeds (0,1)")
    w.add_argument("--lr", type=float, default=1e-3, help="learning rate compared at one setting")
    w.add_argument("--strategy", default="category", help=_strategy_help())
    _common_demo_options(w, threads_default=1,
                         threads_help="torch CPU threads (1 is fastest on a shared machine)")  # fmt: skip
    w.set_defaults(run=run_wordnet_demo)

    t = toys.add_parser(
        "tasks",
        help="the harsh setting: a tiny model trained from scratch on synthetic tasks",
        description="A 171K-parameter model trained from scratch on synthetic character "
        "tasks, fine-tuned on a new one through TRL's SFTTrainer once with FFT and once with "
        "HFT; base-task retention, the new task's score and the cost of each run.",
    )
    t.add_argument("--task", default="shift", help=f"new task: one of {', '.join(SEQUENCE_TASKS)}")
    t.add_argument("--ratio", type=float, default=0.5, help="HFT ratio in (0, 1) (0.5)")
    t.add_argument("--seed", type=int, default=0, help="seed of the HFT draw and the data order")
    t.add_argument("--steps", type=int, default=150, help="optimizer steps per run (150)")
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate of both runs (1e-3)")
    t.add_argument("--strategy", default="category", help=_strategy_help())
    _common_demo_options(t, threads_default=1,
                         threads_help="torch CPU threads (1 is fastest on a shared machine)")  # fmt: skip
    t.set_defaults(run=run_tasks_demo)
    return p


def _refuse_misplaced_flags(args) -> None:
    from hft_plugins import HFTError

    for flag in REAL_DEMO_FLAGS:
        if getattr(args, _real_dest(flag)) != args.real_defaults[flag]:
            raise HFTError(
                f"{flag} before '{args.setting}' is an option of the real-model demo; "
                f"write it after the name: hft demo {args.setting} {flag} ..."
            )


def run_demo(args) -> int:
    """The real-model demo (``hft demo``)."""
    import torch

    from . import chat_demo

    torch.set_num_threads(max(1, args.threads))
    size = chat_demo.Size(
        steps=args.real_steps,
        batch_size=args.real_batch_size,
        heldout=args.real_heldout,
        answer_tokens=args.real_answer_tokens,
    )
    result = chat_demo.run_demo(
        model_name=args.real_model,
        size=size,
        lr=args.real_lr,
        strategy=args.real_strategy,
        seed=args.real_seed,
        out=args.out,
        command=_command(),
    )
    print(chat_demo.table(result))
    print(f"wrote {args.out}/results.json and {args.out}/demo.png ({result['wall_seconds']:.0f} s)")
    return 0


def run_tasks_demo(args) -> int:
    """``hft demo tasks``: the synthetic-task setting."""
    import torch

    from . import demo

    _refuse_misplaced_flags(args)
    torch.set_num_threads(max(1, args.threads))
    result = demo.run_demo(
        task=args.task,
        strategy=args.strategy,
        ratio=args.ratio,
        seed=args.seed,
        steps=args.steps,
        lr=args.lr,
        out=args.out,
        command=_command(),
    )
    print(demo.table(result))
    print(f"wrote {args.out}/results.json and {args.out}/demo.png ({result['wall_seconds']:.0f} s)")
    return 0


def run_wordnet_demo(args) -> int:
    """``hft demo wordnet``: the toy WordNet base's frontier."""
    import torch

    from hft_plugins import HFTError
    from hft_plugins.core.catalog import strategy as registered_strategy

    from .common import parse_seeds, writable_dir
    from .evidence.corpus import DOMAINS
    from .evidence.demo import run_demo as run_wordnet

    _refuse_misplaced_flags(args)
    torch.set_num_threads(max(1, args.threads))
    registered_strategy(args.strategy)  # an unknown strategy fails here, before any training
    if args.domain not in DOMAINS:
        raise HFTError(f"unknown domain {args.domain!r}; known: {', '.join(DOMAINS)}")
    out = writable_dir(args.out)
    result = run_wordnet(
        out, domain=args.domain, lr=args.lr, seeds=parse_seeds(args.seeds), strategy=args.strategy
    )
    print(f"wrote {out}/demo.json and {result['png']}")
    return 0


def add_bench_parser(subparsers):
    from .bench import DEFAULT_LRS
    from .methods import METHODS
    from .tasks import SEQUENCE_TASKS

    p = subparsers.add_parser("bench", help="built-in benchmarks")
    sub = p.add_subparsers(dest="bench", required=True)
    f = sub.add_parser(
        "forgetting",
        help="continual learning over a task sequence: R matrix, OP and BWT per method",
        description="Fine-tune the base model on each task in turn with every method; the "
        "learning rate of each method is the best of one grid on a tuning seed (mean "
        "new-task exact match on the val split).",
    )
    f.add_argument(
        "--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS)
    )
    f.add_argument("--seeds", default="0,1,2,3,4", help="comma list of seeds")
    f.add_argument("--steps", type=int, default=150, help="optimizer steps per stage")
    f.add_argument("--tasks", default=",".join(SEQUENCE_TASKS), help="comma list, in order")
    f.add_argument(
        "--lrs",
        default=",".join(f"{x:g}" for x in DEFAULT_LRS),
        help="learning-rate grid, the same for every method",
    )
    f.add_argument(
        "--eval-rows",
        type=int,
        default=100,
        help="held-out rows scored per task (the eval split has 200)",
    )
    f.add_argument("--workers", type=int, default=1, help="parallel processes")
    f.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    f.add_argument("--out", default="hft-bench-forgetting", help="directory for results")
    f.set_defaults(run=run_bench)
    from .step import options

    s = sub.add_parser(
        "step",
        help="step time, peak memory and optimizer state of HFT against FFT, hand-freezing, "
        "LoRA and BAdam",
        description="The step benchmark (python -m hft_bench.step, the same options): each "
        "method alone in its own process for memory, all taking turns for step time; prints "
        "the tables, a FLOP and bytes model and the targets.",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    options.add_arguments(s)
    s.set_defaults(run=run_step)
    return p


def run_step(args) -> int:
    from . import step
    from .step.options import finish, to_argv

    argv = to_argv(args)  # before finish() fills in the derived settings
    return step.run(finish(args), argv, "hft bench step")


def run_bench(args) -> int:
    import torch

    from hft_plugins import HFTError

    from . import bench
    from .common import parse_names, parse_seeds

    torch.set_num_threads(max(1, args.threads))
    try:
        lrs = [float(x) for x in parse_names(args.lrs)]
    except ValueError:
        raise HFTError(f"learning-rate grid {args.lrs!r} is not a comma list of numbers") from None
    result = bench.run_bench(
        methods_=parse_names(args.methods),
        seeds=parse_seeds(args.seeds),
        steps=args.steps,
        task_names=parse_names(args.tasks),
        out=args.out,
        lrs=lrs,
        workers=args.workers,
        threads=args.threads,
        eval_rows=args.eval_rows,
        command=_command(),
    )
    print(bench.table(result))
    print(
        f"wrote {args.out}/results.json and {args.out}/forgetting.png "
        f"({result['wall_seconds']:.0f} s)"
    )
    return 0


@hookimpl
def register_commands(subparsers):
    add_demo_parser(subparsers)
    add_bench_parser(subparsers)
