"""``hft toy forgetting``: continual learning over the synthetic tasks, method by method.

For each method and seed, start from the cached base model and fine-tune on the
sequence tasks one stage at a time. After every stage score every sequence task
and every base task, by exact match and by latent knowledge (docs/results.md).
R[i][j] = score on sequence task j after stage i; TRACE's metrics:
OP = mean_j R[T-1][j]; BWT = mean_{j<T-1} (R[T-1][j] - R[j][j]).

Learning rate, one rule for every method: run the sequence once per grid value on
a tuning seed that is not reported, and keep the value with the best mean new-task
exact match on the ``val`` split (mean of R_val[i][i]); ties go to the smaller
rate. The same grid runs give each method a retention-vs-new-task curve.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from hft_plugins import HFTError
from hft_plugins.core.atomic import atomic_write_text

from . import engine, methods, tasks
from .common import progress_bar, writable_dir

DEFAULT_LRS = (3e-4, 1e-3, 3e-3)
TUNING_SEED = 1000


def op_bwt(r: list[list[float]]) -> tuple[float, float]:
    """TRACE's overall performance and backward transfer of a T x T R matrix."""
    t = len(r)
    op = sum(r[t - 1]) / t
    bwt = sum(r[t - 1][j] - r[j][j] for j in range(t - 1)) / (t - 1) if t > 1 else 0.0
    return op, bwt


def _scores(model, names, split, rows_per_task):
    rows = {n: tasks.load(n, split)[:rows_per_task] for n in names}
    return (
        [engine.exact_match(model, rows[n]) for n in names],
        [engine.latent_score(model, rows[n]) for n in names],
    )


def run_sequence(job: dict) -> dict:
    """One method on the whole sequence for one seed and learning rate (a worker's job).

    A reported run (``split="eval"``) scores every task after every stage; a grid run
    (``split="val"``) scores only what the rule and the curves need: the new task's
    exact match after its stage and the base tasks' latent score at the end.
    """
    import torch

    torch.set_num_threads(job["threads"])
    from .model import build_model

    model = build_model()
    model.load_state_dict(job["base_state"])
    seq, general, split, n = job["tasks"], list(tasks.BASE_TASKS), job["split"], job["eval_rows"]
    grid = split == "val"
    out = {k: job[k] for k in ("method", "seed", "lr", "split")}
    if grid:
        out["new_task_exact"] = []
    else:
        out.update(exact=[], latent=[], general_exact=[], general_latent=[])
        out["general_before"] = _scores(model, general, split, n)
    start = time.perf_counter()
    for stage, name in enumerate(seq):
        model = methods.run_stage(
            job["method"],
            model,
            tasks.load(name, "train"),
            steps=job["steps"],
            lr=job["lr"],
            seed=job["seed"],
            stage=stage,
            batch_size=job["batch_size"],
        )
        if grid:
            out["new_task_exact"].append(engine.exact_match(model, tasks.load(name, split)[:n]))
            continue
        exact, latent = _scores(model, seq, split, n)
        g_exact, g_latent = _scores(model, general, split, n)
        out["exact"].append(exact)
        out["latent"].append(latent)
        out["general_exact"].append(g_exact)
        out["general_latent"].append(g_latent)
    if grid:
        out["base_latent_final"] = statistics.fmean(_scores(model, general, split, n)[1])
    out["seconds"] = time.perf_counter() - start
    return out


