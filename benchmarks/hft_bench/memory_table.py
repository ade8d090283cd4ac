"""Memory per rank under ZeRO-2, ZeRO-3 and FSDP2, FFT vs HFT, from the cost model.

    python -m hft_bench.memory_table [--ranks 8 16]

The models are built on the meta device (no memory, a few seconds), so the trainable
count T is the one ``select`` draws with ``whole_tensors=True`` (what runs under these
engines) on the real shapes: Llama-2-7B and Qwen3-30B-A3B (128 routed experts stored as
3-D tensors). Per rank, for N ranks, bf16 training with Adam, Ψ parameters, t = Ψ (FFT)
or T (HFT); activations, buckets and transiently gathered layers are left out:

- ZeRO-2: params 2Ψ (replicated), grads 2t/N, fp32 master 4t/N, Adam 8t/N
- ZeRO-3: params 2Ψ/N, grads 2t/N, master 4t/N, Adam 8t/N
- FSDP2 (``mixed_precision: bf16``): the sharded fp32 trainable params are the master,
  frozen ones stay bf16: params (4t + 2(Ψ - t))/N, grads 4t/N, Adam 8t/N
"""

from __future__ import annotations

import argparse

GB = 1e9
ENGINES = ("ZeRO-2", "ZeRO-3", "FSDP2")


def models() -> dict:
    """Name -> (transformers config class name, its arguments): the real models' shapes."""
    return {
        "Llama-2-7B": (
            "LlamaConfig",
            dict(
                vocab_size=32000,
                hidden_size=4096,
                intermediate_size=11008,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=32,
            ),
        ),
        "Qwen3-30B-A3B": (
            "Qwen3MoeConfig",
            dict(
                vocab_size=151936,
                hidden_size=2048,
                intermediate_size=6144,
                moe_intermediate_size=768,
                num_hidden_layers=48,
                num_attention_heads=32,
                num_key_value_heads=4,
                head_dim=128,
                num_experts=128,
                num_experts_per_tok=8,
                tie_word_embeddings=False,
            ),
        ),
    }


def counts(config_class: str, kwargs: dict) -> tuple[int, int]:
    """(Ψ, T): all parameters, and those HFT's default whole-tensor half trains."""
    import torch
    import transformers

    from hft_plugins import HFTConfig, select

    config = getattr(transformers, config_class)(**kwargs)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    mask = select(model, HFTConfig(whole_tensors=True))
    if any(part is not None for part in mask.params().values()):
        raise RuntimeError(f"{config_class}: the whole-tensor mask trains slices")
    return sum(p.numel() for p in model.parameters()), mask.trainable_numel


def per_rank(engine: str, ranks: int, total: int, trained: int) -> dict[str, float]:
    """Bytes per rank of each term for ``trained`` of ``total`` parameters."""
    n, t = ranks, trained
    if engine == "FSDP2":
        return {
            "params": (4 * t + 2 * (total - t)) / n,
            "grads": 4 * t / n,
            "master": 0.0,
            "adam": 8 * t / n,
        }
    params = 2 * total if engine == "ZeRO-2" else 2 * total / n
    return {"params": params, "grads": 2 * t / n, "master": 4 * t / n, "adam": 8 * t / n}


def table(total: int, trained: int, ranks: list[int]) -> list[str]:
    lines = [
        "| engine | N | run | params | grads | master | Adam | total | state vs FFT | total vs FFT |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for engine in ENGINES:
        for n in ranks:
            fft = per_rank(engine, n, total, total)
            for run, t in (("FFT", total), ("HFT", trained)):
                row = per_rank(engine, n, total, t)
                state = (row["master"] + row["adam"]) / (fft["master"] + fft["adam"])
                whole = sum(row.values()) / sum(fft.values())
                master = "-" if engine == "FSDP2" else f"{row['master'] / GB:.1f}"
                lines.append(
                    f"| {engine} | {n} | {run} | {row['params'] / GB:.1f} | {row['grads'] / GB:.1f} "
                    f"| {master} | {row['adam'] / GB:.1f} | {sum(row.values()) / GB:.1f} "
                    f"| {state:.2f} | {whole:.2f} |"
                )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hft_bench.memory_table", description=__doc__)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args(argv)
    for name, (config_class, kwargs) in models().items():
        total, trained = counts(config_class, kwargs)
        print(
            f"\n## {name}: Ψ = {total:,}, T = {trained:,} (f = {trained / total:.4f}); GB = 10^9 B"
        )
        print("\n".join(table(total, trained, args.ranks)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
