"""The benchmark's report: markdown tables (and a JSON summary) from the run records."""

from __future__ import annotations

from .frontier import FRACTIONS, add_deltas, best_lr, matched, paired, summarize_points


def fmt(s: dict, digits: int = 3) -> str:
    """``mean ± ci (n)``, or ``n/a``."""
    if not s or s.get("mean") is None:
        return "n/a"
    if s.get("ci") is None:
        return f"{s['mean']:+.{digits}f} (n={s['n']})"
    return f"{s['mean']:+.{digits}f} ± {s['ci']:.{digits}f}"


def frontier_section(records, base_scores, domain: str, reference: str = "fft") -> tuple[str, dict]:
    """Tables for one domain's grid: points, matched learning, best-lr, same-lr."""
    recs = [r for r in add_deltas(records, base_scores) if r["domains"] == [domain]]
    if not recs:
        return "", {}
    pts = summarize_points(recs)
    methods = sorted({r["method"] for r in recs}, key=lambda m: (m != reference, m))
    steps_list = sorted({r["steps"] for r in recs})
    lrs = sorted({r["lr"] for r in recs})
    seeds = sorted({r["seed"] for r in recs})
    lines = [f"### Domain `{domain}` ({len(seeds)} seeds: {seeds})", ""]
    lines += ["Grid means ± 95% CI over seeds (nats/token; learning: higher is more, "
              "forgetting: higher is worse).", "",
              "| method | lr | steps | learning | forgetting | held-out NLL change | probe acc change | diverged |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in sorted(pts, key=lambda p: (methods.index(p["method"]), p["steps"], p["lr"])):
        lines.append(
            f"| {p['method']} | {p['lr']:g} | {p['steps']} | {fmt(p['learning'])} | "
            f"{fmt(p['forgetting'])} | {fmt(p['heldout_change'])} | {fmt(p['probe_change'])} | "
            f"{p['diverged']} |"
        )
    summary: dict = {"domain": domain, "seeds": seeds, "points": pts, "matched": {}, "best_lr": {}}
    lines += ["", f"**Forgetting at matched learning, method − {reference}** (per seed: each "
              "method's envelope over the whole grid, lr × steps, read at the learning level; "
              "then mean ± 95% CI over seeds where both envelopes reach it; negative = forgets "
              "less than FFT).", "",
              "| method | " + " | ".join(f"at {f:.0%} of FFT's max learning" for f in FRACTIONS) + " |",
              "|---|---|---|---|"]  # fmt: skip
    for m in methods:
        if m == reference:
            continue
        rows = matched(recs, m, reference)
        summary["matched"][m] = rows
        cells = [f"{fmt(r['diff'])} (n={r['diff']['n']})" for r in rows]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lvl = matched(recs, reference, reference)
    lines += ["", "Levels (learning, nats/token): " + ", ".join(f"{r['level']:.3f}" for r in lvl)
              + f"; {reference}'s own forgetting there: "
              + ", ".join(fmt(r["method_forgetting"]) for r in lvl), ""]  # fmt: skip
    lines += ["**Each method at its own best-learning lr** (largest mean learning on the grid):",
              "", "| method | steps | best lr | learning | forgetting | forgetting − FFT's at FFT's best lr |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for steps in steps_list:
        ref_lr = best_lr(pts, reference, steps)
        for m in methods:
            lr = best_lr(pts, m, steps)
            if lr is None:
                continue
            p = next(p for p in pts if p["method"] == m and p["steps"] == steps and p["lr"] == lr)
            a = {
                r["seed"]: r["forgetting"]
                for r in recs
                if r["method"] == m
                and r["steps"] == steps
                and r["lr"] == lr
                and r["forgetting"] is not None
            }
            b = {
                r["seed"]: r["forgetting"]
                for r in recs
                if r["method"] == reference
                and r["steps"] == steps
                and r["lr"] == ref_lr
                and r["forgetting"] is not None
            }
            from .frontier import mean_ci

            d = mean_ci(a[s] - b[s] for s in sorted(set(a) & set(b)))
            summary["best_lr"][f"{m}@{steps}"] = dict(lr=lr, point=p, diff_vs_ref_best=d)
            lines.append(
                f"| {m} | {steps} | {lr:g} | {fmt(p['learning'])} | "
                f"{fmt(p['forgetting'])} | {fmt(d)} |"
            )
    lines += ["", "**Same lr (the paper's comparison; it measures a different thing: at one lr "
              "HFT also learns less, so less forgetting there is not forgetting *at the same "
              "learning*).** Paired differences method − FFT, at the largest step count "
              f"({steps_list[-1]}):", "",
              "| method | lr | learning − FFT | forgetting − FFT |", "|---|---|---|---|"]  # fmt: skip
    summary["same_lr"] = {}
    for m in methods:
        if m == reference:
            continue
        for lr in lrs:
            dl = paired(recs, m, reference, "learning", lr=lr, steps=steps_list[-1])
            df = paired(recs, m, reference, "forgetting", lr=lr, steps=steps_list[-1])
            summary["same_lr"][f"{m}@{lr:g}"] = dict(learning=dl, forgetting=df)
            lines.append(f"| {m} | {lr:g} | {fmt(dl)} | {fmt(df)} |")
    return "\n".join(lines) + "\n", summary


def high_lr_section(records, extra, base_scores, domain: str, reference: str = "fft") -> str:
    """Learning and forgetting at 3x and 10x the reference's best-learning lr on the grid
    (``records``); ``extra`` holds the runs at those lrs when they were not on the grid."""
    recs = [r for r in add_deltas(records, base_scores) if r["domains"] == [domain]]
    if not recs:
        return ""
    steps = max(r["steps"] for r in recs)
    best = best_lr(summarize_points(recs), reference, steps)
    recs += [r for r in add_deltas(extra, base_scores) if r["domains"] == [domain]]
    pts = summarize_points(recs)
    lines = [f"FFT's best-learning lr on the grid at {steps} steps on `{domain}`: {best:g}.", "",
             "| lr | method | learning | forgetting | learning − FFT | forgetting − FFT |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    lrs = sorted({r["lr"] for r in recs})
    for mult in (1, 3, 10):
        lr = next((x for x in lrs if abs(x / (best * mult) - 1) < 0.15), None)
        if lr is None:
            lines.append(f"| {mult}x = {best * mult:g} | (not in the grid) | | | | |")
            continue
        for p in pts:
            if p["lr"] != lr or p["steps"] != steps or p["ratio"] != 0.5:
                continue
            dl = paired(recs, p["method"], reference, "learning", lr=lr, steps=steps)
            df = paired(recs, p["method"], reference, "forgetting", lr=lr, steps=steps)
            lines.append(
                f"| {mult}x = {lr:g} | {p['method']} | {fmt(p['learning'])} | "
                f"{fmt(p['forgetting'])} | {fmt(dl)} | {fmt(df)} |"
            )
    return "\n".join(lines) + "\n"


def ratio_section(records, base_scores, domain: str) -> str:
    """hft-category at each ratio vs FFT at matched learning, on the seeds and step counts
    the extra ratios ran (the ratio-0.5 and FFT runs come from the frontier)."""
    recs = [r for r in add_deltas(records, base_scores) if r["domains"] == [domain]]
    extra = [r for r in recs if r["method"] == "hft-category" and r["ratio"] != 0.5]
    if not extra:
        return ""
    seeds, steps = sorted({r["seed"] for r in extra}), sorted({r["steps"] for r in extra})
    recs = [r for r in recs if r["seed"] in seeds and r["steps"] in steps]
    lines = [f"Grid: the frontier's lrs x steps {steps}, seeds {seeds}. Forgetting − FFT at "
             "matched learning (levels: fractions of FFT's max mean learning on these runs):", "",
             "| ratio | " + " | ".join(f"at {f:.0%} of FFT's max learning" for f in FRACTIONS) + " |",
             "|---|---|---|---|"]  # fmt: skip
    for ratio in sorted({r["ratio"] for r in recs if r["method"] == "hft-category"}):
        sub = [{**r, "method": f"hft-category@{ratio}"} for r in recs
               if r["method"] == "hft-category" and r["ratio"] == ratio]  # fmt: skip
        rows = matched(sub + [r for r in recs if r["method"] == "fft"], f"hft-category@{ratio}")
        lines.append(f"| {ratio} | " + " | ".join(f"{fmt(r['diff'])} (n={r['diff']['n']})"
                                                   for r in rows) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def stages_section(records, base_scores, reference: str = "fft") -> str:
    """Forgetting after 1, 2, 3 stages and each stage's task learning, vs the reference."""
    if not records:
        return ""
    from .frontier import mean_ci

    seq = records[0]["domains"]
    lines = [f"Sequence: {' → '.join(seq)}; lr {records[0]['lr']:g}, {records[0]['steps']} "
             f"steps per stage; seeds {sorted({r['seed'] for r in records})}.", "",
             "| method | forgetting after 1 | after 2 | after 3 | − FFT after 3 | "
             "mean learning of the 3 tasks at the end | − FFT |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    methods = sorted({r["method"] for r in records}, key=lambda m: (m != reference, m))

    def per_seed(m, stage, f):
        return {
            r["seed"]: f(r)
            for r in records
            if r["method"] == m and r["stage"] == stage and not r.get("diverged")
        }

    def forget(r):
        return r["knowledge_nll"] - base_scores["knowledge_nll"]

    def learn(r):
        return sum(base_scores[f"task_nll/{d}"] - r[f"task_nll/{d}"] for d in seq) / len(seq)

    last = len(seq) - 1
    for m in methods:
        cells = [fmt(mean_ci(per_seed(m, s, forget).values())) for s in range(len(seq))]
        a, b = per_seed(m, last, forget), per_seed(reference, last, forget)
        d = mean_ci(a[s] - b[s] for s in set(a) & set(b))
        la, lb = per_seed(m, last, learn), per_seed(reference, last, learn)
        dl = mean_ci(la[s] - lb[s] for s in set(la) & set(lb))
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {fmt(d)} | "
                     f"{fmt(mean_ci(la.values()))} | {fmt(dl)} |")  # fmt: skip
    return "\n".join(lines) + "\n"
