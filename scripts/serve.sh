#!/usr/bin/env bash
# Starts the service on its embedded default, TransXNet-T, at http://localhost:8000.
# Creates the virtual environment and exports models/transxnet_t.onnx first when it is missing:
# the official ImageNet weights when they can be downloaded, else (offline) a seeded random
# initialisation, said loudly here and reported by /readyz as "random-init seed 0".
# Settings: TRANSXNET_* variables (see README); TRANSXNET_CHECKPOINT=path|URL|pretrained picks the weights.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh "export"

model=${TRANSXNET_MODEL_PATH:-models/transxnet_t.onnx}
if [ ! -f "$model" ]; then
  checkpoint=${TRANSXNET_CHECKPOINT:-pretrained}
  status=0
  "$py" -m export --variant t --checkpoint "$checkpoint" --output "$model" || status=$?
  if [ "$status" -eq 4 ] && [ -z "${TRANSXNET_CHECKPOINT:-}" ]; then
    cat >&2 <<'MSG'
************************************************************************************************
WARNING: the official TransXNet-T weights could not be downloaded (offline?).
Exporting a seeded RANDOM initialisation instead: the service runs, but its classes are
meaningless, and /readyz and every response report weights "random-init seed 0".
For real weights: TRANSXNET_CHECKPOINT=/path/to/transx-t.pth.tar bash scripts/serve.sh
(after `rm models/transxnet_t.onnx`).
************************************************************************************************
MSG
    "$py" -m export --variant t --output "$model"
  elif [ "$status" -ne 0 ]; then
    exit "$status"
  fi
fi
export TRANSXNET_MODEL_PATH="$model"
exec "$py" -m app