def _mean_std(values):
    values = list(values)
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def summarize(runs: list[dict]) -> dict:
    """Per method: OP/BWT (exact, latent), final base-task scores, mean R matrices."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        entry = {"lr": mine[0]["lr"], "seeds": [r["seed"] for r in mine]}
        for metric in ("exact", "latent"):
            pairs = [op_bwt(r[metric]) for r in mine]
            entry[f"op_{metric}"] = _mean_std(p[0] for p in pairs)
            entry[f"bwt_{metric}"] = _mean_std(p[1] for p in pairs)
            entry[f"new_task_{metric}"] = _mean_std(
                statistics.fmean(r[metric][i][i] for i in range(len(r[metric]))) for r in mine
            )
            entry[f"base_tasks_final_{metric}"] = _mean_std(
                statistics.fmean(r[f"general_{metric}"][-1]) for r in mine
            )
            t = len(mine[0][metric])
            entry[f"R_{metric}_mean"] = [
                [statistics.fmean(r[metric][i][j] for r in mine) for j in range(t)]
                for i in range(t)
            ]
        entry["seconds"] = _mean_std(r["seconds"] for r in mine)
        out[method] = entry
    return out


def pick_lr(grid_runs: list[dict]) -> dict[str, float]:
    """The documented rule: best mean new-task val exact match; ties to the smaller rate."""
    best = {}
    for run in sorted(grid_runs, key=lambda r: r["lr"]):
        score = statistics.fmean(run["new_task_exact"])
        if run["method"] not in best or score > best[run["method"]][0] + 1e-12:
            best[run["method"]] = (score, run["lr"])
    return {m: lr for m, (_, lr) in best.items()}


def curves(grid_runs: list[dict]) -> dict[str, list[tuple[float, float, float]]]:
    """Per method, over the grid: (lr, mean new-task exact, final base-task latent score)."""
    out: dict[str, list] = {}
    for run in sorted(grid_runs, key=lambda r: r["lr"]):
        new, kept = statistics.fmean(run["new_task_exact"]), run["base_latent_final"]
        out.setdefault(run["method"], []).append((run["lr"], new, kept))
    return out


MIN_MATCHED_SCORE = 0.05


def _interpolate(points, x):
    """Retention at new-task score ``x`` along a curve of (lr, new, kept) points, or None."""
    pts = sorted((p[1], p[2]) for p in points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1] if pts and math.isclose(pts[-1][0], x) else None


def matched_retention(method_curves: dict, reference: str = "fft") -> dict[str, dict | None]:
    """Per method: its and the reference's base-task retention at one new-task score.

    The score is the highest both curves reach; a method that never reaches
    ``MIN_MATCHED_SCORE`` gets None (it did not learn the new tasks at any lr).
    """
    if reference not in method_curves:
        return {}
    ref = method_curves[reference]
    out = {}
    for method, pts in method_curves.items():
        target = min(max(p[1] for p in pts), max(p[1] for p in ref))
        if method == reference or target < MIN_MATCHED_SCORE:
            out[method] = None
            continue
        out[method] = {
            "new_task_score": target,
            "retention": _interpolate(pts, target),
            "reference_retention": _interpolate(ref, target),
        }
    return out


def _run_all(jobs, workers, desc):
    bar = progress_bar(len(jobs), desc)
    results = []
    try:
        if workers <= 1:
            for job in jobs:
                results.append(run_sequence(job))
                bar.update(1)
        else:
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                for result in pool.map(run_sequence, jobs):
                    results.append(result)
                    bar.update(1)
    finally:
        bar.close()
    return results


def run_bench(
    *,
    methods_: list[str],
    seeds: list[int],
    steps: int,
    task_names: list[str],
    out,
    lrs=DEFAULT_LRS,
    batch_size: int = 32,
    workers: int = 1,
    threads: int = 1,
    eval_rows: int = 100,
    command: str = "",
) -> dict:
    """Tune, run, summarise, write results.json and forgetting.png to ``out``."""
    methods.check_methods(methods_)
    tasks.check_tasks(task_names)
    if len(task_names) < 2:
        raise HFTError("the forgetting benchmark needs at least 2 sequence tasks")
    if not seeds:
        raise HFTError("the seed list is empty; give seeds like 0,1,2,3,4")
    if steps < 1:
        raise HFTError(f"steps must be at least 1, got {steps}")
    if eval_rows < 1:
        raise HFTError(f"eval rows must be at least 1, got {eval_rows}")
    if not lrs:
        raise HFTError("the learning-rate grid is empty")
    out = writable_dir(out)
    from .model import load_base

    started = time.perf_counter()
    base = load_base(progress_factory=progress_bar)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    common = dict(
        tasks=list(task_names),
        steps=steps,
        batch_size=batch_size,
        base_state=state,
        threads=threads,
        eval_rows=eval_rows,
    )
    grid_jobs = [
        dict(common, method=m, seed=TUNING_SEED, lr=lr, split="val") for m in methods_ for lr in lrs
    ]
    if len(lrs) > 1:
        grid = _run_all(grid_jobs, workers, "lr grid")
    else:
        grid = []
    chosen = pick_lr(grid) if grid else {m: lrs[0] for m in methods_}
    jobs = [
        dict(common, method=m, seed=s, lr=chosen[m], split="eval") for m in methods_ for s in seeds
    ]
    runs = _run_all(jobs, workers, "benchmark")
    summary = summarize(runs)
    method_curves = curves(grid)
    matched = matched_retention(method_curves)
    result = {
        "command": command,
        "setting": {
            "sequence_tasks": list(task_names),
            "base_tasks": list(tasks.BASE_TASKS),
            "steps_per_stage": steps,
            "batch_size": batch_size,
            "seeds": seeds,
            "lr_grid": list(lrs),
            "tuning_seed": TUNING_SEED,
            "chosen_lr": chosen,
            "threads": threads,
            "workers": workers,
            "eval_rows_per_task": eval_rows,
            "trainable_fraction": {m: methods.trainable_fraction(m, base) for m in methods_},
        },
        "summary": summary,
        "runs": runs,
        "grid": grid,
        "curves": method_curves,
        "retention_at_matched_new_task_score_vs_fft": matched,
        "wall_seconds": time.perf_counter() - started,
    }
    atomic_write_text(out / "results.json", json.dumps(result, indent=1))
    atomic_write_text(out / "report.md", report(result))
    plot(result, out / "forgetting.png")
    return result


def table(result: dict) -> str:
    """The headline table: OP/BWT by exact match and latent score, mean +- std."""

    def ms(d):
        return f"{d['mean']:.3f}±{d['std']:.3f}"

    fr = result["setting"]["trainable_fraction"]
    head = (
        f"{'method':<13} {'lr':>7} {'train%':>7} {'OP exact':>13} {'BWT exact':>14} "
        f"{'OP latent':>13} {'BWT latent':>14} {'base kept(lat)':>15}"
    )
    lines = [head]
    for method, s in result["summary"].items():
        lines.append(
            f"{method:<13} {s['lr']:>7.0e} {100 * fr[method]:>6.1f}% {ms(s['op_exact']):>13} "
            f"{ms(s['bwt_exact']):>14} {ms(s['op_latent']):>13} {ms(s['bwt_latent']):>14} "
            f"{ms(s['base_tasks_final_latent']):>15}"
        )
    return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def report(result: dict) -> str:
    """Markdown: the headline table, retention at matched new-task score, every R matrix."""
    setting, summary = result["setting"], result["summary"]
    seq, base = setting["sequence_tasks"], setting["base_tasks"]

    def ms(d):
        return f"{d['mean']:.3f} ± {d['std']:.3f}"

    lines = [
        f"Sequence {' -> '.join(seq)}; base tasks {', '.join(base)}; {setting['steps_per_stage']} "
        f"steps per stage, batch {setting['batch_size']}; seeds {setting['seeds']}; "
        f"{setting['eval_rows_per_task']} eval rows per task; lr grid {setting['lr_grid']} "
        f"(tuning seed {setting['tuning_seed']}).",
        "",
        "| method | lr | trainable | OP exact | BWT exact | OP latent | BWT latent "
        "| new-task exact | base tasks after (exact) | base tasks after (latent) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, s in summary.items():
        lines.append(
            f"| {m} | {s['lr']:g} | {100 * setting['trainable_fraction'][m]:.1f}% "
            f"| {ms(s['op_exact'])} | {ms(s['bwt_exact'])} | {ms(s['op_latent'])} "
            f"| {ms(s['bwt_latent'])} | {ms(s['new_task_exact'])} "
            f"| {ms(s['base_tasks_final_exact'])} | {ms(s['base_tasks_final_latent'])} |"
        )
    matched = result["retention_at_matched_new_task_score_vs_fft"]
    if result["curves"]:
        lrs = [p[0] for p in next(iter(result["curves"].values()))]
        lines += [
            "",
            "Retention vs learning over the lr grid (tuning seed, val split): mean new-task exact "
            "match / base tasks' latent score after the last stage; then both interpolated at "
            "the highest new-task score the method and FFT both reach:",
            "",
            "| method | "
            + " | ".join(f"lr {lr:g}" for lr in lrs)
            + " | matched new-task score | kept (method) | kept (FFT) |",
            "|---|" + "---|" * (len(lrs) + 3),
        ]
        for m, pts in result["curves"].items():
            cells = " | ".join(f"{p[1]:.2f} / {p[2]:.2f}" for p in pts)
            hit = matched.get(m)
            tail = (
                "- | - | -"
                if hit is None
                else f"{hit['new_task_score']:.2f} | {_fmt(hit['retention'])} | "
                f"{_fmt(hit['reference_retention'])}"
            )
            lines.append(f"| {m} | {cells} | {tail} |")
    for metric in ("exact", "latent"):
        lines += ["", f"Mean R matrices ({metric}; row = after stage, column = task):", ""]
        for m, s in summary.items():
            lines += [
                f"{m}:",
                "",
                "| after stage | " + " | ".join(seq) + " |",
                "|---|" + "---|" * len(seq),
            ]
            for i, row in enumerate(s[f"R_{metric}_mean"]):
                lines.append(f"| {seq[i]} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """OP/BWT bars with std, and retention vs new-task score over the lr grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    names = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, metric in zip(axes[:2], ("exact", "latent"), strict=True):
        xs = range(len(names))
        for offset, key, label in ((-0.2, "op", "OP"), (0.2, "bwt", "BWT")):
            vals = [summary[n][f"{key}_{metric}"] for n in names]
            ax.bar(
                [x + offset for x in xs],
                [v["mean"] for v in vals],
                0.4,
                yerr=[v["std"] for v in vals],
                label=label,
                capsize=3,
            )
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(list(xs), names, rotation=30, ha="right")
        ax.set_title(f"{metric} score: OP and BWT (mean ± std over seeds)")
        ax.legend()
    ax = axes[2]
    for method, pts in result["curves"].items():
        ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", label=method)
    ax.set_xlabel("mean new-task exact match (val, lr grid)")
    ax.set_ylabel("base tasks, latent score after last stage")
    ax.set_title("retention vs learning (one point per lr)")
    if result["curves"]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
