"""Sharded census: does every type the plain census supports train under FSDP2 and ZeRO-3?

For every type ``docs/architectures.json`` reports ``supported``, under FSDP2
(``fully_shard`` on each block and the root, torch AdamW over what requires grad, built
after sharding) and under DeepSpeed ZeRO-3 (``deepspeed.initialize`` with a client AdamW
over the trainable parameters), at world size 2 on CPU (gloo): build the tiny model of
``scripts/census.py`` (same weights on both ranks), draw the category rule's half with
``whole_tensors=True``, apply it, run two AdamW steps (weight decay 0.1) on the census
batch and check on every rank that

- the mask trains whole tensors only (no slices);
- every frozen tensor is bit-identical after the steps (gathered whole), and every
  trainable tensor moved that moves in one process without an engine (a tensor the token
  batch gives no gradient, an audio tower's say, may not);
- the Adam moments' bytes summed over the ranks are exactly ``2 * 4`` a trainable element
  (the trainable fraction of what full fine-tuning holds); FSDP2 less the elements of
  tensors it gave no gradient (torch's AdamW makes no state for them; each must get none
  in one process either), ZeRO-3 plus its padding of each tensor to a multiple of the
  world size;
- the engine's gathered state dict has the model's own names and shapes.

Each type ends ``supported``, ``refused`` (``select`` raised ``HFTError``), ``failed``
(anything else) or ``not built`` (the tiny model did not build here, or the engine
cannot train it in full either: not HFT's).

One torchrun launch per engine checks every type in turn (this file is also the worker);
a type that raises is recorded and the loop goes on. A failure on one rank only leaves
the ranks' collectives out of step: gloo's timeout ends that launch, the type it was
checking is recorded ``failed`` and a new launch goes on with the types left (likewise
after a crash, or a type over the time limit).

``python scripts/census_sharded.py`` checks every supported type under both engines and
writes ``docs/architectures-sharded.json`` and the sharded section of
``docs/architectures.md``; ``--types llama phi3`` checks a few (and writes only what
``--json`` / ``--markdown`` name). It exits 1 when a type failed.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks", REPO / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import census  # noqa: E402  (scripts/census.py: the zoo, the tiny models, the batch)

ENGINES = {"fsdp2": "FSDP2", "zero3": "DeepSpeed ZeRO-3"}
WORLD = 2
STEPS = 2
LR = 1e-2
WEIGHT_DECAY = 0.1
ADAM_MOMENTS = 2  # exp_avg and exp_avg_sq, fp32 each
TYPE_LIMIT_S = 300  # one type with no record: its launch is killed and the rest relaunched
COLLECTIVE_TIMEOUT_S = 180  # a collective the other rank never joins raises after this
PLAIN_JSON = REPO / "docs" / "architectures.json"
SHARDED_JSON = REPO / "docs" / "architectures-sharded.json"
MARKDOWN = REPO / "docs" / "architectures.md"
ZERO3 = {
    "zero_optimization": {
        "stage": 3,
        "stage3_param_persistence_threshold": 0,  # partition every tensor, however small
        "stage3_gather_16bit_weights_on_model_save": True,
    },
    "train_micro_batch_size_per_gpu": 1,  # bookkeeping only: each step is the census batch
    "gradient_accumulation_steps": 1,
    "zero_allow_untested_optimizer": True,  # the client torch AdamW
    "steps_per_print": 10**9,
}


def hft_config():
    from hft_plugins import HFTConfig

    return HFTConfig(strategy="category", ratio=census.RATIO, seed=0, whole_tensors=True)


# ---- the worker (one rank of a torchrun launch) ---------------------------------


def worker(engine: str, log: Path, rows: list[tuple[str, str, str]]) -> None:
    """Check ``rows`` in turn under ``engine``; rank 0 appends a JSON line as each type
    starts and one with the ranks' merged record as it ends."""
    import torch
    import torch.distributed as dist

    census._quiet()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    rank = dist.get_rank()

    def write(entry: dict) -> None:
        if rank == 0:
            with log.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    for model_type, kind, class_name in rows:
        write({"event": "start", "type": model_type})
        start = time.monotonic()
        local = check_type(engine, model_type, kind, class_name)
        local["seconds"] = round(time.monotonic() - start, 2)
        ranks: list = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, (model_type, local))
        if {name for name, _ in ranks} != {model_type}:
            raise SystemExit(f"ranks out of step: {[name for name, _ in ranks]}")
        record = merged(engine, [r for _, r in ranks])
        write({"event": "record", "type": model_type, "kind": kind, "class": class_name, **record})
    dist.barrier()
    dist.destroy_process_group()


