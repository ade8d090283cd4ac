"""HFTTrainer / HFTSFTTrainer under DeepSpeed ZeRO-2/3 or the Trainer's FSDP2, on CPU (gloo).

    torchrun --nproc_per_node 2 trainer_sharded.py OUT --engine zero3 [--trainer sft]
        [--family mixtral] [--whole-tensors] [--steps 4] [--save-steps 2] [--resume CKPT]
        [--stage 0] [--refusals]

ZeRO uses the shipped ``integrations/deepspeed/zero{2,3}.json``. On a GPU-less machine two
things are set up first, as a test needs and a GPU run does not: accelerate's state with
the gloo backend (else accelerate counts one process while DeepSpeed counts two), and,
for FSDP2, accelerate's distributed type forced to MULTI_GPU (accelerate never takes its
FSDP path for CPU processes). The HF Trainer and DPO take ``hft_config=``, SFT the
``--hft_*`` arguments of its config (``HFTSFTConfig(hft=True, hft_whole_tensors=True)``).
After training the Trainer's ``save_model`` writes OUT/saved (FSDP2: with the full state
dict). Rank 0 writes OUT/result.json: every rank's frozen check, state bytes, the
gathered start and final weights' files, and the refusals seen.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[3]
T0 = time.time()


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--engine", choices=["zero2", "zero3", "fsdp2"], required=True)
    p.add_argument("--trainer", choices=["hft", "sft", "dpo"], default="hft")
    p.add_argument("--family", choices=["llama", "mixtral", "phi3"], default="llama")
    p.add_argument("--whole-tensors", action="store_true", help="HFTConfig(whole_tensors=True)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--save-steps", type=int, default=0)
    p.add_argument("--resume", default=None)
    p.add_argument("--stage", type=int, default=0)
    p.add_argument("--refusals", action="store_true")
    p.add_argument("--local_rank", type=int, default=-1)
    return p.parse_args()


def setup_cpu_state(engine: str) -> None:
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    if engine.startswith("zero"):
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    else:
        state = PartialState(backend="gloo")
        state._shared_state["distributed_type"] = DistributedType.MULTI_GPU


def training_args(a, out: Path, **extra):
    from hft_bench.sharded import engine_arguments
    from trl import DPOConfig

    from hft_plugins.integrations.trl import HFTSFTConfig

    engine = engine_arguments(a.engine, ROOT)
    kwargs = dict(
        output_dir=str(out),
        per_device_train_batch_size=2,
        max_steps=a.steps,
        learning_rate=1e-3,
        weight_decay=0.1,
        logging_steps=1,
        save_strategy="steps" if a.save_steps else "no",
        save_steps=a.save_steps or 500,
        report_to="none",
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        accelerator_config={"use_configured_state": True},
        **engine,
        **extra,
    )
    if a.trainer == "sft":  # HFT from the --hft_* arguments
        hft = dict(hft=True, hft_stage=a.stage, hft_whole_tensors=a.whole_tensors)
        return HFTSFTConfig(**kwargs, **hft, bf16=False, packing=False)
    if a.trainer == "dpo":
        return DPOConfig(**kwargs, bf16=False)
    from transformers import TrainingArguments

    return TrainingArguments(**kwargs)


def build_model(family: str):
    from transformers import AutoModelForCausalLM

    from hft_plugins.testing import tiny_config

    if family == "llama":
        cfg = tiny_config(
            "llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, head_dim=16
        )
    elif family == "gpt2":
        cfg = tiny_config(family, n_embd=64, n_layer=2)
    else:  # mixtral: routed experts' 3-D gate_up_proj; phi3: fused qkv_proj and gate_up_proj
        cfg = tiny_config(family, num_hidden_layers=2)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg)  # ZeRO-3: built inside zero.Init


def dataset():
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 90, (32, 16), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def make_trainer(a, args, model):

    from hft_plugins import HFTConfig

    config = HFTConfig(stage=a.stage, whole_tensors=a.whole_tensors)

    kw = dict(model=model, args=args, train_dataset=dataset())
    if a.trainer == "dpo":  # the reference TRL builds from the policy's path (not shared)
        from datasets import Dataset

        from hft_plugins.integrations.trl import HFTDPOTrainer
        from hft_plugins.testing import tiny_tokenizer

        rows = [("Say yes:", " yes", " no"), ("Count:", " 1 2 3", " 3 2 1")] * 8
        data = Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows])
        return HFTDPOTrainer(
            model=model,
            args=args,
            train_dataset=data,
            processing_class=tiny_tokenizer(),
            hft_config=config,
        )
    if a.trainer == "sft":
        from hft_plugins.integrations.trl import HFTSFTTrainer
        from hft_plugins.testing import tiny_tokenizer

        return HFTSFTTrainer(**kw, processing_class=tiny_tokenizer())
    from hft_plugins.integrations.transformers import HFTTrainer

    return HFTTrainer(**kw, hft_config=config)


def refusals(a, out: Path) -> dict[str, str]:
    """Each engine limitation: the one-line HFTError, raised at construction."""
    from hft_plugins import HFTConfig, HFTError
    from hft_plugins.integrations.transformers import HFTCallback, HFTTrainer

    seen = {}

    def attempt(key, build):
        try:
            build()
            seen[key] = "no error"
        except HFTError as exc:
            seen[key] = str(exc)

    args = training_args(argparse.Namespace(**{**vars(a), "trainer": "hft"}), out / "refused")
    for family in ("gpt2", "phi3"):  # the default config trains slices of fused tensors
        attempt(
            f"fused_{family}",
            lambda family=family: HFTTrainer(
                model=build_model(family),
                args=args,
                train_dataset=dataset(),
                hft_config=HFTConfig(),
            ),
        )
    attempt(
        "redraw_every_epoch",
        lambda: HFTTrainer(
            model=build_model("llama"),
            args=args,
            train_dataset=dataset(),
            hft_config=HFTConfig(),
            callbacks=[HFTCallback(redraw_every_epoch=True)],
        ),
    )
    return seen


def main() -> None:
    a = parse()
    setup_cpu_state(a.engine)
    from hft_bench.sharded import engine_state_bytes, full_tensors

    import hft_plugins
    from hft_plugins import HFTError

    out = Path(a.out)
    rank = dist.get_rank()
    result = {"hft_plugins": hft_plugins.__file__, "stage_events": []}

    class StageRecorder:
        @hft_plugins.hookimpl
        def stage_begin(self, model, mask, stage):
            result["stage_events"].append(["stage_begin", stage])

        @hft_plugins.hookimpl
        def stage_end(self, model, mask, stage):
            result["stage_events"].append(["stage_end", stage])

    hft_plugins.registry.manager().register(StageRecorder())
    if a.trainer == "dpo":  # TRL builds the reference from the policy's path
        from transformers import AutoModelForCausalLM

        base = out / "base"  # written before any engine is configured (ZeRO-3: zero.Init)
        if rank == 0:
            build_model(a.family).save_pretrained(base)
        dist.barrier()
    if a.refusals:
        result["refusals"] = refusals(a, out)
    args = training_args(a, out)
    if a.trainer == "dpo":
        model = AutoModelForCausalLM.from_pretrained(base)  # ZeRO-3: partitioned at load
    else:
        model = build_model(a.family)
    first = next(model.parameters())
    result["partitioned_at_build"] = hasattr(first, "ds_id") and first.numel() == 0
    before = full_tensors(model)
    trainer = make_trainer(a, args, model)
    result["engine"] = getattr(trainer, "_hft_engine", None)
    result["distributed_type"] = str(trainer.accelerator.distributed_type)
    t = time.time()
    trainer.train(resume_from_checkpoint=a.resume)
    result["train_seconds"] = round(time.time() - t, 2)
    if a.refusals:
        try:
            trainer.next_stage()
            result["refusals"]["next_stage"] = "no error"
        except HFTError as exc:
            result["refusals"]["next_stage"] = str(exc)
    if trainer.is_fsdp_enabled:  # a SHARDED_STATE_DICT run saves no model: gather it
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out / "saved"))
    mask = trainer.hft_mask
    trained = set(mask.params())
    after = full_tensors(trainer.model)
    mine = {
        "frozen_identical": all(
            torch.equal(before[n], after[n]) for n in before if n not in trained
        ),
        "trainable_moved": sorted(n for n in trained if not torch.equal(before[n], after[n])),
        "state_bytes": engine_state_bytes(trainer.optimizer),
        "wrapped": type(trainer.model_wrapped).__name__,
    }
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    result["ranks"] = ranks
    result["mask"] = None if mask is None else mask.to_json()
    result["numel"] = sum(t.numel() for t in before.values())
    result["frozen"] = sorted(set(before) - trained)
    result["losses"] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(after, out / "final_weights.pt")
        torch.save(before, out / "start_weights.pt")
        result["checkpoints"] = {
            str(p.relative_to(out)): sorted(x.name for x in p.iterdir())
            for p in sorted(out.glob("checkpoint-*"))
        }
        result["wall_seconds"] = round(time.time() - T0, 2)
        (out / "result.json").write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
