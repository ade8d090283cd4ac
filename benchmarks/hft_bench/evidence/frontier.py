"""Forgetting against learning: envelopes, matched-learning interpolation, CIs.

- learning = base's task NLL - task NLL after fine-tuning (nats/token; higher = more).
- forgetting = knowledge NLL after - base's knowledge NLL (nats/token; higher = worse).
- A method's *envelope* (for one seed) is its Pareto-efficient runs over the grid (lr x
  steps): those that no other run beats on both learning (>=) and forgetting (<=),
  sorted by learning and joined by straight lines. Forgetting at a learning level L is
  read off that line; outside the envelope's learning range it is undefined (never
  extrapolated).
- Matched-learning comparison: per seed, forgetting(method, L) - forgetting(FFT, L),
  then the mean and a 95% t-interval over the seeds where both are defined.
"""

from __future__ import annotations

import math
from collections import defaultdict

from hft_plugins import HFTError

# two-sided 95% Student t quantiles by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip


def t95(df: int) -> float:
    if df < 1:
        raise HFTError(f"a confidence interval needs at least 2 values, got {df + 1}")
    keys = [k for k in sorted(_T95) if k <= df]
    return _T95[keys[-1]] if df <= 30 else 1.96


def mean_ci(values) -> dict:
    """Mean, 95% t half-width and n of finite ``values`` (half-width None when n < 2)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    n = len(vals)
    if n == 0:
        return {"mean": None, "ci": None, "n": 0}
    m = sum(vals) / n
    if n < 2:
        return {"mean": m, "ci": None, "n": 1}
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1))
    return {"mean": m, "ci": t95(n - 1) * sd / math.sqrt(n), "n": n}


def envelope(points) -> list[tuple[float, float]]:
    """Pareto-efficient (learning, forgetting) points, sorted by learning ascending."""
    pts = sorted({(float(x), float(y)) for x, y in points}, key=lambda p: (-p[0], p[1]))
    out, best = [], math.inf
    for x, y in pts:  # from most learning down: keep a point if it forgets less than all so far
        if y < best:
            out.append((x, y))
            best = y
    return out[::-1]


def interpolate(env, level: float) -> float | None:
    """Forgetting on the envelope at learning ``level``; None outside its learning range."""
    if not env:
        return None
    if level < env[0][0] or level > env[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(env, env[1:], strict=False):
        if x0 <= level <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (level - x0) / (x1 - x0)
    return env[-1][1]  # a single point, level equal to it


def add_deltas(records, base_scores) -> list[dict]:
    """Records with learning / forgetting / heldout / probe changes against the base."""
    out = []
    for r in records:
        if r.get("diverged"):
            out.append({**r, "learning": None, "forgetting": None})
            continue
        task = r[f"task_nll/{r['domain']}"]
        out.append(
            {
                **r,
                "learning": base_scores[f"task_nll/{r['domain']}"] - task,
                "forgetting": r["knowledge_nll"] - base_scores["knowledge_nll"],
                "heldout_change": r["heldout_nll"] - base_scores["heldout_nll"],
                "probe_change": r["probe_acc"] - base_scores["probe_acc"],
            }
        )
    return out


def _by(records, *keys):
    groups = defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


TOY_METRICS = ("learning", "forgetting", "heldout_change", "probe_change")


def summarize_points(records, metrics=TOY_METRICS) -> list[dict]:
    """Mean and CI of each of ``metrics`` per (method, ratio, lr, steps) over seeds."""
    rows = []
    for (method, ratio, lr, steps), rs in sorted(
        _by(records, "method", "ratio", "lr", "steps").items()
    ):
        row = dict(
            method=method,
            ratio=ratio,
            lr=lr,
            steps=steps,
            diverged=sum(bool(r.get("diverged")) for r in rs),
        )
        for m in metrics:
            row[m] = mean_ci(r.get(m) for r in rs)
        rows.append(row)
    return rows


FRACTIONS = (0.5, 0.75, 0.9)


def matched(records, method: str, reference: str = "fft", levels=None, fractions=FRACTIONS):
    """Forgetting of ``method`` minus ``reference`` at matched learning levels, per seed.

    ``levels`` default to ``fractions`` of the reference's largest mean learning over its
    grid. Returns one dict per level with the paired mean difference and its 95% CI.
    """
    ref_points = [p for p in summarize_points([r for r in records if r["method"] == reference])]
    if levels is None:
        best = max(
            (p["learning"]["mean"] for p in ref_points if p["learning"]["mean"] is not None),
            default=None,
        )
        if best is None:
            raise HFTError(f"no {reference} runs to match learning against")
        levels = [f * best for f in fractions]
    seeds = sorted({r["seed"] for r in records})
    out = []
    for level in levels:
        diffs, mine, theirs = [], [], []
        for seed in seeds:
            env = {}
            for name in (method, reference):
                pts = [
                    (r["learning"], r["forgetting"])
                    for r in records
                    if r["method"] == name and r["seed"] == seed and r["learning"] is not None
                ]
                env[name] = interpolate(envelope(pts), level)
            if env[method] is not None and env[reference] is not None:
                diffs.append(env[method] - env[reference])
                mine.append(env[method])
                theirs.append(env[reference])
        out.append(
            dict(
                method=method,
                reference=reference,
                level=level,
                diff=mean_ci(diffs),
                method_forgetting=mean_ci(mine),
                reference_forgetting=mean_ci(theirs),
                seeds=len(seeds),
            )
        )
    return out


def paired(records, method: str, reference: str, metric: str, **where) -> dict:
    """Mean and CI over seeds of metric(method) - metric(reference) at the same settings."""

    def pick(name):
        return {
            r["seed"]: r[metric]
            for r in records
            if r["method"] == name
            and all(r[k] == v for k, v in where.items())
            and r.get(metric) is not None
        }

    a, b = pick(method), pick(reference)
    return mean_ci(a[s] - b[s] for s in sorted(set(a) & set(b)))


def best_lr(points, method: str, steps: int, ratio: float = 0.5):
    """The lr with the largest mean learning for (method, steps, ratio), or None."""
    cands = [
        p
        for p in points
        if p["method"] == method
        and p["steps"] == steps
        and p["ratio"] == ratio
        and p["learning"]["mean"] is not None
    ]
    return max(cands, key=lambda p: p["learning"]["mean"])["lr"] if cands else None
