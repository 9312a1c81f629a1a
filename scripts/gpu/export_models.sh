#!/usr/bin/env bash
# Exports TransXNet-T fp32 and fp16 with this repository's exporter (seeded reference weights, whose
# official outputs are stored, so the export's own verification includes them), both at once.
#   bash scripts/gpu/export_models.sh WORK_DIR [PYTHON]     (run from the repository root)
# Writes WORK_DIR/t.onnx, t_fp16.onnx, export_fp32.log, export_fp16.log and exports.done ("fp32=RC fp16=RC").
set -uo pipefail
work=${1:?usage: export_models.sh WORK_DIR [PYTHON]}
py=${2:-python3}
mkdir -p "$work"
"$py" -c "import sys; sys.path.insert(0, '.'); from benchmarks.gpu_common import reference_checkpoint as r; from pathlib import Path; print(r(Path('$work')))" \
  || { echo "fp32=90 fp16=90" >"$work/exports.done"; exit 1; }
ckpt=$work/transx-t-reference.pth.tar
expect=tests/fixtures/reference/expected_t.npz
export_one() {  # name, output, extra args
  local name=$1 out=$2
  shift 2
  if [[ -s $out ]]; then echo "$name: $out exists, kept"; return 0; fi
  "$py" -m export --variant t --checkpoint "$ckpt" --output "$out" --expect "$expect" "$@" >"$work/export_$name.log" 2>&1
}
started=$(date +%s)
export_one fp32 "$work/t.onnx" & fp32_pid=$!
export_one fp16 "$work/t_fp16.onnx" --fp16 & fp16_pid=$!
wait $fp32_pid; fp32_rc=$?
wait $fp16_pid; fp16_rc=$?
echo "fp32=$fp32_rc fp16=$fp16_rc seconds=$(( $(date +%s) - started ))" | tee "$work/exports.done"
for name in fp32 fp16; do tail -3 "$work/export_$name.log" 2>/dev/null; done
[[ $fp32_rc == 0 && $fp16_rc == 0 ]]
