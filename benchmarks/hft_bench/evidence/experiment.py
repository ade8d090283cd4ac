"""The full benchmark: set-up, the grids, and the report written beside the records."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from hft_plugins import HFTError
from hft_plugins.core.atomic import atomic_write_text

from . import plot, report
from .base import BASE_SETTINGS, load_or_train, n_params
from .corpus import DOMAINS, build_corpus
from .frontier import add_deltas, best_lr, summarize_points
from .metrics import evaluate, make_evalset
from .runs import check_methods, run_grid, run_sequence

SEQUENCE = ("nouns_new", "verbs", "hypernym")
PARTS = ("frontier", "highlr", "stages", "ratio", "second")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Setup:
    corpus: object
    settings: dict
    model: object
    state: dict
    evalset: dict
    base_scores: dict
    info: dict


def setup(cache_dir=None, base_settings=None, corpus_sizes=None, wordnet_dir=None, log=_log):
    """WordNet splits, the base (cached), the evaluation items and the base's scores."""
    torch.set_num_threads(1)
    corpus = build_corpus(wordnet_dir, corpus_sizes)
    settings = {**BASE_SETTINGS, **(base_settings or {})}
    model, info = load_or_train(corpus, settings, cache_dir, log)
    evalset = make_evalset(corpus, DOMAINS)
    base_scores = evaluate(model, evalset)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    info = {**info, "params": n_params(model)}
    return Setup(corpus, settings, model, state, evalset, base_scores, info)


def parse_list(text: str, kind, what: str) -> list:
    try:
        out = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise HFTError(f"--{what}: cannot read {text!r} as a comma-separated list") from None
    if not out:
        raise HFTError(f"--{what} is empty")
    return out


def configs(domains, methods, lrs, steps, seeds, ratio=0.5, share=True):
    """Grid cells, seed outermost so that an interrupted run has whole seeds.

    With ``share`` (single-domain grids) a method other than BAdam runs once to the
    largest step count and is evaluated on the way at the smaller ones (``eval_at``);
    BAdam runs once per step count.
    """
    steps = sorted(steps)
    out = []
    for seed in seeds:
        for d in domains:
            for lr in lrs:
                for m in methods:
                    cell = dict(domains=list(d), method=m, lr=lr, seed=seed, ratio=ratio)
                    if share and len(d) == 1 and m != "badam" and len(steps) > 1:
                        out.append(dict(cell, steps=steps[-1], eval_at=steps[:-1]))
                    else:
                        out += [dict(cell, steps=s) for s in steps]
    return out


