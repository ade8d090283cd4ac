#!/usr/bin/env python
"""Step time, peak memory and optimizer state of HFT against the tools users would pick instead.

Methods: ``fft`` (torch AdamW over everything), ``frozen`` (torch AdamW over the
mask's requires_grad parameters, nothing else: what hand-freezing gives),
``hft`` (HFTOptimizer), ``hft-fullgrad`` (HFTOptimizer with sliced_grad=False:
the whole weight gradient of fused projections, for item 3 of issue 5),
``lora`` (PEFT, r=16 on every block projection) and ``badam`` (the badam
package's BlockOptimizer, one transformer block at a time).

Peak memory and optimizer state come from each method running alone in its
own subprocess. Step time (``--timing interleaved``, the CPU default) comes from
one more subprocess holding every method's model, where the methods take turns:
each round runs ``--steps`` steps of every method, in an order rotated per
round, so drift on a busy machine hits all of them alike. ``--timing process``
(the CUDA default, since BAdam empties the CUDA cache at every step) times the
own-process runs instead, ``--repeats`` rounds of them. Step time is the median
over all timed steps. The parent also prints a FLOP and bytes model and the
floor: the HFT / FFT step-time ratio a perfect HFT would reach on this machine.

Full size (CPU, about 100M parameters, fp32):  python benchmarks/step.py
Fused projections (GPT-2 shaped):               python benchmarks/step.py --arch gpt2
Routed experts (Mixtral shaped, fft/frozen/hft): python benchmarks/step.py --arch moe
Smoke:  python benchmarks/step.py --hidden 64 --layers 2 --vocab 128 --steps 1 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

METHODS = ("fft", "frozen", "hft", "hft-fullgrad", "lora", "badam")
REGIMES = ("compute", "optimizer")
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
MOE_SKIPPED = {
    "lora": "not run for --arch moe (PEFT's LoRA targets nn.Linear; the experts are 3-D tensors)",
    "badam": "not run for --arch moe (the MoE row compares fft, frozen and hft only)",
}
ADAMW_BYTES_PER_ELEMENT = 7  # reads param, grad, exp_avg, exp_avg_sq; writes param and both moments
MARK = "STEP-RESULT "


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", choices=("llama", "gpt2", "moe"), default="llama")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=13)
    p.add_argument(
        "--intermediate", type=int,
        help="default: 8/3 hidden (llama), 4 hidden (gpt2); moe: per expert, llama's / --experts",
    )  # fmt: skip
    p.add_argument("--experts", type=int, default=8, help="moe: routed experts per block")
    p.add_argument("--top-k", type=int, default=2, help="moe: experts per token")
    p.add_argument("--heads", type=int, help="default: hidden / 64")
    p.add_argument("--kv-heads", type=int, help="default: --heads")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--steps", type=int, default=2, help="timed steps per method, regime and round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per method before them")
    p.add_argument("--repeats", type=int, default=4, help="rounds over all methods")
    p.add_argument(
        "--regime", default="compute,optimizer", help="comma list of: " + ", ".join(REGIMES)
    )
    p.add_argument("--compute-shape", default="8x256", help="batch x tokens of the compute regime")
    p.add_argument(
        "--optimizer-shape", default="1x32", help="batch x tokens of the optimizer regime"
    )
    p.add_argument(
        "--methods",
        help="comma list of: "
        + ", ".join(METHODS)
        + " (default: all but hft-fullgrad; with it for gpt2; moe: fft, frozen, hft)",
    )
    p.add_argument(
        "--model-impl", choices=("auto", "transformers", "torch"), default="auto",
        help="auto: transformers' model when it imports, else benchmarks/torch_llama.py (llama only)",
    )  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--timing", choices=("interleaved", "process"),
        help="interleaved: all methods in one process, taking turns each round (default on CPU);\n"
        "process: each method's own-process runs (default on CUDA: BAdam empties the cache)",
    )  # fmt: skip
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_out", help="also write every measurement as JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.heads = args.heads or max(1, args.hidden // 64)
    args.kv_heads = args.kv_heads or args.heads
    if args.intermediate is None:
        args.intermediate = (
            4 * args.hidden if args.arch == "gpt2" else _round_up(8 * args.hidden // 3, 64)
        )
        if args.arch == "moe":  # the experts together hold the parameters of llama's FFN
            args.intermediate = max(1, args.intermediate // args.experts)
    args.timing = args.timing or ("process" if args.device.startswith("cuda") else "interleaved")
    args.regimes = _choices(args.regime, REGIMES, "--regime")
    default = [m for m in METHODS if m != "hft-fullgrad" or args.arch == "gpt2"]
    if args.arch == "moe":
        default = [m for m in default if m not in MOE_SKIPPED]
    args.method_list = _choices(args.methods, METHODS, "--methods") if args.methods else default
    args.shapes = {"compute": _shape(args.compute_shape), "optimizer": _shape(args.optimizer_shape)}
    return args


def _round_up(n: int, k: int) -> int:
    return (n + k - 1) // k * k


def _choices(text: str, known, flag: str) -> list[str]:
    picked = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in picked if x not in known]
    if unknown or not picked:
        sys.exit(f"{flag}: unknown {unknown or text!r}; choose from {', '.join(known)}")
    return picked


def _shape(text: str) -> tuple[int, int]:
    batch, _, tokens = text.partition("x")
    return int(batch), int(tokens)


# ---- the model -----------------------------------------------------------------


def build_model(args, device=None):
    """The benchmark model: transformers' when it imports, else the plain-torch Llama."""
    import torch

    if args.model_impl == "torch" or (args.model_impl == "auto" and not _has("transformers")):
        if args.arch != "llama":
            sys.exit(f"--arch {args.arch} needs transformers; only llama has a plain-torch model")
        return _torch_llama(args, device)

    max_tokens = max(t for _, t in args.shapes.values())
    dims = dict(
        vocab_size=args.vocab, num_hidden_layers=args.layers, num_attention_heads=args.heads
    )
    from hft_plugins.tiny import tiny_model

    with torch.device(device or args.device):
        if args.arch == "moe":
            model = tiny_model(
                "mixtral", seed=args.seed, hidden_size=args.hidden,
                intermediate_size=args.intermediate, num_local_experts=args.experts,
                num_experts_per_tok=args.top_k, num_key_value_heads=args.kv_heads,
                head_dim=args.hidden // args.heads, max_position_embeddings=max_tokens,
                tie_word_embeddings=False, **dims,
            )  # fmt: skip
        elif args.arch == "gpt2":
            model = tiny_model(
                "gpt2", seed=args.seed, vocab_size=args.vocab, n_embd=args.hidden,
                n_layer=args.layers, n_head=args.heads, n_inner=args.intermediate,
                n_positions=max_tokens, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            )  # fmt: skip
        else:
            model = tiny_model(
                "llama", seed=args.seed, hidden_size=args.hidden,
                intermediate_size=args.intermediate, num_key_value_heads=args.kv_heads,
                head_dim=args.hidden // args.heads, max_position_embeddings=max_tokens,
                tie_word_embeddings=False, **dims,
            )  # fmt: skip
    return _finish(model, args)


