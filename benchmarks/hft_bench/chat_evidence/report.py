"""The report of the chat-model benchmark: markdown tables and pictures from its records.

Learning is a task's held-out NLL decrease against the base (one stage: ``define``'s; the
sequence: the mean over its three tasks after the last stage). Each forgetting measure is
an increase against the base, in nats/token: behaviour drift, the end-of-turn token, world
facts, held-out prose. For each, forgetting is read at matched learning off each method's
envelope per seed (``evidence.frontier``), never extrapolated, and method - FFT is averaged
over the seeds where both reach the level, with a 95% t interval.
"""

from __future__ import annotations

import json
from pathlib import Path

from hft_plugins.core.atomic import atomic_write_text

from ..evidence.frontier import FRACTIONS, matched, mean_ci, summarize_points
from ..evidence.plot import frontier_png
from ..evidence.report import fmt
from . import tasks as chat_tasks

FORGETTING = {  # name -> (record key, what it measures)
    "drift": ("drift_nll", "NLL of the base's own answers to held-out general prompts"),
    "turn end": ("turn_end_nll", "-log p(end of turn) after the base's finished answers"),
    "facts": ("facts_nll", "NLL of the world facts the base gets right"),
    "text": ("text_nll", "NLL of held-out prose (Python's documentation)"),
}
CHANGES = tuple(f"{name} change" for name in FORGETTING) + ("facts choice change",)
METRICS = ("learning", "forgetting", *CHANGES)
REFERENCE = "fft"


def learning(record: dict, base: dict) -> float | None:
    """Held-out NLL decrease of the record's tasks (their mean), against the base."""
    names = list(dict.fromkeys(record["domains"]))
    return sum(base[f"task_nll/{n}"] - record[f"task_nll/{n}"] for n in names) / len(names)


def with_deltas(records, base: dict, forgetting: str = "drift") -> list[dict]:
    """Records with ``learning``, ``forgetting`` (by the named measure) and every change
    against the base; a diverged run has none."""
    key = FORGETTING[forgetting][0]
    out = []
    for r in records:
        if r.get("diverged"):
            out.append({**r, "learning": None, "forgetting": None})
            continue
        changes = {f"{n} change": r[k] - base[k] for n, (k, _) in FORGETTING.items()}
        changes["facts choice change"] = r["facts_choice"] - base["facts_choice"]
        out.append({**r, "learning": learning(r, base), "forgetting": r[key] - base[key],
                    **changes})  # fmt: skip
    return out


def _diff(d: dict) -> str:
    """A matched difference: mean ± CI (n), the mean alone with one seed, or not reached."""
    if not d["n"]:
        return "not reached"
    return fmt(d) if d["ci"] is None else f"{fmt(d)} (n={d['n']})"


def _share(s: dict) -> str:
    """A share (accuracy): mean ± CI, no sign."""
    if s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:.3f}" + ("" if s["ci"] is None else f" ± {s['ci']:.3f}")


def _methods(records) -> list[str]:
    return sorted({r["method"] for r in records}, key=lambda m: (m != REFERENCE, m))


def matched_tables(records, base: dict, what: str) -> tuple[list[str], dict]:
    """Forgetting − FFT at matched learning, one table row per method and forgetting measure."""
    lines, summary = [], {}
    lines += [f"**Forgetting at matched {what}, method − FFT** (nats/token, mean ± 95% CI over "
              "seeds, n = seeds where both envelopes reach the level; negative = forgets less "
              "than FFT):", "",
              "| measure | method | " + " | ".join(f"at {f:.0%} of FFT's max learning"
                                                   for f in FRACTIONS) + " |",
              "|---|---|---|---|---|"]  # fmt: skip
    levels_line = ""
    for name in FORGETTING:
        recs = with_deltas(records, base, name)
        if not any(r["method"] == REFERENCE and r["learning"] is not None for r in recs):
            return [f"(no {REFERENCE} run to match learning against)"], {}
        own = matched(recs, REFERENCE, REFERENCE)
        lines.append(f"| {name} | FFT's own | " + " | ".join(fmt(r["method_forgetting"])
                                                           for r in own) + " |")  # fmt: skip
        levels_line = ", ".join(f"{r['level']:.3f}" for r in own)
        for m in _methods(recs):
            if m == REFERENCE:
                continue
            rows = matched(recs, m, REFERENCE)
            summary[f"{name}/{m}"] = rows
            lines.append(f"| {name} | {m} | " + " | ".join(_diff(r["diff"]) for r in rows) + " |")
    lines += ["", f"Learning levels (nats/token): {levels_line}. A measure that falls as "
              "learning rises (a model that ends its turns sooner, or reads prose better) gives "
              "envelopes of one point, read only at that point's learning: its changes are in "
              "the table above.", ""]  # fmt: skip
    return lines, summary