def run_benchmark(
    out: Path,
    *,
    seeds,
    lrs,
    steps,
    methods,
    domains=("nouns_new",),
    second_domain="hypernym",
    second_seeds=None,
    second_steps=None,
    ratios=(0.25, 0.75),
    stage_methods=("fft", "hft-category", "hft-layer", "hft-matrix", "fft-replay"),
    stage_lr=None,
    highlr_methods=None,
    payoff_seeds=None,
    parts=PARTS,
    log=_log,
    su: Setup | None = None,
) -> dict:
    """Run the requested parts into ``out`` (records JSON per part), then write the report."""
    t0 = time.perf_counter()
    methods = check_methods(methods)
    if "fft" not in methods:
        raise HFTError("--methods must include fft: everything is compared with it")
    for d in [*domains, *([second_domain] if second_domain else [])]:
        if d not in DOMAINS:
            raise HFTError(f"unknown domain {d!r}; known: {', '.join(DOMAINS)}")
    for p in parts:
        if p not in PARTS:
            raise HFTError(f"unknown part {p!r}; known: {', '.join(PARTS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    su = su or setup(log=log)
    base = dict(scores=su.base_scores, info=su.info, settings=su.settings)
    atomic_write_text(out / "base.json", json.dumps(base, indent=1) + "\n")
    run = partial(run_sequence, su.state, su.settings, su.corpus, su.evalset)
    grid = lambda cfgs, name: run_grid(cfgs, run, out / f"{name}.json", log, name)  # noqa: E731
    if "frontier" in parts:
        grid(configs([[d] for d in domains], methods, lrs, steps, seeds), "frontier")
    ps = payoff_seeds or seeds
    front_pts = lambda: summarize_points(  # noqa: E731
        add_deltas(_load(out / "frontier.json"), su.base_scores)
    )
    if "highlr" in parts:
        best = best_lr(front_pts(), "fft", steps[-1])
        if best is None:
            raise HFTError("the highlr part needs the frontier's FFT runs (run part frontier)")
        extra = [best * m for m in (3, 10) if all(abs(x / (best * m) - 1) > 0.15 for x in lrs)]
        hft = highlr_methods or [m for m in methods if m == "fft" or m.startswith("hft-")]
        if extra:
            grid(configs([domains[:1]], hft, extra, steps, ps), "highlr")
    if "stages" in parts:
        lr = stage_lr
        if lr is None:
            lr = best_lr(front_pts(), "fft", steps[0]) or lrs[len(lrs) // 2]
        grid(configs([list(SEQUENCE)], list(stage_methods), [lr], steps[:1], ps), "stages")
    if "ratio" in parts:
        cells = []
        for r in ratios:
            cells += configs([domains[:1]], ["hft-category"], lrs, steps, ps, ratio=r)
        grid(cells, "ratio")
    if "second" in parts and second_domain:
        s2 = second_seeds or seeds
        grid(configs([[second_domain]], methods, lrs, [second_steps or steps[-1]], s2), "second")
    text = write_report(out, su.base_scores, su.info)
    wall = time.perf_counter() - t0
    log(f"benchmark wall time {wall:.0f}s ({wall / 60:.1f} min); report: {out / 'report.md'}")
    return {"wall_s": wall, "report": text}


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text())["records"] if path.exists() else []


def write_report(out: Path, base_scores: dict, info: dict) -> str:
    """Markdown report and PNGs from whatever record files ``out`` holds."""
    out = Path(out)
    sections = ["# Evidence benchmark report", "", "Base scores: " + ", ".join(
        f"{k} {v:.4f}" for k, v in base_scores.items()) + f" ({info.get('params')} parameters)", ""]  # fmt: skip
    summary = {}
    front = _load(out / "frontier.json")
    for domain in sorted({r["domains"][0] for r in front if len(r["domains"]) == 1}):
        text, summ = report.frontier_section(front, base_scores, domain)
        high = _load(out / "highlr.json")
        sections += [f"## Frontier: {domain}", "", text, "### LR 3x and 10x FFT's best", "",
                     report.high_lr_section(front, high, base_scores, domain)]  # fmt: skip
        summary[f"frontier/{domain}"] = summ
        recs = [r for r in add_deltas(front, base_scores) if r["domains"] == [domain]]
        plot.frontier_png(recs, out / f"frontier-{domain}.png", f"Base knowledge vs {domain}")
    second = _load(out / "second.json")
    if second:
        domain = second[0]["domains"][0]
        text, summ = report.frontier_section(second, base_scores, domain)
        sections += [f"## Second domain: {domain}", "", text]
        summary[f"second/{domain}"] = summ
        recs = [r for r in add_deltas(second, base_scores) if r["domains"] == [domain]]
        plot.frontier_png(recs, out / f"frontier-{domain}.png", f"Base knowledge vs {domain}")
    ratio = _load(out / "ratio.json")
    if ratio and front:
        domain = ratio[0]["domains"][0]
        mixed = ratio + [r for r in front if r["method"] in ("fft", "hft-category")]
        sections += ["## HFT ratio (hft-category)", "",
                     report.ratio_section(mixed, base_scores, domain)]  # fmt: skip
        recs = [r for r in add_deltas(mixed, base_scores) if r["domains"] == [domain]]
        seeds = {r["seed"] for r in ratio}
        recs = [r for r in recs if r["seed"] in seeds]
        plot.frontier_png(recs, out / "frontier-ratio.png", f"hft-category ratio vs FFT, {domain}",
                          key=lambda r: r["method"] if r["method"] == "fft" else f"ratio {r['ratio']}")  # fmt: skip
    stages = _load(out / "stages.json")
    if stages:
        sections += ["## Number of stages", "", report.stages_section(stages, base_scores)]
        plot.stages_png(stages, base_scores, out / "stages.png")
    text = "\n".join(sections)
    atomic_write_text(out / "report.md", text + "\n")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return text