def _torch_llama(args, device):
    import torch
    from torch_llama import LlamaLiteConfig, LlamaLiteForCausalLM

    config = LlamaLiteConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(t for _, t in args.shapes.values()),
    )  # fmt: skip
    torch.manual_seed(args.seed)
    with torch.device(device or args.device):
        model = LlamaLiteForCausalLM(config)
    return _finish(model, args)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _finish(model, args):
    import torch

    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    return model.train()


def draw_mask(model):
    from hft_plugins import HFTConfig, select

    return select(model, HFTConfig(strategy="category", ratio=0.5, seed=0, stage=0))


def block_prefixes(model) -> list[list[str]]:
    from hft_plugins.core.layouts import find_blocks

    name, blocks = find_blocks(model)
    return [[f"{name}.{i}."] for i in range(len(blocks))]


# ---- one method in its own process ------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _state_bytes(state) -> int:
    import torch

    return sum(
        v.numel() * v.element_size()
        for s in state.values()
        for v in s.values()
        if torch.is_tensor(v)
    )


def make_optimizer(method: str, model, args):
    """(model to run, optimizer, state-bytes function, trainable elements) for ``method``."""
    import torch

    lr, decay = 1e-4, 0.01
    if method == "fft":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=decay)
        return (
            model,
            opt,
            lambda: _state_bytes(opt.state),
            sum(p.numel() for p in model.parameters()),
        )
    if method in ("frozen", "hft", "hft-fullgrad"):
        mask = draw_mask(model)
        if method == "frozen":
            mask.apply(model)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=decay)
            return model, opt, lambda: _state_bytes(opt.state), sum(p.numel() for p in params)
        from hft_plugins import HFTOptimizer

        opt = HFTOptimizer(
            model, mask, torch.optim.AdamW, lr=lr, weight_decay=decay, sliced_grad=method == "hft"
        )
        return model, opt, opt.state_bytes, mask.trainable_numel
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = LORA_TARGETS[args.arch]
        config = LoraConfig(
            r=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.0,
            target_modules=targets, fan_in_fan_out=args.arch == "gpt2",
        )  # fmt: skip
        model = get_peft_model(model, config)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=decay)
        return model, opt, lambda: _state_bytes(opt.state), sum(p.numel() for p in params)
    if method == "badam":
        from badam import BlockOptimizer

        blocks = block_prefixes(model)
        base = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=decay)
        # A middle block: its backward stops there, as it does on average over a BAdam epoch.
        opt = BlockOptimizer(
            base, list(model.named_parameters()), block_prefix_list=blocks,
            switch_block_every=10**9, start_block=len(blocks) // 2, verbose=0,
        )  # fmt: skip

        def state_bytes():  # moments plus the fp32 master copy of the active block
            masters = sum(p.numel() * p.element_size() for p in opt.param_idx2hp.values())
            return _state_bytes(base.state) + masters

        trainable = sum(p.numel() for p in opt.param_idx2hp.values())
        return model, opt, state_bytes, trainable
    raise ValueError(method)


