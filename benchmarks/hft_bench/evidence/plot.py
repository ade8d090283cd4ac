"""Frontier pictures (matplotlib, Agg): forgetting against learning, one point per grid cell."""

from __future__ import annotations

from pathlib import Path

from .frontier import envelope, summarize_points

COLORS = {
    "fft": "black",
    "hft-category": "tab:red",
    "hft-layer": "tab:orange",
    "hft-matrix": "tab:pink",
    "lora": "tab:blue",
    "badam": "tab:green",
    "fft-replay": "tab:gray",
}
MARKERS = ["o", "s", "^", "D"]


LEARNING = "learning: new-task NLL decrease (nats/token, higher = learned more)"
FORGETTING = "forgetting: base-knowledge NLL increase (nats/token)"


def frontier_png(records, path: Path, title: str, key=lambda r: r["method"], xlabel=LEARNING,
                 ylabel=FORGETTING) -> Path:  # fmt: skip
    """Mean (learning, forgetting) per (key, lr, steps) with 95% CI bars; envelope lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    groups: dict[str, list[dict]] = {}
    for r in records:
        if r.get("learning") is not None:
            groups.setdefault(key(r), []).append(r)
    all_steps = sorted({r["steps"] for r in records})
    for i, (name, rs) in enumerate(sorted(groups.items())):
        color = COLORS.get(name, f"C{i % 10}")
        pts = summarize_points(rs)
        for p in pts:
            ax.errorbar(
                p["learning"]["mean"],
                p["forgetting"]["mean"],
                xerr=p["learning"]["ci"] or 0,
                yerr=p["forgetting"]["ci"] or 0,
                fmt=MARKERS[all_steps.index(p["steps"]) % len(MARKERS)],
                color=color,
                ms=4,
                alpha=0.8,
                lw=0.8,
            )
        env = envelope((p["learning"]["mean"], p["forgetting"]["mean"]) for p in pts)
        ax.plot([x for x, _ in env], [y for _, y in env], "-", color=color, lw=1.5, label=name)
    ax.axhline(0, color="0.8", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    marks = ", ".join(f"{m}={s} steps" for m, s in zip(MARKERS, all_steps, strict=False))
    ax.set_title(f"{title}\n(points: mean over seeds, bars 95% CI; {marks}; lines: envelope)",
                 fontsize=9)  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def stages_png(records, base_scores, path: Path) -> Path:
    """Forgetting (base-knowledge NLL increase) after each stage, per method, mean +- CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .frontier import mean_ci

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for i, method in enumerate(sorted({r["method"] for r in records})):
        xs, ys, es = [], [], []
        for stage in sorted({r["stage"] for r in records}):
            vals = [r["knowledge_nll"] - base_scores["knowledge_nll"] for r in records
                    if r["method"] == method and r["stage"] == stage and "knowledge_nll" in r]  # fmt: skip
            s = mean_ci(vals)
            if s["mean"] is not None:
                xs.append(stage + 1)
                ys.append(s["mean"])
                es.append(s["ci"] or 0)
        ax.errorbar(xs, ys, yerr=es, marker="o", color=COLORS.get(method, f"C{i}"), label=method)
    ax.set_xlabel("stages done")
    ax.set_ylabel("forgetting (base-knowledge NLL increase)")
    ax.set_xticks([1, 2, 3])
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
