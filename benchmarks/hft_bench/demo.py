"""``hft demo``: from the cached base model, fine-tune one new task with FFT and with HFT.

Both runs go through TRL's real ``SFTTrainer`` (FFT) and the project's
``HFTSFTTrainer`` subclass of it (HFT), built in ``make_sft_trainer``, on the same
data, steps, learning rate and optimizer settings; afterwards the
base tasks are scored again (retention) and the new task for the first time.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time

from hft_plugins import HFTConfig, HFTError
from hft_plugins.core.atomic import atomic_write_text
from hft_plugins.core.optim import state_bytes

from . import engine, tasks
from .common import PeakRSS, progress_bar, writable_dir


def make_sft_trainer(model, args, train_dataset, tokenizer, hft_config: HFTConfig | None):
    """TRL's SFTTrainer for FFT; the project's HFTSFTTrainer (the drawn half only) for HFT."""
    from trl import SFTTrainer

    from hft_plugins.integrations.trl import HFTSFTTrainer

    kwargs = dict(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer)
    if hft_config is None:
        return SFTTrainer(**kwargs)
    return HFTSFTTrainer(**kwargs, hft_config=hft_config)


def _scores(model, names):
    return {
        n: {
            "exact": engine.exact_match(model, tasks.load(n, "eval")),
            "latent": engine.latent_score(model, tasks.load(n, "eval")),
        }
        for n in names
    }


def _finetune(base, task, hft_config, *, steps, lr, seed, batch_size, workdir):
    from datasets import Dataset
    from trl import SFTConfig

    from .tokenizer import char_tokenizer

    model = copy.deepcopy(base)
    model.train()
    total = sum(p.numel() for p in model.parameters())
    rows = [
        {"prompt": r["prompt"], "completion": r["completion"]} for r in tasks.load(task, "train")
    ]
    args = SFTConfig(
        output_dir=workdir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=max(1, steps // 5),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=seed,
        data_seed=seed,
        max_length=64,
        dataset_num_proc=None,
        disable_tqdm=False,
    )
    trainer = make_sft_trainer(model, args, Dataset.from_list(rows), char_tokenizer(), hft_config)
    trainable = total
    if hft_config is not None:
        trainable = trainer.hft_mask.trainable_numel
    with PeakRSS() as memory:
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    model.eval()
    return model, {
        "seconds_per_step": seconds / steps,
        "peak_rss_delta_mb": memory.peak_delta / 2**20,
        "optimizer_state_mb": state_bytes(trainer.optimizer) / 2**20,
        "trainable_fraction": trainable / total,
        "final_loss": next(
            (e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), None
        ),
    }


def run_demo(
    *,
    task="shift",
    strategy="category",
    ratio=0.5,
    seed=0,
    steps=150,
    lr=1e-3,
    batch_size=32,
    out="hft-demo",
    command="",
) -> dict:
    """Fine-tune ``task`` with FFT and HFT, score, write results.json and demo.png."""
    tasks.check_tasks([task])
    if task in tasks.BASE_TASKS:
        raise HFTError(
            f"task {task!r} is a base task; pick a new one: {', '.join(tasks.SEQUENCE_TASKS)}"
        )
    if steps < 1:
        raise HFTError(f"steps must be at least 1, got {steps}")
    hft_config = HFTConfig(strategy=strategy, ratio=ratio, seed=seed)
    from hft_plugins.core.catalog import strategy as registered_strategy

    registered_strategy(strategy)  # an unknown strategy fails here, before any training
    out = writable_dir(out)
    from .model import load_base

    started = time.perf_counter()
    base = load_base(progress_factory=progress_bar)
    names = [*tasks.BASE_TASKS, task]
    result = {
        "command": command,
        "task": task,
        "base_tasks": list(tasks.BASE_TASKS),
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "hft_config": hft_config.to_dict(),
        "before": _scores(base, names),
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as workdir:
        for label, cfg in (("fft", None), (f"hft-{strategy}", hft_config)):
            model, stats = _finetune(
                base,
                task,
                cfg,
                steps=steps,
                lr=lr,
                seed=seed,
                batch_size=batch_size,
                workdir=workdir,
            )
            result["runs"][label] = {"after": _scores(model, names), **stats}
    result["wall_seconds"] = time.perf_counter() - started
    atomic_write_text(out / "results.json", json.dumps(result, indent=1))
    plot(result, out / "demo.png")
    return result


def _base_mean(scores, base_tasks, metric):
    return sum(scores[n][metric] for n in base_tasks) / len(base_tasks)


def table(result: dict) -> str:
    """Retention of the base tasks, the new task's score and the cost of each run."""
    b, task = result["base_tasks"], result["task"]
    before = result["before"]
    lines = [
        f"{'run':<14} {'base exact':>10} {'base latent':>11} {task + ' exact':>13} "
        f"{'s/step':>7} {'peak RSS+':>9} {'optim state':>11} {'trainable':>9}",
        f"{'base model':<14} {_base_mean(before, b, 'exact'):>10.3f} "
        f"{_base_mean(before, b, 'latent'):>11.3f} {before[task]['exact']:>13.3f}",
    ]
    for label, run in result["runs"].items():
        after = run["after"]
        lines.append(
            f"{label:<14} {_base_mean(after, b, 'exact'):>10.3f} {_base_mean(after, b, 'latent'):>11.3f} "
            f"{after[task]['exact']:>13.3f} {run['seconds_per_step']:>7.3f} "
            f"{run['peak_rss_delta_mb']:>7.1f}MB {run['optimizer_state_mb']:>9.2f}MB "
            f"{100 * run['trainable_fraction']:>8.1f}%"
        )
    return "\n".join(lines)


def plot(result: dict, path) -> None:
    """Per task, exact and latent scores: base model, after FFT, after HFT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*result["base_tasks"], result["task"]]
    series = {"base model": result["before"]} | {k: v["after"] for k, v in result["runs"].items()}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(series)
    for ax, metric in zip(axes, ("exact", "latent"), strict=True):
        for i, (label, scores) in enumerate(series.items()):
            ax.bar(
                [x + i * width for x in range(len(names))],
                [scores[n][metric] for n in names],
                width,
                label=label,
            )
        ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(names))], names)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{metric} score per task (last = new task)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