def _import_for(method: str) -> None:
    """Import what ``method`` needs (so the footprint after imports includes it)."""
    if method == "lora":
        import peft  # noqa: F401
    if method == "badam":
        import badam  # noqa: F401
    try:
        import transformers  # noqa: F401
    except ImportError:
        pass


def _warm_process(args) -> None:
    """Run one step of a tiny model of the same kind, so lazy imports and kernel
    initialisation land in the footprint, not in the first method's peak."""
    import copy

    import torch

    tiny = copy.copy(args)
    tiny.hidden, tiny.layers, tiny.intermediate, tiny.vocab = 64, 1, 128, 64
    tiny.heads, tiny.kv_heads = 2, 2
    model = build_model(tiny)
    opt = torch.optim.AdamW(model.parameters())
    ids = torch.zeros(1, 8, dtype=torch.long, device=args.device)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    del model, opt


class _Stepper:
    """One method's model and optimizer, stepping and timing fwd+bwd and the optimizer."""

    def __init__(self, args, method: str):
        import torch

        self.torch = torch
        self.cuda = args.device.startswith("cuda")
        model = build_model(args)
        self.model, self.opt, self.state_bytes, self.trainable = make_optimizer(method, model, args)

    def step(self, ids) -> tuple[float, float, float]:
        """(step, fwd+bwd, optimizer) seconds of one training step."""
        self._sync()
        t0 = time.perf_counter()
        self.loss = self.model(input_ids=ids, labels=ids).loss
        self.loss.backward()
        self._sync()
        t1 = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self._sync()
        t2 = time.perf_counter()
        return t2 - t0, t1 - t0, t2 - t1

    def _sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()