def check_type(engine: str, model_type: str, kind: str, class_name: str) -> dict:
    """This rank's outcome for one type: its status and what it measured."""
    import torch

    from hft_plugins import HFTError, select

    torch.manual_seed(0)
    try:
        model = census.build(model_type, class_name)
    except Exception as exc:  # noqa: BLE001 - the model's, not ours
        return {"status": "not built", "message": census._line(exc)}
    batch = census.batch_for(kind, model_type)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    out: dict = {"weights": weights_digest(model)}
    try:
        mask = select(model, hft_config())
    except HFTError as exc:
        return {**out, "status": "refused", "message": census._line(exc)}
    try:
        out.update(mask_facts(model, mask, kind))
        out.update(alone(model_type, class_name, mask, batch))
    except Exception as exc:  # noqa: BLE001 - HFT fails without an engine
        return {**out, "status": "failed", "message": f"one process: {_raised(exc)}"}
    mask.apply(model)
    try:
        out.update(engine_facts(engine, model, kind, batch, mask, shapes))
    except Exception as exc:  # noqa: BLE001 - a raw exception: failed, unless not HFT's
        out.update(status="failed", message=_raised(exc))
        del model
        gc.collect()
        why = full_training_fails(engine, model_type, class_name, kind, batch)
        if why:
            out.update(
                status="not built",
                message=f"cannot train it in full either: {why}",
            )
        return out
    return {**out, "status": "checked"}


def engine_facts(engine: str, model, kind: str, batch: dict, mask, shapes: dict) -> dict:
    """Train the masked ``model`` under ``engine``; what moved, the state, the state dict."""
    import torch
    from hft_bench.sharded import engine_state_bytes, full_tensors

    engine_model = None
    try:
        engine_model, optimizer, backward, update = wrap(engine, model, kind)
        before = full_tensors(model)
        # the trainable tensors no step gave a gradient: FSDP2 leaves their .grad None
        # (ZeRO-3 keeps every gradient in its own buffers)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        no_grad = set(trainable) if engine == "fsdp2" else set()
        torch.manual_seed(1)  # the same random draws (a router's jitter) as in one process
        for _ in range(STEPS):
            backward(batch)
            no_grad = {n for n in no_grad if trainable[n].grad is None}
            update()
        after = full_tensors(model)
        return {
            **weight_facts(mask, before, after),
            "engine_no_grad": sorted(no_grad),
            "engine_no_grad_numel": sum(trainable[n].numel() for n in no_grad),
            "state": engine_state_bytes(optimizer),
            "state_dict": state_dict_problems(engine, engine_model, shapes),
        }
    finally:
        release(engine, engine_model)


def full_training_fails(engine: str, model_type: str, class_name: str, kind: str, batch):
    """Why training every tensor of the type under ``engine`` fails too, or None."""
    model = census.build(model_type, class_name)
    engine_model = None
    try:
        engine_model, _, backward, update = wrap(engine, model, kind)
        for _ in range(STEPS):
            backward(batch)
            update()
    except Exception as exc:  # noqa: BLE001 - the engine's or the model's
        return _raised(exc)
    finally:
        release(engine, engine_model)
    return None


def release(engine: str, engine_model) -> None:
    if engine == "zero3" and engine_model is not None:
        engine_model.destroy()  # its hooks and partitions
    gc.collect()