def points_table(records, base: dict) -> list[str]:
    """Mean ± CI over seeds of every change, per method, lr and steps."""
    recs = with_deltas(records, base)
    pts = summarize_points(recs, METRICS)
    methods = _methods(recs)
    lines = ["| method | lr | steps | learning | " + " | ".join(CHANGES) + " | diverged |",
             "|---|---|---|---|" + "---|" * len(CHANGES) + "---|"]  # fmt: skip
    for p in sorted(pts, key=lambda p: (methods.index(p["method"]), p["steps"], p["lr"])):
        cells = " | ".join(fmt(p[c]) for c in CHANGES)
        lines.append(f"| {p['method']} | {p['lr']:g} | {p['steps']} | {fmt(p['learning'])} | "
                     f"{cells} | {p['diverged']} |")  # fmt: skip
    return lines


def paired_table(ends, base: dict, what: str) -> tuple[list[str], dict]:
    """Method - FFT at the same lr, paired by seed (the paper's comparison): learning and
    every forgetting measure, mean and 95% interval over the seeds where both ran."""
    measures = {"learning": None, **{n: k for n, (k, _) in FORGETTING.items()}}
    by_run = {(r["method"], r["lr"], r["seed"]): r for r in ends if not r.get("diverged")}
    lines = [f"**Same lr, paired by seed, method − FFT {what}** (the paper's comparison: "
             "a method that also learns less is not read at matched learning here; "
             "nats/token, mean ± 95% CI over seeds; negative forgetting = forgets less):", "",
             "| method | lr | " + " | ".join(measures) + " |",
             "|---|---|" + "---|" * len(measures)]  # fmt: skip
    summary = {}
    for m in _methods(ends):
        if m == REFERENCE:
            continue
        for lr in sorted({r["lr"] for r in ends}):
            pairs = [(r, by_run[(REFERENCE, lr, seed)]) for (mm, ll, seed), r in by_run.items()
                     if mm == m and ll == lr and (REFERENCE, lr, seed) in by_run]  # fmt: skip
            cells = {}
            for name, key in measures.items():
                if key is None:
                    diffs = (learning(a, base) - learning(f, base) for a, f in pairs)
                else:
                    diffs = (a[key] - f[key] for a, f in pairs)
                cells[name] = mean_ci(diffs)
            summary[f"{m}/{lr:g}"] = cells
            lines.append(f"| {m} | {lr:g} | " + " | ".join(fmt(c) for c in cells.values()) + " |")
    return lines + [""], summary


def single_section(records, base: dict, out: Path) -> tuple[list[str], dict]:
    seeds = sorted({r["seed"] for r in records})
    lines = [f"## One stage: `{chat_tasks.SINGLE}` (SFT)", "",
             f"Grid: lrs {sorted({r['lr'] for r in records})} × steps "
             f"{sorted({r['steps'] for r in records})} × seeds {seeds}. Learning: the task's "
             "held-out NLL decrease; changes against the base (nats/token; facts choice: "
             "accuracy).", ""]  # fmt: skip
    lines += points_table(records, base) + [""]
    steps = max(r["steps"] for r in records)
    paired, same_lr = paired_table([r for r in records if r["steps"] == steps], base,
                                   f"after {steps} steps")  # fmt: skip
    tables, summary = matched_tables(records, base, "learning")
    lines += paired + tables
    summary["same lr"] = same_lr
    recs = with_deltas(records, base, "drift")
    png = frontier_png(recs, out / "frontier-single.png", f"Behaviour drift vs {chat_tasks.SINGLE}",
                       xlabel="learning: held-out task NLL decrease (nats/token)",
                       ylabel="drift: NLL increase of the base's own answers (nats/token)")  # fmt: skip
    lines += [f"![frontier]({png.name})", ""]
    return lines, summary