def _batches(args) -> dict:
    import torch

    generator = torch.Generator().manual_seed(args.seed)
    return {
        regime: torch.randint(0, args.vocab, args.shapes[regime], generator=generator).to(
            args.device
        )
        for regime in args.regimes
    }


def _timings(rows) -> dict:
    """Rows of (round, step, fwd+bwd, optimizer) as lists."""
    return {
        "round": [r[0] for r in rows],
        "step_s": [r[1] for r in rows],
        "fwd_bwd_s": [r[2] for r in rows],
        "opt_s": [r[3] for r in rows],
    }


def worker(spec: dict) -> dict:
    """One method in this process: time its steps per regime, report peak memory and state."""
    args = parse_args(spec["argv"])
    method = spec["method"]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        _import_for(method)
    except ImportError as exc:
        return {"method": method, "skipped": f"{type(exc).__name__}: {exc}"}
    cuda = args.device.startswith("cuda")
    _warm_process(args)
    footprint = torch.cuda.memory_allocated() if cuda else _rss_bytes()
    stepper = _Stepper(args, method)
    batches = _batches(args)
    result = {"method": method, "regimes": {}, "trainable": stepper.trainable}
    # Smallest activations first: CPU peak RSS cannot be reset, so each regime's peak is the
    # peak so far, and the compute regime's activations exceed the optimizer regime's.
    for regime in sorted(args.regimes, key=lambda r: batches[r].numel()):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rows = []
        for step in range(args.warmup + args.steps):
            times = stepper.step(batches[regime])
            if step >= args.warmup:
                rows.append((spec.get("round", 0), *times))
        peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()
        result["regimes"][regime] = {
            **_timings(rows),
            "peak_bytes": peak - footprint,
            "loss": float(stepper.loss),
        }
    result["state_bytes"] = stepper.state_bytes()
    return result


def interleaved_worker(spec: dict) -> dict:
    """All methods in this process, stepping in turn: drift on a busy machine hits all alike."""
    args = parse_args(spec["argv"])
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    steppers, notes = {}, {}
    for method in spec["methods"]:
        try:
            _import_for(method)
            steppers[method] = _Stepper(args, method)
        except ImportError as exc:
            notes[method] = f"{type(exc).__name__}: {exc}"
    batches = _batches(args)
    timing = {method: {} for method in steppers}
    order = list(steppers)
    for regime in args.regimes:
        for stepper in steppers.values():
            for _ in range(args.warmup):
                stepper.step(batches[regime])
        rows = {method: [] for method in steppers}
        for round_index in range(args.repeats):
            shift = round_index % len(order)
            for method in order[shift:] + order[:shift]:
                for _ in range(args.steps):
                    rows[method].append((round_index, *steppers[method].step(batches[regime])))
        for method in steppers:
            timing[method][regime] = _timings(rows[method])
    return {"method": "interleaved", "timing": timing, "notes": notes}


def run_worker(args, method: str, argv: list[str], **extra) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    spec = json.dumps({"method": method, "argv": argv, **extra})
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", spec], capture_output=True, text=True, env=env
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"method": method, "error": f"exit {proc.returncode}: {tail[:300]}"}


# ---- the FLOP and bytes model -------------------------------------------------------


