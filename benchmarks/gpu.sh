#!/usr/bin/env bash
# The step benchmark in bf16 on a ~1B Llama-shaped model on one CUDA GPU.
#
#   bash benchmarks/gpu.sh [TABLE]     # TABLE defaults to $OUT/gpu.txt, else ./gpu.txt
#
# Writes the table to TABLE and every measurement to TABLE with .json for .txt.
# About 4-6 minutes on an H100: 2 rounds, each method in its own process each round.
# Uses transformers' LlamaForCausalLM when it imports, else the plain-torch
# benchmarks/hft_bench/torch_llama.py; LoRA and BAdam rows are skipped with a note when
# peft or badam do not import.
#
# Environment:
#   PYTHON=python3            the interpreter with torch (+ CUDA)
#   HFT_BENCH_SMOKE=1         CPU and a tiny config: checks the script in seconds
#   HFT_BENCH_MODEL=torch     force the plain-torch model (auto | transformers | torch)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
table="${1:-${OUT:-.}/gpu.txt}"
json="${table%.txt}.json"
[[ "$json" == "$table" ]] && json="$table.json"
python="${PYTHON:-python3}"
export PYTHONPATH="$root:$root/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [[ "${HFT_BENCH_SMOKE:-0}" == 1 ]]; then
  size=(--device cpu --hidden 64 --layers 2 --heads 4 --kv-heads 2 --intermediate 128
        --vocab 256 --steps 1 --warmup 0 --repeats 2 --compute-shape 2x32 --optimizer-shape 1x8
        --timing process)  # the CUDA default, so the smoke run takes the GPU run's path
else
  # Llama-3.2-1B's block shapes, 16 layers, a small vocabulary: 1.01B parameters, blocks 97%.
  size=(--device cuda --hidden 2048 --layers 16 --heads 32 --kv-heads 8 --intermediate 8192
        --vocab 8192 --steps 10 --warmup 3 --repeats 2)
fi

mkdir -p "$(dirname "$table")"
{
  echo "# benchmarks/gpu.sh on $(hostname) at $(date -u +%FT%TZ)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/# gpu: /'
  fi
  "$python" - <<'EOF'
import importlib, sys, torch
print(f"# python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"available {torch.cuda.is_available()}")
for name in ("pluggy", "transformers", "peft", "badam"):
    try:
        module = importlib.import_module(name)
        print(f"# {name} {getattr(module, '__version__', '?')}")
    except Exception as exc:  # report and go on: the benchmark skips what is missing
        print(f"# {name}: not importable ({type(exc).__name__}: {str(exc)[:120]})")
EOF
} >"$table"

"$python" -m hft_bench.step "${size[@]}" --dtype bf16 \
  --model-impl "${HFT_BENCH_MODEL:-auto}" --json "$json" | tee -a "$table"
echo "table: $table"