def alone(model_type: str, class_name: str, mask, batch: dict) -> dict:
    """What two AdamW steps do in one process with no engine: the trainable tensors that
    get no gradient from the batch (an audio tower on token ids) and those that do not
    move. The engine must move every other one."""
    import torch

    twin = mask.apply(census.build(model_type, class_name))
    trainable = {n: p for n, p in twin.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=LR, weight_decay=WEIGHT_DECAY)
    no_grad = set(trainable)  # those no step gives a gradient
    torch.manual_seed(1)
    for _ in range(STEPS):
        census.loss_of(twin(**batch)).backward()
        no_grad = {n for n in no_grad if trainable[n].grad is None}
        optimizer.step()
        optimizer.zero_grad()
    return {
        "no_grad": sorted(no_grad),
        "static": sorted(n for n, p in trainable.items() if torch.equal(start[n], p.detach())),
    }


def weights_digest(model) -> str:
    """A digest of every parameter's bytes: the ranks must build the same weights."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def mask_facts(model, mask, kind: str) -> dict:
    """The drawn mask's slices, block fraction and trainable elements, the model's, and
    the padding ZeRO-3 adds to the trainable tensors (each to a multiple of the world size)."""
    params = census.block_params(model, kind)
    total = sum(census._numel(s) for s in params.values())
    done = sum(census.trainable_elements(mask, n, s) for n, s in params.items())
    trained = mask.params()
    return {
        "sliced": sorted(n for n, part in trained.items() if part is not None),
        "block_fraction": round(done / total, 4) if total else None,
        "trainable": mask.trainable_numel,
        "total": sum(p.numel() for p in model.parameters()),
        "padding": sum(-p.numel() % WORLD for n, p in model.named_parameters() if n in trained),
    }


def wrap(engine: str, model, kind: str):
    """(the engine's model, its optimizer, the backward of a batch's loss, the step)."""
    import torch

    if engine == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in own_blocks(model, kind):
            fully_shard(block)
        fully_shard(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=WEIGHT_DECAY)

        def fsdp2_backward(batch: dict) -> None:
            census.loss_of(model(**batch)).backward()

        def fsdp2_update() -> None:
            optimizer.step()
            optimizer.zero_grad()

        return model, optimizer, fsdp2_backward, fsdp2_update
    import deepspeed

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=WEIGHT_DECAY)
    ds_engine, ds_optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ZERO3
    )

    def zero3_backward(batch: dict) -> None:
        ds_engine.backward(census.loss_of(ds_engine(**batch)))

    return ds_engine, ds_optimizer, zero3_backward, ds_engine.step


def own_blocks(model, kind: str) -> list:
    """The blocks that share no parameter with another block (Zamba's shared attention
    block sits in several): each its own FSDP2 group; the root's group takes the rest."""
    blocks = [block for _, stack in census.stacks(model, kind) for block in stack]
    owners = Counter(id(p) for block in blocks for p in block.parameters())
    return [block for block in blocks if all(owners[id(p)] == 1 for p in block.parameters())]


def weight_facts(mask, before: dict, after: dict) -> dict:
    """Frozen tensors that changed and trainable tensors that did not, by name."""
    import torch

    trained = set(mask.params())
    return {
        "frozen_changed": sorted(
            n for n in before if n not in trained and not torch.equal(before[n], after[n])
        ),
        "not_moved": sorted(n for n in trained if torch.equal(before[n], after[n])),
        "frozen": sum(n not in trained for n in before),
    }


def state_dict_problems(engine: str, engine_model, shapes: dict) -> list[str] | None:
    """How the engine's gathered state dict differs from the unwrapped model's names and
    shapes (None on the ZeRO-3 ranks that hold none: DeepSpeed gathers it on rank 0)."""
    if engine == "fsdp2":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        state = get_model_state_dict(engine_model, options=StateDictOptions(full_state_dict=True))
    else:
        state = engine_model._zero3_consolidated_16bit_state_dict()  # what save_16bit_model saves
        if state is None:
            return None
    got = {k: list(v.shape) for k, v in state.items()}
    problems = [f"missing {k}" for k in shapes if k not in got]
    problems += [f"extra {k}" for k in got if k not in shapes]
    problems += [f"{k} {got[k]} not {s}" for k, s in shapes.items() if k in got and got[k] != s]
    return problems