def cost_model(args) -> dict:
    """Per method: forward, input-gradient and weight-gradient GFLOP per step, optimizer MB."""
    import torch

    model = build_model(args, device="meta")
    mask = draw_mask(model)
    plan = mask.params()
    params = dict(model.named_parameters())
    head = model.get_output_embeddings().weight
    head_name = next(n for n, p in params.items() if p is head)
    gemms = [(n, p) for n, p in params.items() if p.dim() in (2, 3) and _in_blocks(mask, n)]
    gemms.append((head_name, head))
    # routed experts [experts, out, in]: each token passes through top-k of them
    used = {name: args.top_k / p.shape[0] if p.dim() == 3 else 1.0 for name, p in gemms}
    element = torch.finfo(torch.bfloat16 if args.dtype == "bf16" else torch.float32).bits // 8

    def weight_share(method: str, name: str) -> float:
        if method == "fft":
            return 1.0
        if name not in plan:
            return 0.0
        slices = plan[name]
        if slices is None or method != "hft":
            return 1.0
        return slices.size / params[name].shape[slices.dim]

    def optimizer_elements(method: str) -> int:
        if method == "fft":
            return sum(p.numel() for p in params.values())
        if method == "hft":
            return mask.trainable_numel
        return sum(params[n].numel() for n in plan)  # whole tensors, sliced or not

    out = {"trainable_fraction": mask.trainable_numel / mask.total_numel, "regimes": {}}
    attn_width = args.heads * (args.hidden // args.heads)
    for regime in args.regimes:
        batch, tokens = args.shapes[regime]
        n = batch * tokens
        attention = 4 * batch * tokens * tokens * attn_width * args.layers  # QK^T and AV
        rows = {}
        for method in ("fft", "frozen", "hft", "hft-fullgrad"):
            forward = sum(2 * n * p.numel() * used[name] for name, p in gemms) + attention
            input_grad = sum(2 * n * p.numel() * used[name] for name, p in gemms) + 2 * attention
            weight_grad = sum(
                2 * n * p.numel() * used[name] * weight_share(method, name) for name, p in gemms
            )
            rows[method] = {
                "forward_gflop": forward / 1e9,
                "input_grad_gflop": input_grad / 1e9,
                "weight_grad_gflop": weight_grad / 1e9,
                "optimizer_mb": ADAMW_BYTES_PER_ELEMENT
                * element
                * optimizer_elements(method)
                / 1e6,
            }
        out["regimes"][regime] = rows
    return out


def _in_blocks(mask, name: str) -> bool:
    return any(
        u.block is not None
        and u.category in ("attention", "ffn")
        and any(p.param == name for p in u.parts)
        for u in mask.layout.units
    )


def floor_ratio(model_rows: dict, fft_fwd_bwd: float, fft_opt: float) -> float:
    """HFT / FFT time if fwd+bwd scaled with FLOPs and the optimizer with bytes, from FFT's split."""
    fft, hft = model_rows["fft"], model_rows["hft"]
    flops = lambda r: r["forward_gflop"] + r["input_grad_gflop"] + r["weight_grad_gflop"]  # noqa: E731
    ideal = (
        fft_fwd_bwd * flops(hft) / flops(fft) + fft_opt * hft["optimizer_mb"] / fft["optimizer_mb"]
    )
    return ideal / (fft_fwd_bwd + fft_opt)


# ---- the parent: rounds, table, targets ------------------------------------------


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        run = interleaved_worker if spec["method"] == "interleaved" else worker
        print(MARK + json.dumps(run(spec)), flush=True)
        return 0
    import torch

    started = time.time()
    model = cost_model(args)
    meta = build_model(args, device="meta")
    total = sum(p.numel() for p in meta.parameters())
    mask = draw_mask(meta)
    blocks = mask.fractions()["blocks"][1]
    experts = ""
    if args.arch == "moe":
        impl = getattr(meta.config, "_experts_implementation", None)
        experts = f" experts={args.experts} top-{args.top_k} ({impl}; intermediate per expert)"
    print(
        f"# hft-plugins step benchmark: arch={args.arch} ({type(meta).__name__}) hidden={args.hidden} "
        f"layers={args.layers} intermediate={args.intermediate} heads={args.heads}/{args.kv_heads} "
        f"vocab={args.vocab}{experts}"
    )
    print(
        f"# params {total / 1e6:.1f}M, blocks {blocks / total:.1%}; trainable fraction under HFT "
        f"{model['trainable_fraction']:.4f}; device={args.device} dtype={args.dtype} "
        f"torch={torch.__version__} threads={args.threads or torch.get_num_threads()}"
    )
    print(
        f"# steps={args.steps} per method and round, warmup={args.warmup}, rounds={args.repeats}, "
        f"timing={args.timing}, shapes={args.shapes}"
    )
    print(f"# command: python benchmarks/step.py {' '.join(argv)}".rstrip())

    interleaved = args.timing == "interleaved"
    # Interleaved timing: memory runs need only a warm-up step (state exists) and one step.
    memory_argv = argv + ["--warmup", "1", "--steps", "1"] if interleaved else argv
    runs: dict[str, list[dict]] = {m: [] for m in args.method_list}
    notes: dict[str, str] = {}
    if args.arch == "moe":
        notes.update({m: note for m, note in MOE_SKIPPED.items() if m in args.method_list})
    for round_index in range(1 if interleaved else args.repeats):
        shift = round_index % len(args.method_list)
        for method in args.method_list[shift:] + args.method_list[:shift]:
            if method in notes:
                continue
            result = run_worker(args, method, memory_argv, round=round_index)
            if "skipped" in result or "error" in result:
                notes[method] = result.get("skipped") or result["error"]
                continue
            runs[method].append(result)
            print(f"# {method}: own process, round {round_index + 1} done", flush=True)
    timing = None
    if interleaved:
        live = [m for m in args.method_list if m not in notes]
        result = run_worker(args, "interleaved", argv, methods=live)
        if "error" in result:
            notes["interleaved timing"] = result["error"]
        else:
            timing = result["timing"]
            notes.update(result["notes"])
            print(f"# interleaved timing of {', '.join(live)}: done", flush=True)

    summary = summarise(args, runs, timing)
    print_report(args, summary, model, notes)
    print(f"# wall time {time.time() - started:.0f} s")
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "argv": argv,
                    "summary": summary,
                    "model": model,
                    "notes": notes,
                    "runs": runs,
                    "timing": timing,
                },  # fmt: skip
                indent=1,
            )
        )
    return 0


