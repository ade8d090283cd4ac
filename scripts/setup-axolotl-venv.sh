#!/usr/bin/env bash
# Create .venv-axolotl: axolotl 0.19.0 in its own virtualenv (it pins other transformers/trl/peft
# versions than the main env), with this repository installed into it without dependencies.
#   HFT_AXOLOTL_VENV  where to put it (default: .venv-axolotl at the repository root)
#   HFT_AXOLOTL_LOCK  the constraints file of its tested set (default: locks/axolotl.txt;
#                     empty: the newest releases)
#   PYTHON            the interpreter to build it with (default: python3.11)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
venv="$(realpath -m "${HFT_AXOLOTL_VENV:-.venv-axolotl}")"
lock="${HFT_AXOLOTL_LOCK-locks/axolotl.txt}"
python="${PYTHON:-python3.11}"
locked=(-c constraints.txt)
if [ -n "$lock" ]; then
  locked+=(-c "$lock")
fi

# Run from / so the checkout on the working directory cannot stand in for an installed package.
imports() { (cd / && "$venv/bin/python" -c "$1" >/dev/null 2>&1); }
ours="import hft_plugins, pathlib, sys; sys.exit(pathlib.Path(hft_plugins.__file__).resolve().parents[1] != pathlib.Path('$repo'))"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# hft-plugins goes in with --no-deps (axolotl pins the frameworks), so its own core
# dependencies that axolotl does not bring are named here; deepspeed for the ZeRO-2/3 runs
# (tests/integrations/test_axolotl_sharded.py; its ops build with g++ when first used)
"$venv/bin/pip" install --quiet "${locked[@]}" torch==2.13.0 axolotl==0.19.0 pluggy safetensors \
  deepspeed==0.19.8
if ! imports "$ours"; then
  "$venv/bin/pip" install --quiet --no-deps -e "$repo"
fi
imports "import axolotl, hft_plugins.integrations.axolotl; $ours"
echo "axolotl venv ready: $venv"