def sequence_section(records, base: dict, out: Path) -> tuple[list[str], dict]:
    seq = records[0]["domains"]
    last = len(seq) - 1
    seeds = sorted({r["seed"] for r in records})
    lines = [f"## Sequence: {' → '.join(seq)} "
             f"({', '.join(chat_tasks.KINDS[n].upper() for n in seq)})", "",
             f"{records[0]['steps']} step{'s' * (records[0]['steps'] != 1)} per stage; lrs "
             f"{sorted({r['lr'] for r in records})}; "
             f"seeds {seeds}; a new HFT half each stage. Drift after each stage, the learning "
             "of the three tasks after the last (held-out NLL decrease, mean of the three) and "
             "the preference task's held-out accuracy at the end:", "",
             "| method | lr | drift after 1 | after 2 | after 3 | learning at the end | "
             "preference accuracy at the end |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    pref = next((f"pref_acc/{n}" for n in seq if chat_tasks.KINDS[n] == "dpo"), None)
    for m in _methods(records):
        for lr in sorted({r["lr"] for r in records}):
            mine = [r for r in records if r["method"] == m and r["lr"] == lr and not r["diverged"]]
            cells = [fmt(mean_ci(r["drift_nll"] - base["drift_nll"] for r in mine if r["stage"] == s))
                     for s in range(len(seq))]  # fmt: skip
            end = [r for r in mine if r["stage"] == last]
            acc = mean_ci(r[pref] for r in end) if pref else {}
            lines.append(f"| {m} | {lr:g} | " + " | ".join(cells) + f" | "
                         f"{fmt(mean_ci(learning(r, base) for r in end))} | {_share(acc)} |")  # fmt: skip
    ends = [r for r in records if r["stage"] == last or r["diverged"]]
    lines.append("")
    paired, same_lr = paired_table(ends, base, "at the end of the sequence")
    tables, summary = matched_tables(ends, base, "end-of-sequence learning")
    lines += paired + tables
    summary["same lr"] = same_lr
    png = frontier_png(with_deltas(ends, base, "drift"), out / "frontier-sequence.png",
                       "Behaviour drift vs learning, end of the sequence",
                       xlabel="learning: mean held-out NLL decrease of the three tasks",
                       ylabel="drift: NLL increase of the base's own answers (nats/token)")  # fmt: skip
    lines += [f"![sequence]({png.name})", ""]
    return lines, summary


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text())["records"] if path.exists() else []


def write_report(out) -> str:
    """``report.md`` and ``summary.json`` (and the pictures) from the records in ``out``."""
    out = Path(out)
    base_file = json.loads((out / "base.json").read_text())
    base, info = base_file["scores"], base_file["info"]
    lines = [f"# Forgetting on a real chat model: {info['model']}", "",
             f"{info['params']:,} parameters; sizes {base_file['sizes']}. Probes: "
             f"{info['drift_prompts']} general prompts (the base ended {info['base_ended_turn']} "
             f"of its answers), {info['facts_known']} of {info['facts']} world facts known, "
             f"{info['text_passages']} prose passages ({info['text_source']}).", "",
             "Base scores: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(base.items())), "",
             "Forgetting measures: " + "; ".join(f"**{n}**: {d}" for n, (_, d) in FORGETTING.items())
             + ".", ""]  # fmt: skip
    summary = {}
    single = [r for r in _load(out / "single.json") if len(r["domains"]) == 1]
    if single:
        text, summary["single"] = single_section(single, base, out)
        lines += text
    sequence = _load(out / "sequence.json")
    if sequence:
        text, summary["sequence"] = sequence_section(sequence, base, out)
        lines += text
    text = "\n".join(lines)
    atomic_write_text(out / "report.md", text + "\n")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return text