def summarise(args, runs: dict, timing: dict | None) -> dict:
    """Median step times (from the interleaved run, else the own-process runs), peaks, state."""
    out = {}
    for method, results in runs.items():
        if not results or (timing is not None and method not in timing):
            continue
        row = {
            "state_bytes": results[0]["state_bytes"],
            "trainable": results[0]["trainable"],
            "regimes": {},
        }
        for regime in args.regimes:
            if timing is not None:
                times = timing[method][regime]
            else:
                times = {
                    key: [x for r in results for x in r["regimes"][regime][key]]
                    for key in ("round", "step_s", "fwd_bwd_s", "opt_s")
                }
            rounds = sorted(set(times["round"]))
            row["regimes"][regime] = {
                "step_s": statistics.median(times["step_s"]),
                "round_medians_s": [
                    statistics.median(
                        t for t, k in zip(times["step_s"], times["round"], strict=True) if k == r
                    )
                    for r in rounds
                ],
                "fwd_bwd_s": statistics.median(times["fwd_bwd_s"]),
                "opt_s": statistics.median(times["opt_s"]),
                "peak_bytes": statistics.median(
                    r["regimes"][regime]["peak_bytes"] for r in results
                ),
            }
        out[method] = row
    return out


def _ratio(a, b):
    return a / b if a is not None and b else None


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def print_report(args, summary: dict, model: dict, notes: dict) -> None:
    fft = summary.get("fft")
    frozen = summary.get("frozen")
    for regime in args.regimes:
        batch, tokens = args.shapes[regime]
        print(f"\n## {regime}-bound regime: batch {batch} x {tokens} tokens")
        print(
            f"{'method':<13} {'step ms':>9} {'(rounds)':>22} {'fwd+bwd':>9} {'opt ms':>8} "
            f"{'/FFT':>6} {'/frozen':>7} {'peak MB':>9} {'peak/FFT':>8} {'state MB':>9} {'state/FFT':>9}"
        )
        for method in args.method_list:
            if method not in summary:
                print(f"{method:<13} skipped: {notes.get(method, 'no result')}")
                continue
            row, r = summary[method], summary[method]["regimes"][regime]
            ref = fft["regimes"][regime] if fft else None
            fro = frozen["regimes"][regime] if frozen else None
            rounds = "/".join(f"{x * 1e3:.0f}" for x in r["round_medians_s"])
            print(
                f"{method:<13} {r['step_s'] * 1e3:>9.1f} {rounds:>22} {r['fwd_bwd_s'] * 1e3:>9.1f} "
                f"{r['opt_s'] * 1e3:>8.1f} {_fmt(_ratio(r['step_s'], ref and ref['step_s'])):>6} "
                f"{_fmt(_ratio(r['step_s'], fro and fro['step_s'])):>7} {r['peak_bytes'] / 2**20:>9.0f} "
                f"{_fmt(_ratio(r['peak_bytes'], ref and ref['peak_bytes'])):>8} "
                f"{row['state_bytes'] / 2**20:>9.1f} "
                f"{_fmt(_ratio(row['state_bytes'], fft and fft['state_bytes'])):>9}"
            )
        rows = model["regimes"][regime]
        print(
            "cost model   fwd GFLOP  input-grad GFLOP  weight-grad GFLOP  optimizer MB (AdamW r+w)"
        )
        for method in ("fft", "frozen", "hft", "hft-fullgrad"):
            if method in args.method_list:
                m = rows[method]
                print(
                    f"{method:<12} {m['forward_gflop']:>9.2f} {m['input_grad_gflop']:>17.2f} "
                    f"{m['weight_grad_gflop']:>18.2f} {m['optimizer_mb']:>13.1f}"
                )
        if fft and "hft" in summary:
            print_targets(regime, summary, rows, model["trainable_fraction"])
    for method, note in notes.items():
        print(f"# note: {method}: {note}")


