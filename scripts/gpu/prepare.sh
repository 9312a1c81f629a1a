#!/usr/bin/env bash
# Prepares, on the CPU machine, everything the GPU measurement's device calls carry, checks that each
# call stays under the device tool's 64 MiB (working tree included), and prints the calls in order.
#
#   bash scripts/gpu/prepare.sh          (from the repository root; ~3 min, no device time)
#
# .gpu/part0..4 + parts.sha256: onnxruntime-gpu (CUDA 13, cp312) unzipped, xz-compressed, split, by
#   ../shared/gpu/stage-onnxruntime-gpu (which also puts /.gpu/ into .git/info/exclude);
# .gpu/whl: the service's wheels the device lacks (scripts/gpu/wheels.txt).
# Re-running keeps valid parts and only re-downloads what is missing.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
stage=../shared/gpu/stage-onnxruntime-gpu
limit_mib=64
margin_mib=3  # the tree can grow a little between this check and the device session

if [[ -f .gpu/parts.sha256 ]] && (cd .gpu && sha256sum --quiet -c parts.sha256 >/dev/null 2>&1); then
  echo "onnxruntime-gpu parts in .gpu are complete (checksums match)"
else
  [[ -x $stage || -f $stage ]] || { echo "missing $stage: the shared staging script travels with ../shared" >&2; exit 1; }
  bash "$stage" .gpu 45  # removes and rewrites .gpu (so the wheels come after it)
fi

py=python3
[[ -x .venv/bin/python ]] && py=.venv/bin/python
"$py" scripts/gpu/check_wheels.py  # a requirement neither carried nor on the GPU machine stops here
mkdir -p .gpu/whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .gpu/whl -r scripts/gpu/wheels.txt \
  2> >(grep -v "^WARNING: Location" >&2)
# One version per package (two stop the install on the device).
dupes=$(ls .gpu/whl/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
[[ -z $dupes ]] || { echo "several versions of: $dupes (delete .gpu/whl and re-run)" >&2; exit 1; }

mib() { du -cb "$@" 2>/dev/null | tail -1 | awk '{printf "%.1f", $1 / 1048576}'; }
tree_mib=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {printf "%.1f", s / 1048576}')
declare -a calls=(
  ".gpu/part4 .gpu/parts.sha256 .gpu/whl|bash scripts/gpu/stage.sh 4 --start|120"
  ".gpu/part0|bash scripts/gpu/stage.sh 0|60"
  ".gpu/part1|bash scripts/gpu/stage.sh 1|60"
  ".gpu/part2|bash scripts/gpu/stage.sh 2|60"
  ".gpu/part3|GPU_TOTAL_S=480 bash scripts/gpu/measure.sh 3|560"
)
echo
echo "working tree that travels with every call: ${tree_mib} MiB"
status=0
n=1
for call in "${calls[@]}"; do
  IFS='|' read -r carry command timeout <<<"$call"
  # shellcheck disable=SC2086
  carried=$(mib $carry)
  total=$(awk -v a="$tree_mib" -v b="$carried" 'BEGIN {printf "%.1f", a + b}')
  verdict=ok
  if awk -v t="$total" -v l="$limit_mib" -v m="$margin_mib" 'BEGIN {exit !(t > l - m)}'; then
    verdict="TOO LARGE (limit ${limit_mib} MiB, margin ${margin_mib})"
    status=1
  fi
  json_carry=$(printf '"%s", ' $carry | sed 's/, $//')
  echo "$n. run(carry=[${json_carry}], command=\"${command}\", timeout_s=${timeout})   # ${total} MiB: ${verdict}"
  n=$((n + 1))
done
echo
echo "Send them back to back: the machine is handed back after 30 s idle, and with it /tmp/ortgpu."
echo "Call 1 also starts the exports and the torch.compile warm-up in the background (scripts/gpu/prework.sh)."
echo "Call 5 measures (GPU_TOTAL_S seconds, ~8 min; lower it if status shows less device time) and returns \$OUT: measure.log, results.json, gpu_report.md, prework.log,"
echo "eager_trace.json.gz. Then: python -m benchmarks.gpu_report --results <files_at>/results.json --out benchmarks/results --stem gpu_h200"
exit $status