def _raised(exc: BaseException) -> str:
    """The exception in one line, and file:line of the innermost frame in hft_plugins (else
    the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "hft_plugins" in f.filename] or frames[-1:]
    where = f" [{Path(ours[-1].filename).name}:{ours[-1].lineno}]" if ours else ""
    return census._line(exc) + where


def merged(engine: str, ranks: list[dict]) -> dict:
    """One record from every rank's outcome: the status and the invariants checked."""
    first = ranks[0]
    for status in ("not built", "refused", "failed"):
        hit = next((r for r in ranks if r["status"] == status), None)
        if hit is not None:
            return {
                "status": status,
                "message": hit["message"],
                "block_fraction": first.get("block_fraction"),
                "seconds": first["seconds"],
            }
    trainable, total = first["trainable"], first["total"]
    moments = sum(r["state"]["moments"] for r in ranks)
    state_dicts = [r["state_dict"] for r in ranks if r["state_dict"] is not None]
    problems = []
    if len({r["weights"] for r in ranks}) > 1:
        problems.append("the ranks built different weights")
    if first["sliced"]:
        problems.append(
            f"the mask trains slices of {len(first['sliced'])} tensor(s), "
            f"first {first['sliced'][0]!r}"
        )
    for rank, r in enumerate(ranks):
        if r["frozen_changed"]:
            problems.append(
                f"rank {rank}: {len(r['frozen_changed'])} frozen tensor(s) changed, "
                f"first {r['frozen_changed'][0]}"
            )
        lost = sorted(set(r["engine_no_grad"]) - set(first["no_grad"]))
        if lost:
            problems.append(
                f"rank {rank}: {len(lost)} trainable tensor(s) got no gradient that get one in "
                f"one process, first {lost[0]}"
            )
        stuck = sorted(set(r["not_moved"]) - set(first["static"]))
        if stuck:
            problems.append(
                f"rank {rank}: {len(stuck)} trainable tensor(s) did not move that move in one "
                f"process, first {stuck[0]}"
            )
    if engine == "fsdp2":  # torch's AdamW makes no state for a tensor without a gradient
        expected = ADAM_MOMENTS * 4 * (trainable - first["engine_no_grad_numel"])
        why = f"- {first['engine_no_grad_numel']} without a gradient"
    else:  # ZeRO-3 pads every tensor to a multiple of the world size, state and all
        expected = ADAM_MOMENTS * 4 * (trainable + first["padding"])
        why = f"+ {first['padding']} of padding"
    if moments != expected:
        problems.append(
            f"Adam moments hold {moments} bytes over the ranks, not {expected} "
            f"(2 x 4 x ({trainable} trainable elements {why}))"
        )
    if not state_dicts:
        problems.append("no rank gathered a state dict")
    for lines in state_dicts:
        if lines:
            problems.append(f"gathered state dict: {len(lines)} difference(s), first {lines[0]}")
    return {
        "status": "failed" if problems else "supported",
        "message": "; ".join(problems[:4]),
        "block_fraction": first["block_fraction"],
        "sliced": first["sliced"],
        "trainable": trainable,
        "total": total,
        "frozen_tensors": first["frozen"],
        "no_grad": first["no_grad"],
        "static": first["static"],
        "padding": first["padding"],
        "expected_moments": expected,
        "fft_moments_bytes": ADAM_MOMENTS * 4 * total,
        "state_fraction": round(moments / (ADAM_MOMENTS * 4 * total), 4),
        "same_weights": len({r["weights"] for r in ranks}) == 1,
        "ranks": [
            {
                "state_bytes": r["state"],
                "frozen_changed": r["frozen_changed"],
                "not_moved": r["not_moved"],
                "engine_no_grad": r["engine_no_grad"],
                "state_dict_differences": r["state_dict"],
            }
            for r in ranks
        ],
        "seconds": first["seconds"],
    }