def print_targets(regime: str, summary: dict, rows: dict, fraction: float) -> None:
    fft, hft = summary["fft"]["regimes"][regime], summary["hft"]["regimes"][regime]
    floor = floor_ratio(rows, fft["fwd_bwd_s"], fft["opt_s"])
    speed = hft["step_s"] / fft["step_s"]
    verdict = lambda ok: "MET" if ok else "NOT MET"  # noqa: E731
    print(
        f"floor (HFT/FFT if fwd+bwd scaled with FLOPs, optimizer with bytes; FFT's split "
        f"{fft['fwd_bwd_s'] / fft['step_s']:.0%} fwd+bwd): {floor:.3f}"
    )
    print(
        f"target HFT/FFT <= 1.05 x floor ({1.05 * floor:.3f}): {speed:.3f} {verdict(speed <= 1.05 * floor)}"
    )
    if "frozen" in summary:
        vs_frozen = hft["step_s"] / summary["frozen"]["regimes"][regime]["step_s"]
        print(f"target HFT/frozen <= 1.03: {vs_frozen:.3f} {verdict(vs_frozen <= 1.03)}")
    if regime == "optimizer":
        print(f"target HFT/FFT <= 0.70 (30% faster): {speed:.3f} {verdict(speed <= 0.70)}")
        peak = hft["peak_bytes"] / fft["peak_bytes"]
        print(f"target peak HFT/FFT <= 0.70: {peak:.3f} {verdict(peak <= 0.70)}")
        state = summary["hft"]["state_bytes"] / summary["fft"]["state_bytes"]
        ok = abs(state / fraction - 1) <= 0.01
        print(
            f"target state HFT/FFT = trainable fraction {fraction:.4f} within 1%: {state:.4f} {verdict(ok)}"
        )


if __name__ == "__main__":
    sys.exit(main())
