"""One run of benchmarks/gpu_sharded.sh: FFT or HFT under DeepSpeed ZeRO-3 or FSDP2 (HF Trainer).

    torchrun --nproc_per_node N benchmarks/sharded_run.py --engine zero3|fsdp2 --mode fft|hft \
        --model llama|mixtral --json OUT.jsonl [--smoke]

Builds a ~1B Llama- or Mixtral-shaped model (``--smoke``: a tiny one, on CPU with gloo),
trains a few steps with the HF Trainer (HFTTrainer with ``HFTConfig(whole_tensors=True)``
for ``hft``: the routed experts' fused gate|up trains or freezes whole, as the engines need)
through the shipped engine configs, and appends
one JSON line: optimizer-state bytes per rank (fp32 master + moments), peak memory per rank,
whether every frozen tensor is bit-identical after training (gathered), and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
T0 = time.time()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--engine", choices=["zero3", "fsdp2", "zero2"], required=True)
    p.add_argument("--mode", choices=["fft", "hft"], required=True)
    p.add_argument("--model", choices=["llama", "mixtral"], default="llama")
    p.add_argument("--json", required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--local_rank", type=int, default=-1)
    a = p.parse_args()
    cuda = torch.cuda.is_available() and not a.smoke
    if not cuda:  # CPU processes: accelerate needs its state set up by hand (see the tests)
        from accelerate import PartialState
        from accelerate.utils import DistributedType

        if a.engine.startswith("zero"):
            os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
            PartialState(backend="gloo")
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        else:
            PartialState(backend="gloo")._shared_state["distributed_type"] = (
                DistributedType.MULTI_GPU
            )

    from datasets import Dataset
    from hft_bench.sharded import engine_arguments, engine_state_bytes, full_tensors
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from hft_plugins import HFTConfig
    from hft_plugins.integrations.transformers import HFTTrainer

    engine = engine_arguments(a.engine, ROOT)
    args = TrainingArguments(
        output_dir=str(Path(a.json).parent / f"run_{a.model}_{a.engine}_{a.mode}"),
        per_device_train_batch_size=2,
        max_steps=a.steps,
        learning_rate=1e-4,
        weight_decay=0.1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        bf16=cuda,
        disable_tqdm=True,
        accelerator_config=None if cuda else {"use_configured_state": True},
        **engine,
    )
    config, seq = model_config(a.model, a.smoke)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)  # ZeRO-3: zero.Init
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (64, seq), generator=g)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    kw = dict(model=model, args=args, train_dataset=data)
    if a.mode == "hft":
        trainer = HFTTrainer(**kw, hft_config=HFTConfig(whole_tensors=True))
        trained = set(trainer.hft_mask.params())
    else:
        trainer = Trainer(**kw)
        trained = {n for n, _ in model.named_parameters()}
    frozen_before = {n: t.cpu() for n, t in full_tensors(model, skip=trained).items()}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    trainer.train()
    train_seconds = time.time() - t
    after = full_tensors(trainer.model, skip=trained)
    frozen_ok = all(
        torch.equal(before.to(after[n].dtype), after[n].cpu())
        for n, before in frozen_before.items()
    )
    numel = sum(_numel(q) for q in model.parameters())
    mine = {
        "state_bytes": engine_state_bytes(trainer.optimizer),
        "peak_bytes": torch.cuda.max_memory_allocated()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_kind": "cuda max_memory_allocated" if cuda else "process max RSS",
        "frozen_identical": frozen_ok,
    }
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    if dist.get_rank() == 0:
        trainable = sum(_numel(q) for n, q in model.named_parameters() if n in trained)
        line = {
            "engine": a.engine,
            "mode": a.mode,
            "model": a.model,
            "world": dist.get_world_size(),
            "device": "cuda" if cuda else "cpu",
            "params": numel,
            "trainable": trainable,
            "frozen_tensors": len(frozen_before),
            "train_seconds": round(train_seconds, 2),
            "wall_seconds": round(time.time() - T0, 2),
            "ranks": ranks,
        }
        with open(a.json, "a") as f:
            f.write(json.dumps(line) + "\n")
    dist.barrier()
    dist.destroy_process_group()


def model_config(model: str, smoke: bool):
    """(config, sequence length) of the benchmarked model."""
    from transformers import LlamaConfig, MixtralConfig

    if smoke:
        shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, head_dim=16)
        shape.update(num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
        seq = 32
    elif model == "llama":  # Llama-3.2-1B's block shapes, 16 layers, a small vocabulary: 1.01B
        shape = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16)
        shape.update(num_attention_heads=32, num_key_value_heads=8, vocab_size=8192)
        seq = 256
    else:  # Mixtral's block kind at 1024 wide, 8 experts (top 2), 16 layers: 0.96B
        shape = dict(hidden_size=1024, intermediate_size=2304, num_hidden_layers=16)
        shape.update(num_attention_heads=16, num_key_value_heads=4, vocab_size=8192)
        seq = 256
    if model == "llama":
        return LlamaConfig(**shape), seq
    return MixtralConfig(**shape, num_local_experts=8, num_experts_per_tok=2), seq


def _numel(param) -> int:
    return int(getattr(param, "ds_numel", 0) or param.numel())


if __name__ == "__main__":
    main()
