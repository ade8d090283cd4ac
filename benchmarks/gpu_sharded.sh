#!/usr/bin/env bash
# HFT vs full fine-tuning under DeepSpeed ZeRO-3 and FSDP2 (HF Trainer), ~1B Llama- and
# Mixtral-shaped models (HFT with whole_tensors: the experts' fused gate|up whole).
#
#   bash benchmarks/gpu_sharded.sh [TABLE]   # TABLE defaults to $OUT/gpu_sharded.txt, else ./
#
# For each model (llama, mixtral), engine (zero3, fsdp2) and mode (fft, hft): one torchrun launch of
# benchmarks/sharded_run.py on WORLD processes, 5 steps in bf16, the shipped configs
# (integrations/deepspeed/zero3.json; FSDP2 as integrations/accelerate/fsdp2.yaml sets it).
# Each run appends a JSON line to TABLE with .jsonl for .txt; the table compares per rank:
# optimizer-state bytes (fp32 master + Adam moments), peak memory, and whether every
# frozen tensor is bit-identical after training (gathered). A few minutes on one H100/H200.
#
# Environment:
#   PYTHON=python3       the interpreter with torch (+ CUDA), transformers, deepspeed
#   WORLD=1              processes (GPUs)
#   ENGINES="zero3 fsdp2"
#   MODELS="llama mixtral"
#   HFT_BENCH_SMOKE=1    CPU (gloo) and the tiny model: checks the script in about a minute
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
table="${1:-${OUT:-.}/gpu_sharded.txt}"
json="${table%.txt}.jsonl"
[[ "$json" == "$table" ]] && json="$table.jsonl"
python="${PYTHON:-python3}"
world="${WORLD:-1}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
smoke=()
if [[ "${HFT_BENCH_SMOKE:-0}" == 1 ]]; then
  smoke=(--smoke --steps 2)
  export OMP_NUM_THREADS=1
fi

mkdir -p "$(dirname "$table")"
rm -f "$json"
{
  echo "# benchmarks/gpu_sharded.sh on $(hostname) at $(date -u +%FT%TZ), world size $world"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/# gpu: /'
  fi
  "$python" -c "import sys, torch, transformers, accelerate, deepspeed; print(f'# python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}, deepspeed {deepspeed.__version__}')" 2>/dev/null
} >"$table"

port=$((29500 + RANDOM % 1000))
for model in ${MODELS:-llama mixtral}; do
  for engine in ${ENGINES:-zero3 fsdp2}; do
    for mode in fft hft; do
      port=$((port + 1))
      log="${table%.txt}.$model.$engine.$mode.log"
      "$python" -m torch.distributed.run --nproc_per_node "$world" --master_addr 127.0.0.1 \
        --master_port "$port" "$root/benchmarks/sharded_run.py" \
        --model "$model" --engine "$engine" --mode "$mode" --json "$json" "${smoke[@]}" \
        >"$log" 2>&1 \
        || { echo "$model $engine $mode failed: $log" >&2; tail -20 "$log" >&2; exit 1; }
    done
  done
done

"$python" - "$json" <<'PY' | tee -a "$table"
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
fft = {(r["model"], r["engine"]): r for r in runs if r["mode"] == "fft"}
print(f"{'model':<8} {'engine':<18} {'mode':<4} {'world':>5} {'trainable':>14} {'state B/rank':>14} "
      f"{'vs FFT':>7} {'peak B/rank':>14} {'vs FFT':>7} frozen-identical")
for r in runs:
    base = fft.get((r["model"], r["engine"]))
    state = max(sum(x["state_bytes"].values()) for x in r["ranks"])
    peak = max(x["peak_bytes"] for x in r["ranks"])
    base_state = max(sum(x["state_bytes"].values()) for x in base["ranks"]) if base else 0
    base_peak = max(x["peak_bytes"] for x in base["ranks"]) if base else 0
    frac = r["trainable"] / r["params"]
    print(f"{r['model']:<8} {r['engine']:<18} {r['mode']:<4} {r['world']:>5} {frac:>14.4f} {state:>14,} "
          f"{state / base_state if base_state else float('nan'):>7.3f} {peak:>14,} "
          f"{peak / base_peak if base_peak else float('nan'):>7.3f} "
          f"{all(x['frozen_identical'] for x in r['ranks'])}")
print(f"# peak: {runs[0]['ranks'][0]['peak_kind']}; state = fp32 master + Adam moments per rank")
PY
echo "table: $table"