# ---- the launcher ---------------------------------------------------------------


def supported_rows(types: list[str] | None) -> list[tuple[str, str, str]]:
    """(type, kind, class) of every type the plain census reports supported."""
    if not PLAIN_JSON.is_file():
        raise SystemExit(f"no plain census at {PLAIN_JSON}: run `make census` first")
    records = json.loads(PLAIN_JSON.read_text())["types"]
    rows = [(r["type"], r["kind"], r["class"]) for r in records if r["status"] == "supported"]
    if types:
        status = {r["type"]: r["status"] for r in records}
        unknown = [t for t in types if t not in status]
        if unknown:
            raise SystemExit(f"not in the plain census: {', '.join(unknown)}")
        unsupported = [f"{t} ({status[t]})" for t in types if status[t] != "supported"]
        if unsupported:
            raise SystemExit(f"not supported by the plain census: {', '.join(unsupported)}")
        rows = [r for r in rows if r[0] in set(types)]
    return rows


def run_engine(engine: str, rows, work: Path, limit: float = TYPE_LIMIT_S) -> list[dict]:
    """Every row's record under ``engine``: one launch, and another on the types left after
    a launch that died (the type it was checking recorded ``failed``)."""
    from tqdm import tqdm

    results: dict[str, dict] = {}
    bar = tqdm(total=len(rows), desc=ENGINES[engine], unit="type", file=sys.stderr)

    def seen(entry: dict) -> None:
        if entry.pop("event") == "start":
            bar.set_postfix_str(entry["type"])
        else:
            results[entry["type"]] = entry
            bar.update()

    launch = 0
    while len(results) < len(rows):
        launch += 1
        pending = [r for r in rows if r[0] not in results]
        log, output = work / f"{engine}-{launch}.jsonl", work / f"{engine}-{launch}.log"
        before = len(results)
        died, current = watch(engine, pending, log, output, limit, seen)
        if died is None and len(results) == len(rows):
            log.unlink(missing_ok=True)
            output.unlink()
            continue
        died = died or "the launch ended early"
        if current is not None:
            lost = [r for r in pending if r[0] == current]
        else:  # between types, or before the first: lost only if the launch did nothing
            lost = [] if len(results) > before else pending
        for model_type, kind, class_name in lost:
            results[model_type] = {
                "type": model_type,
                "kind": kind,
                "class": class_name,
                "status": "failed",
                "message": f"{died} while checking it; {launch_failure(output)} (log: {output})",
            }
            bar.update()
    bar.close()
    return [results[r[0]] for r in rows]


def watch(engine: str, rows, log: Path, output: Path, limit: float, seen):
    """Launch torchrun on ``rows`` and pass each entry rank 0 logs to ``seen``; end the
    launch when nothing is logged for ``limit`` seconds. (Why it died or None, the type
    it was checking.)"""
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
        f"--nproc_per_node={WORLD}",
        *(__file__, "--worker", engine, str(log)),
        *(":".join(row) for row in rows),
    ]
    current, count, since = None, 0, time.monotonic()
    with output.open("w") as sink:
        proc = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            start_new_session=True,  # the launcher and its ranks: one group to end
        )
        try:
            while True:
                done = proc.poll() is not None
                text = log.read_text() if log.exists() else ""
                lines = text.splitlines()[: text.count("\n")]  # whole lines only
                for line in lines[count:]:
                    entry = json.loads(line)
                    current = entry["type"] if entry["event"] == "start" else None
                    since = time.monotonic()
                    seen(entry)
                count = len(lines)
                if done:
                    return (
                        None if proc.returncode == 0 else f"exit code {proc.returncode}"
                    ), current
                if time.monotonic() - since > limit:
                    return f"nothing logged for {limit:.0f} s", current
                time.sleep(0.5)
        finally:
            if proc.poll() is None:  # over the limit, or interrupted
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def launch_failure(path: Path) -> str:
    """What a launch's output says of its end: the last exception a rank raised and the
    first failed rank's exit code (torchrun's "Root Cause")."""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    raised = [
        line
        for line in lines
        if re.match(r"[\w.]+(Error|Exception|Exit): ", line) and "ChildFailedError" not in line
    ]
    cause = (
        lines[lines.index("Root Cause (first observed failure):") :]
        if ("Root Cause (first observed failure):" in lines)
        else []
    )
    code = next((line for line in cause if line.startswith("exitcode")), None)
    found = [*raised[-1:], *([" ".join(code.split())] if code else [])]
    return "; ".join(found)[:300] or "no error in its output"


