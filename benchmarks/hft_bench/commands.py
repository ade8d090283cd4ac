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


SETTINGS = ("wordnet", "tasks")
# flags that only one setting reads; a flag given for the other is an error, not ignored
SETTING_FLAGS = {
    "wordnet": ("domain", "seeds"),
    "tasks": ("task", "ratio", "seed", "steps"),
}


def add_demo_parser(subparsers):
    from .evidence.corpus import DOMAINS
    from .tasks import SEQUENCE_TASKS

    p = subparsers.add_parser(
        "demo",
        help="FFT vs HFT from a small pretrained base: learning, forgetting, cost",
        description="wordnet (the default): from the shipped base pretrained on WordNet "
        "glosses, fine-tune a new domain with full fine-tuning and with HFT over a short grid "
        "of learning rates and step counts; print forgetting at matched learning and draw the "
        "frontier (70-90 s on 2 CPU cores; needs Debian's wordnet-base). tasks: the harsh setting, a "
        "tiny model trained from scratch on synthetic tasks, fine-tuned through TRL's "
        "SFTTrainer once with FFT and once with HFT.",
    )
    p.add_argument("--setting", choices=SETTINGS, default="wordnet", help="which demo")
    p.add_argument(
        "--strategy",
        default="category",
        help=f"HFT strategy ({', '.join(sorted(strategies()))} or a plugin's)",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate compared at one setting")
    p.add_argument("--out", default="hft-demo", help="directory for the results and pictures")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is fastest on a shared machine)",
    )
    wordnet = p.add_argument_group("--setting wordnet")
    wordnet.add_argument("--domain", help=f"new domain: one of {', '.join(DOMAINS)} (nouns_new)")
    wordnet.add_argument("--seeds", help="comma list of seeds (0,1)")
    tasks = p.add_argument_group("--setting tasks")
    tasks.add_argument("--task", help=f"new task: one of {', '.join(SEQUENCE_TASKS)} (shift)")
    tasks.add_argument("--ratio", type=float, help="HFT ratio in (0, 1) (0.5)")
    tasks.add_argument("--seed", type=int, help="seed of the HFT draw and of the data order (0)")
    tasks.add_argument("--steps", type=int, help="optimizer steps per run (150)")
    p.set_defaults(run=run_demo)
    return p


def _check_setting_flags(args) -> None:
    from hft_plugins import HFTError

    for setting, flags in SETTING_FLAGS.items():
        given = [f for f in flags if getattr(args, f) is not None]
        if setting != args.setting and given:
            raise HFTError(f"--{given[0]} applies to --setting {setting}, not {args.setting}")


def run_demo(args) -> int:
    import torch

    _check_setting_flags(args)
    torch.set_num_threads(max(1, args.threads))
    if args.setting == "wordnet":
        return _run_wordnet_demo(args)
    from . import demo

    result = demo.run_demo(
        task=args.task or "shift",
        strategy=args.strategy,
        ratio=0.5 if args.ratio is None else args.ratio,
        seed=args.seed or 0,
        steps=150 if args.steps is None else args.steps,
        lr=args.lr,
        out=args.out,
        command=_command(),
    )
    print(demo.table(result))
    print(f"wrote {args.out}/results.json and {args.out}/demo.png ({result['wall_seconds']:.0f} s)")
    return 0


def _run_wordnet_demo(args) -> int:
    from hft_plugins import HFTError
    from hft_plugins.core.catalog import strategy as registered_strategy

    from .common import parse_seeds, writable_dir
    from .evidence.corpus import DOMAINS
    from .evidence.demo import run_demo as run_wordnet

    registered_strategy(args.strategy)  # an unknown strategy fails here, before any training
    if args.domain is not None and args.domain not in DOMAINS:
        raise HFTError(f"unknown domain {args.domain!r}; known: {', '.join(DOMAINS)}")
    out = writable_dir(args.out)
    result = run_wordnet(
        out,
        domain=args.domain or "nouns_new",
        lr=args.lr,
        seeds=parse_seeds(args.seeds or "0,1"),
        strategy=args.strategy,
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
