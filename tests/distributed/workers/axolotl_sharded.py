"""``axolotl train CFG`` on 2 CPU processes (gloo) under DeepSpeed ZeRO or FSDP2.

    torchrun --nproc_per_node 2 axolotl_sharded.py CFG.yml [RESULT.json BASE_MODEL_DIR]

Runs in the axolotl virtualenv. A GPU run needs none of this (``axolotl train CFG`` under
``accelerate launch``); on a GPU-less machine accelerate's state is created first, with the
gloo backend, as tests/distributed/workers/trainer_sharded.py does: else accelerate counts
one process while DeepSpeed counts two; axolotl's trainer resets that state when it builds
its Accelerator, so the reset here keeps it. axolotl's device map for a multi-process run
(``{"": LOCAL_RANK}``, a CUDA device) becomes ``"cpu"``. For FSDP2, accelerate's
distributed type is forced to MULTI_GPU (accelerate never takes its FSDP path on CPU) and
axolotl's device mesh (``"cuda"``) is built on ``"cpu"``.

With RESULT.json, rank 0 writes there, after training: each rank's optimizer-state bytes,
whether every frozen tensor (gathered under ZeRO-3) equals BASE_MODEL_DIR's (as
``from_pretrained`` names it: a Mixtral file's per-expert tensors are the model's 3-D
experts), which trainable tensors moved, the engine the trainer ran, and the HFT stage
events seen; and beside it ``final_weights.pt``, the gathered weights training ended with.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml


def record(result_path: Path, base_dir: Path) -> None:
    """Wrap Trainer.train: after it, measure and compare on every rank; rank 0 writes."""
    import torch
    import torch.distributed as dist
    import transformers
    from hft_bench.sharded import engine_state_bytes, full_tensors
    from transformers import AutoModelForCausalLM

    import hft_plugins
    from hft_plugins.integrations.sharded import trainer_engine

    # read before any engine is configured (under ZeRO-3 a later load is partitioned)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    del model
    events = []

    class StageRecorder:
        @hft_plugins.hookimpl
        def stage_begin(self, model, mask, stage):
            events.append(["stage_begin", stage])

        @hft_plugins.hookimpl
        def stage_end(self, model, mask, stage):
            events.append(["stage_end", stage])

    hft_plugins.registry.manager().register(StageRecorder())
    from hft_plugins.integrations.axolotl import plugin

    drawn = {}
    select = plugin.select

    def recorded_select(model, config):  # the policy as the plugin draws its mask on it
        first = next(model.parameters())
        drawn["partitioned_at_load"] = hasattr(first, "ds_id") and first.numel() == 0
        return select(model, config)

    plugin.select = recorded_select
    train = transformers.Trainer.train

    def recorded_train(self, *args, **kwargs):
        output = train(self, *args, **kwargs)
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        after = full_tensors(self.model)
        mine = {
            "frozen_identical": all(
                torch.equal(base[n], after[n].to(base[n].dtype))
                for n in after
                if n not in trainable
            ),
            "frozen": sorted(n for n in after if n not in trainable),
            "trainable_moved": sorted(
                n for n in trainable if not torch.equal(base[n], after[n].to(base[n].dtype))
            ),
            "state_bytes": engine_state_bytes(self.optimizer),
            "optimizer": type(self.optimizer).__name__,
        }
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
        if dist.get_rank() == 0:
            result = {
                "engine": trainer_engine(self),
                "ranks": ranks,
                "stage_events": events,
                **drawn,
                "numel": sum(t.numel() for t in base.values()),
            }
            result_path.write_text(json.dumps(result, indent=1))
            torch.save(after, result_path.parent / "final_weights.pt")
        return output

    transformers.Trainer.train = recorded_train


def main() -> None:
    config = sys.argv[1]
    cfg = yaml.safe_load(open(config, encoding="utf-8"))
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    if cfg.get("deepspeed"):
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    else:
        state = PartialState(backend="gloo")
        if cfg.get("fsdp_config") or cfg.get("fsdp"):
            state._shared_state["distributed_type"] = DistributedType.MULTI_GPU
            from accelerate.parallelism_config import ParallelismConfig

            build_mesh = ParallelismConfig.build_device_mesh

            def build_cpu_mesh(self, device_type):  # axolotl asks for a "cuda" mesh
                return build_mesh(self, "cpu")

            ParallelismConfig.build_device_mesh = build_cpu_mesh
    from accelerate.state import AcceleratorState

    reset = AcceleratorState._reset_state

    def keep_partial_state(reset_partial_state=False):
        # axolotl's trainer resets accelerate's state (also the gloo one made above)
        reset(reset_partial_state=False)

    AcceleratorState._reset_state = staticmethod(keep_partial_state)
    if len(sys.argv) > 3:
        record(Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve())
    import axolotl.cli.config as axolotl_config
    import fire
    from axolotl.cli.train import do_cli

    normalize = axolotl_config.normalize_config

    def normalize_on_cpu(cfg):  # axolotl maps a multi-process run to device LOCAL_RANK (CUDA)
        normalize(cfg)
        cfg.device_map = "cpu"

    axolotl_config.normalize_config = normalize_on_cpu

    sys.argv = sys.argv[:1]
    fire.Fire(lambda: do_cli(config=config))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