def summary(results: dict[str, list[dict]]) -> dict:
    return {
        engine: {s: Counter(r["status"] for r in records).get(s, 0) for s in census.STATUSES}
        for engine, records in results.items()
    }


SECTION_TITLE = "## Under FSDP2 and DeepSpeed ZeRO-3: the sharded census"


def markdown(data: dict) -> str:
    """The sharded section of docs/architectures.md (from its mark to the end), from the
    census's JSON ``data``."""
    results = data["engines"]
    lines = [
        census.SHARDED_MARK,
        "",
        SECTION_TITLE,
        "",
        "Every type supported above, under FSDP2 (`fully_shard` on each block and the root, "
        "torch AdamW built after sharding over what requires grad) and under DeepSpeed ZeRO-3 "
        "(`deepspeed.initialize`, a client AdamW over the trainable parameters, every tensor "
        f"partitioned), {WORLD} CPU processes over gloo, with "
        "`HFTConfig(whole_tensors=True)`: the category rule's half drawn and applied, then "
        f"{STEPS} AdamW steps (weight decay {WEIGHT_DECAY}) on the census batch.",
        "",
        "- **supported**: the mask trains whole tensors only; every frozen tensor is "
        "bit-identical after the steps (gathered whole) on every rank; every trainable tensor "
        "moved that moves in one process without an engine (some get no gradient from a token "
        "batch: an audio tower's, a vision projector's); the Adam moments summed over the "
        "ranks hold exactly 2 x 4 bytes a trainable element (the trainable fraction of full "
        "fine-tuning's), under FSDP2 less the tensors it gave no gradient (torch's AdamW makes "
        "no state for them; each gets none in one process either), under ZeRO-3 plus its padding of each tensor to a multiple of the "
        "world size; the engine's gathered state dict has the model's names and shapes.",
        "- **refused**: `select` raised `HFTError`.",
        "- **not built**: the engine cannot train the model in full either (no mask): not HFT's.",
        "- **failed**: anything else.",
        "",
        f"Regenerate with `make census-sharded` or `{data['command']}` (this section and "
        f"`architectures-sharded.json`, one torchrun launch per engine). This run took "
        f"{data['seconds']} s and {data['cpu_seconds']} CPU-seconds (load average "
        f"{data['load']} at the end).",
        "",
        "| engine | " + " | ".join(census.STATUSES) + " |",
        "|---|" + "---|" * len(census.STATUSES),
    ]
    for engine, c in data["summary"].items():
        lines.append(
            f"| {ENGINES[engine]} | " + " | ".join(str(c[s]) for s in census.STATUSES) + " |"
        )
    fractions = {
        r["type"]: r["block_fraction"]
        for records in results.values()
        for r in records
        if r.get("block_fraction") is not None
    }
    off = [f"{t} {f:.3f}" for t, f in fractions.items() if abs(f - census.RATIO) > census.TOLERANCE]
    lines += [
        "",
        f"Block fractions further than {census.TOLERANCE} from {census.RATIO} with whole "
        f"tensors: {', '.join(off) if off else 'none'}.",
    ]
    lines += [
        "",
        "State: the Adam moments per rank (rank 0 / rank 1, bytes) and their sum's share of full "
        "fine-tuning's; the block fraction is the trained share of the blocks' elements.",
        "",
        "| model type | block fraction | "
        + " | ".join(f"{ENGINES[e]} | {ENGINES[e]} state" for e in results)
        + " | reason |",
        "|---|---|" + "---|---|" * len(results) + "---|",
    ]
    by_type = {e: {r["type"]: r for r in records} for e, records in results.items()}
    for model_type in next(iter(by_type.values())):
        records = [by_type[e][model_type] for e in results]
        frac = next((r.get("block_fraction") for r in records if r.get("block_fraction")), None)
        cells = []
        for r in records:
            share = (
                " / ".join(str(rank["state_bytes"]["moments"]) for rank in r["ranks"])
                + f" ({r['state_fraction']:.3f})"
                if r.get("ranks")
                else ""
            )
            cells += [r["status"], share]
        reasons = [
            f"{ENGINES[e]}: {r['message']}"
            for e, r in zip(results, records, strict=True)
            if r.get("message")
        ]
        no_grad = next((r["no_grad"] for r in records if r.get("no_grad")), None)
        if no_grad:
            reasons.append(f"{len(no_grad)} trainable tensor(s) get no gradient, e.g. {no_grad[0]}")
        reasons = "; ".join(reasons).replace("|", "\\|")
        lines.append(
            f"| {model_type} | {'' if frac is None else f'{frac:.3f}'} | "
            + " | ".join(cells)
            + f" | {reasons} |"
        )
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, section: str) -> None:
    """Replace the sharded section of ``path`` (from its mark to the end), or append it."""
    old = path.read_text() if path.exists() else ""
    head = old.split(census.SHARDED_MARK)[0].rstrip("\n")
    path.write_text((head + "\n\n" if head else "") + section)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        engine, log, *rows = argv[1:]
        worker(engine, Path(log), [tuple(row.split(":")) for row in rows])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", nargs="+", help="model types (default: every supported one)")
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    parser.add_argument(
        "--json",
        help=f"write the records here (default with no --types: {SHARDED_JSON.relative_to(REPO)})",
    )
    parser.add_argument(
        "--markdown",
        help=f"write the section into this file (default with no --types: {MARKDOWN.relative_to(REPO)})",
    )
    parser.add_argument("--limit", type=float, default=TYPE_LIMIT_S, help="seconds a type may take")
    args = parser.parse_args(argv)
    rows = supported_rows(args.types)
    json_out = args.json or (None if args.types else SHARDED_JSON)
    markdown_out = args.markdown or (None if args.types else MARKDOWN)
    start = time.monotonic()
    results = {}
    work = Path(tempfile.mkdtemp(prefix="census-sharded-"))  # the logs of launches that died
    for engine in args.engines:
        results[engine] = run_engine(engine, rows, work, args.limit)
    if not any(work.iterdir()):
        work.rmdir()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the launches and their ranks
    command = "python scripts/census_sharded.py" + (
        f" --types {' '.join(args.types)}" if args.types else ""
    )
    counts = summary(results)
    data = {
        "command": command,
        "seconds": round(time.monotonic() - start),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime),
        "load": round(os.getloadavg()[0], 1),
        "summary": counts,
        "engines": results,
    }
    if json_out:
        Path(json_out).write_text(json.dumps(data, indent=1) + "\n")
    if markdown_out:
        write_markdown(Path(markdown_out), markdown(data))
    for engine, records in results.items():
        print(f"{ENGINES[engine]}: {json.dumps(counts[engine])}", file=sys.stderr)
        for r in records:
            if r["status"] in ("failed", "refused"):
                print(f"  {r['type']}: {r['status']}: {r['message']}", file=sys.stderr)
    print(
        f"sharded census: {data['seconds']} s, {data['cpu_seconds']} CPU-seconds", file=sys.stderr
    )
    return 1 if any(r["status"] == "failed" for rs in results.values() for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
